"""Helpers of the notebook job tests: example folders, notebooks built in a test, the CLI as a
subprocess, nbclient runs on a real kernel, and outputs normalized for comparison."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def copy_examples(tmp: Path) -> Path:
    dest = tmp / "notebooks"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns("*.executed.ipynb", "__pycache__"))
    return dest


def write_notebook(path: Path, cells: list[tuple[str, str] | tuple[str, str, list[str]]]) -> Path:
    """A notebook of ``(cell_type, source[, tags])`` cells, as nbformat 4.5 JSON."""
    out = []
    for i, spec in enumerate(cells):
        kind, source = spec[0], spec[1]
        cell: dict[str, Any] = {"cell_type": kind, "id": f"c{i}", "metadata": {}, "source": source}
        if len(spec) > 2:
            cell["metadata"]["tags"] = spec[2]
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    nb = {
        "cells": out,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


def cli_env(tmp: Path, server: Any | None) -> dict[str, str]:
    """The CLI's environment: private cache, settings and state dirs; ``server`` (or none: the
    embedded server of the private state dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DS_JOBS_", "YC_"))}
    env.update(
        DS_JOBS_CACHE_DIR=str(tmp / "cache"),
        DS_JOBS_CONFIG=str(tmp / "settings.json"),
        DS_JOBS_STATE_DIR=str(tmp / "embedded-state"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
    )
    if server is not None:
        env.update(
            DS_JOBS_ENDPOINT=server.info.endpoint, DS_JOBS_TOKEN=server.info.token, DS_JOBS_PROJECT="proj"
        )
    return env


def run_cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_jobs", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # the command's own traceback (a job's tracebacks come prefixed with their cell)
    assert not any(line.startswith("Traceback (most recent call last)") for line in p.stderr.splitlines()), (
        p.stderr
    )
    return p


def nbclient_run(nb_json: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Execute ``nb_json`` (ds-skip cells skipped, as nbclient's own tag) on a real kernel in ``cwd``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.from_dict(json.loads(json.dumps(nb_json)))
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "ds-skip" in tags:
            cell.metadata["tags"] = [*tags, "skip-execution"]
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    with contextlib.suppress(CellExecutionError):
        client.execute()
    return json.loads(json.dumps(nb))


def _text(value: Any) -> Any:
    return "".join(value) if isinstance(value, list) else value


def normalized(nb: dict[str, Any]) -> list[dict[str, Any]]:
    """The code cells' execution counts and outputs, comparable across runs: no timings or ids; the
    streams of a cell joined per name (a kernel splits them by time), "\r\n" read as "\n" (a
    kernel's ``!cmd`` runs in a pseudo-terminal, the job's through pipes); tracebacks without
    colors, the last line only (file names differ); error banners left out."""
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        streams: dict[str, str] = {}
        others: list[Any] = []
        for out in cell.get("outputs", []):
            kind = out["output_type"]
            if kind == "stream":
                streams[out["name"]] = streams.get(out["name"], "") + _text(out["text"]).replace("\r\n", "\n")
            elif kind == "error":
                last = ANSI.sub("", out["traceback"][-1]) if out["traceback"] else ""
                others.append({"error": [out["ename"], out["evalue"], last]})
            else:
                data = {k: _text(v) for k, v in out.get("data", {}).items()}
                others.append(
                    {kind: data, "metadata": out.get("metadata", {}), "count": out.get("execution_count")}
                )
        cells.append({"count": cell.get("execution_count"), "streams": streams, "outputs": others})
    return cells
