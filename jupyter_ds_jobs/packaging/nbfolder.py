"""A notebook job as an official DataSphere job folder (``jupyter ds-jobs convert``), and what comes
back from a notebook job, put in place.

:func:`write_job_folder` writes everything the job needs into one directory that both the
official ``datasphere`` CLI and ``jupyter ds-jobs execute -c config.yaml`` run unchanged::

    config.yaml          name, desc, cmd, inputs, outputs, env.python (manual: requirements-file,
                         local-paths), cloud-instance-type(s)
    NOTEBOOK.ipynb       the notebook as sent (parameters injected)
    _ds_nbrunner.py      the runner (stdlib + IPython)
    requirements.txt     pinned: what the cells import, and ipython
    <local modules>      the notebook's own modules and packages (env.python.local-paths)
    <files read>         the data files the cells read, at the same relative paths

:func:`place_results` puts a finished job's downloaded outputs in place: the executed notebook
at its output path, the files the notebook wrote beside the original notebook.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging import nbrunner

if TYPE_CHECKING:
    from jupyter_ds_jobs.packaging.notebook import NotebookJob

__all__ = ["COLLECT_DIR", "NotebookResult", "config_text", "job_config", "place_results", "write_job_folder"]

#: The job's output directory of the files the notebook wrote (``run-notebook`` collects them).
COLLECT_DIR = "_ds_files"

_REQUIREMENTS_FILE = "requirements.txt"
_PIP_KEYS = (
    ("index_url", "index-url"),
    ("extra_index_urls", "extra-index-urls"),
    ("trusted_hosts", "trusted-hosts"),
)


def _module_path(job: NotebookJob, local: Path) -> str:
    try:
        return local.relative_to(job.base_dir).as_posix()
    except ValueError:
        return local.name


def job_config(job: NotebookJob) -> dict[str, Any]:
    """The job's ``config.yaml`` as a mapping (strings, lists and mappings only)."""
    p = job.params
    py = p.env.python_env
    python: dict[str, Any] = {"type": "manual", "version": py.python_version}
    if py.requirements:
        python["requirements-file"] = _REQUIREMENTS_FILE
    if job.local_modules:
        python["local-paths"] = [_module_path(job, m.local_path) for m in job.local_modules]
    pip: dict[str, Any] = {}
    for attr, key in _PIP_KEYS:
        value = getattr(py.pip_options, attr)
        if value:
            pip[key] = value if isinstance(value, str) else list(value)
    if py.pip_options.no_deps:
        pip["no-deps"] = "true"
    if pip:
        python["pip"] = pip
    env: dict[str, Any] = {}
    if p.env.vars:
        env["vars"] = dict(sorted(p.env.vars.items()))
    env["python"] = python
    config: dict[str, Any] = {"name": job.name, "desc": job.desc, "cmd": p.cmd}
    config["inputs"] = [f.desc_path for f in job.inputs]
    config["outputs"] = [f.path for f in p.output_files]
    config["env"] = env
    types = [t.name for t in p.cloud_instance_types]
    if len(types) == 1:
        config["cloud-instance-type"] = types[0]
    elif types:
        config["cloud-instance-types"] = types
    return config


def config_text(job: NotebookJob) -> str:
    """``config.yaml`` text, with a comment saying how to run it."""
    head = (
        f"# The notebook {job.path.name} as a DataSphere job (jupyter ds-jobs convert). Run it from this folder:\n"
        "#   jupyter ds-jobs execute -c config.yaml\n"
        "#   datasphere project job execute -p <project id> -c config.yaml\n"
    )
    body = yaml.safe_dump(
        job.config, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000
    )
    return head + body


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(
            src,
            dest,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"),
        )
    else:
        shutil.copy2(src, dest)


def write_job_folder(job: NotebookJob, dest: Path) -> list[Path]:
    """Write the job folder (see the module docstring) into ``dest``; returns the paths written.

    Files already there are replaced; ``dest`` must not be the notebook's own directory (the notebook
    as sent, parameters injected, would replace the original).
    """
    dest = Path(dest).expanduser().absolute()
    if dest.resolve() == job.base_dir.resolve():
        raise InvalidArgument(
            "the job folder must not be the notebook's own directory (its notebook would be replaced)",
            field="-o",
        )
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for f in job.inputs:
        target = dest / f.desc_path
        _copy(f.local_path, target)
        written.append(target)
    for m in job.local_modules:
        target = dest / _module_path(job, m.local_path)
        _copy(m.local_path, target)
        written.append(target)
    reqs = list(job.params.env.python_env.requirements)
    if reqs:
        (dest / _REQUIREMENTS_FILE).write_text("".join(r + "\n" for r in reqs), encoding="utf-8")
        written.append(dest / _REQUIREMENTS_FILE)
    (dest / "config.yaml").write_text(job.config_text, encoding="utf-8")
    written.append(dest / "config.yaml")
    return written


# --------------------------------------------------------------------------- results


@dataclass
class NotebookResult:
    """A finished notebook job's outputs, in place."""

    output: Path | None = None
    """The executed notebook (None when the job ended before writing it)."""
    files: list[Path] = field(default_factory=list)
    """Files the notebook wrote, now beside the original notebook."""
    files_left: list[str] = field(default_factory=list)
    """Files the notebook wrote that did not come back (over the size limit)."""
    status: str = ""
    """``completed`` or ``failed`` as the runner recorded it ("" without an executed notebook)."""
    error: dict[str, Any] | None = None
    """``{"cell": "cell 7", "ename": ..., "evalue": ...}`` when a cell failed."""


def _move(src: Path, dest: Path) -> list[Path]:
    """Move the file or the files of the directory ``src`` to ``dest`` (replacing files there)."""
    if src.is_dir():
        moved: list[Path] = []
        for child in sorted(src.iterdir()):
            moved += _move(child, dest / child.name)
        return moved
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError:
        shutil.move(str(src), str(dest))
    return [dest]


def place_results(downloaded: Path, executed_name: str, base_dir: Path, output: Path) -> NotebookResult:
    """Move a notebook job's outputs from ``downloaded`` into place: ``executed_name`` to ``output``,
    the collected files (``_ds_files/``) and the other output files under ``base_dir``."""
    result = NotebookResult()
    executed = downloaded / executed_name
    if executed.is_file():
        try:
            meta = nbrunner.read_notebook(str(executed)).get("metadata", {}).get("ds_jobs", {})
        except (OSError, ValueError):
            meta = {}
        result.status = str(meta.get("status", ""))
        error = meta.get("error")
        result.error = error if isinstance(error, dict) else None
        left = meta.get("files_left")
        result.files_left = [str(x) for x in left] if isinstance(left, list) else []
        result.output = _move(executed, output)[0]
    for child in sorted(downloaded.iterdir()):
        if child.name == COLLECT_DIR:
            result.files += _move(child, base_dir)
        elif child.name != executed_name:
            result.files += _move(child, base_dir / child.name)
    return result
