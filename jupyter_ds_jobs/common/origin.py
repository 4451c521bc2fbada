"""Where a job came from, as one readable line at the end of its ``desc``.

The wire contract has no field for a job's origin, so the faces that make a job from a notebook
append one line to the description the user gave (or make it the whole description)::

    from notebook PATH                    a whole notebook run as a job
    from notebook PATH, cell [N]          a %%ds_job cell: N is its execution count (In [N])
    from notebook PATH, cell [N], id ID   ... and the frontend's cell id (JupyterLab, VS Code)
    from cell [N]                         a %%ds_job cell where no notebook is known

``PATH`` is the notebook as the kernel knows it (absolute under JupyterLab, Notebook 7 and VS
Code); ``ID`` is the cell's id as the frontend sent it (nbformat's ``cell.id`` under JupyterLab).
:func:`parse_origin` reads the last line of a ``desc`` with :data:`ORIGIN_RE` (a client in
another language can use the same expression); a ``desc`` without such a line has no origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ORIGIN_RE", "Origin", "parse_origin", "with_origin"]

#: One origin line (see the module docstring); ``notebook``, ``count`` and ``cell_id`` groups.
ORIGIN_RE = re.compile(
    r"^from (?:notebook (?P<notebook>.+?)(?:, (?=cell \[)|(?=, id )|$))?"
    r"(?:cell \[(?P<count>\d+)\])?"
    r"(?:, id (?P<cell_id>(?:(?!, ).)+))?$"
)


@dataclass(frozen=True)
class Origin:
    """The notebook (path), cell (execution count) and cell id a job came from; any may be unknown."""

    notebook: str = ""
    count: int | None = None
    cell_id: str = ""

    def line(self) -> str:
        """The origin line, or ``""`` when neither the notebook nor the cell is known."""
        notebook = self.notebook if "\n" not in self.notebook and "\r" not in self.notebook else ""
        parts = [f"notebook {notebook}"] if notebook else []
        if self.count is not None and self.count >= 0:
            parts.append(f"cell [{self.count}]")
        if not parts:
            return ""
        cell_id = " ".join(self.cell_id.split()).replace(", ", ",")  # no ", " in an id (URIs have none)
        if cell_id:
            parts.append(f"id {cell_id}")
        return "from " + ", ".join(parts)


def with_origin(desc: str, origin: Origin) -> str:
    """``desc`` with ``origin``'s line as its last line (``desc`` unchanged when the origin is unknown)."""
    line = origin.line()
    if not line:
        return desc
    desc = desc.rstrip("\n")
    return f"{desc}\n{line}" if desc else line


def parse_origin(desc: str) -> Origin | None:
    """The origin in the last line of a job's ``desc``, or None."""
    last = desc.rstrip("\n").rsplit("\n", 1)[-1]
    m = ORIGIN_RE.match(last)
    if m is None or not (m["notebook"] or m["count"]):
        return None
    return Origin(
        notebook=m["notebook"] or "",
        count=int(m["count"]) if m["count"] else None,
        cell_id=m["cell_id"] or "",
    )
