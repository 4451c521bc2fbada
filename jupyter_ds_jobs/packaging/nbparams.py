"""Notebook parameters, papermill-style: values given on the command line (``-p NAME VALUE``), in a
YAML file (``-f``) or from Python, checked, and injected as code into a new cell.

* :func:`parse_value` reads a ``-p`` value: a Python literal where it is one (``3``, ``0.5``,
  ``True``, ``None``, ``'text'``, ``[1, 2]``, ``{'a': 1}``), else the YAML words ``true`` /
  ``false`` / ``null`` / ``~`` and YAML flow collections (``[a, b]``, ``{k: v}``), else the text
  itself as a string (``data.csv``, ``2024-01-01``, ``NO``, ``hello world``).
* A value must be ``None``, a bool, an int, a float, a str, or a list / tuple / dict of those
  (dict keys: str, int, float, bool or None); anything else is refused naming the parameter.
* :func:`inject_parameters` removes a previous ``injected-parameters`` cell, and puts a new one,
  made of ``NAME = <literal>`` lines built from safe reprs (never pasted text), right after the
  cell tagged ``parameters`` (whose defaults stay), or at the top when there is none. Its return
  value lists what deserves a warning.

The notebook is the plain JSON dict of nbformat 4 (see :func:`~.nbrunner.read_notebook`).
"""

from __future__ import annotations

import ast
import keyword
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging.nbrunner import ERROR_TAG, INJECTED_TAG, PARAMETERS_TAG, cell_tags

__all__ = [
    "check_parameters",
    "inject_parameters",
    "load_parameters_file",
    "parameters_source",
    "parse_value",
    "render_literal",
]

_YAML_WORDS = {"true": True, "false": False, "null": None, "~": None}
_KEY_TYPES = (str, int, float, bool, type(None))


def _check_value(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as injected (tuples stay tuples), or ``InvalidArgument`` naming ``where``."""
    if depth > 50:
        raise InvalidArgument("nested too deeply", field=where)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [_check_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if not isinstance(k, _KEY_TYPES):
                raise InvalidArgument(f"a key of type {type(k).__name__} is not supported", field=where)
            out[k] = _check_value(v, f"{where}[{k!r}]", depth + 1)
        return out
    raise InvalidArgument(
        f"a value of type {type(value).__name__} cannot be a parameter "
        "(use None, bool, int, float, str, or lists and dicts of them; quote it to pass text)",
        field=where,
    )


def check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Names that are Python identifiers (not keywords) and values that render as literals."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise InvalidArgument(f"{name!r} is not a valid Python variable name", field="parameter")
        out[name] = _check_value(value, f"parameter {name!r}")
    return out


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal, a YAML word or flow collection, else the string itself."""
    stripped = text.strip()
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    else:
        try:
            return _check_value(value, "value")
        except InvalidArgument:
            return text
    if stripped.lower() in _YAML_WORDS:
        return _YAML_WORDS[stripped.lower()]
    if stripped[:1] in ("[", "{") and stripped[-1:] in ("]", "}"):
        try:
            return _check_value(yaml.safe_load(stripped), "value")
        except (yaml.YAMLError, InvalidArgument):
            pass
    return text


def load_parameters_file(path: Path) -> dict[str, Any]:
    """The mapping of a YAML parameters file (``-f``), checked."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{path}: not valid YAML: {e}", field="-f") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a mapping of parameter names to values", field="-f")
    try:
        return check_parameters(data)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e}", field="-f") from None


def render_literal(value: Any) -> str:
    """Python source that evaluates to ``value`` (checked by :func:`check_parameters`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "float('nan')" if math.isnan(value) else ("float('inf')" if value > 0 else "-float('inf')")
    if isinstance(value, list):
        return "[" + ", ".join(render_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(render_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render_literal(k)}: {render_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)  # None, bool, int, finite float, str: repr is a literal


def parameters_source(params: Mapping[str, Any]) -> str:
    """The injected cell's code: ``# Parameters`` then one ``NAME = <literal>`` line each."""
    return "# Parameters\n" + "".join(f"{n} = {render_literal(v)}\n" for n, v in params.items())


def _assigned_names(source: str) -> set[str] | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def inject_parameters(nb: dict[str, Any], params: Mapping[str, Any]) -> list[str]:
    """Put ``params`` into ``nb`` as an ``injected-parameters`` cell; returns warnings.

    A previous injected cell goes (re-running an executed notebook), so does a previous error
    banner. With no parameters nothing is injected.
    """
    cells = [c for c in nb["cells"] if not {INJECTED_TAG, ERROR_TAG} & set(cell_tags(c))]
    nb["cells"] = cells
    if not params:
        return []
    values = check_parameters(params)
    warnings: list[str] = []
    at = next((i for i, c in enumerate(cells) if PARAMETERS_TAG in cell_tags(c)), None)
    if at is None:
        warnings.append(
            f"the notebook has no cell tagged {PARAMETERS_TAG!r}: the parameters go into a new first cell"
        )
    else:
        source = cells[at].get("source", "")
        known = _assigned_names("".join(source) if isinstance(source, list) else str(source))
        unknown = [n for n in values if known is not None and n not in known]
        if unknown:
            warnings.append(
                f"parameter(s) {', '.join(map(repr, unknown))} not assigned in the parameters cell; injected anyway"
            )
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": [INJECTED_TAG]},
        "outputs": [],
        "source": parameters_source(values),
    }
    if (nb.get("nbformat_minor") or 0) >= 5:
        cell["id"] = uuid.uuid4().hex[:8]
    cells.insert(0 if at is None else at + 1, cell)
    return warnings
