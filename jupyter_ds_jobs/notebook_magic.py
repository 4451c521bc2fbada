"""The body of the ``%ds_run_notebook`` line magic (declared in :mod:`jupyter_ds_jobs.magics`):
its options, resolved as ``%%ds_job``'s are (local paths beside this notebook, the settings'
defaults), to :func:`jupyter_ds_jobs.run_notebook`, then the same view as a cell's job
(:func:`~jupyter_ds_jobs.handle.watch_notebook_run`)."""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_ds_jobs.common.errors import JobFailed
from jupyter_ds_jobs.handle import watch_notebook_run
from jupyter_ds_jobs.notebooks import NotebookRun, run_notebook
from jupyter_ds_jobs.packaging import celljob
from jupyter_ds_jobs.packaging.nbparams import check_parameters, load_parameters_file, parse_value
from jupyter_ds_jobs.widgets import JobView, make_view

if TYPE_CHECKING:
    from jupyter_ds_jobs.magics import DsJobsMagics

__all__ = ["run_notebook_magic"]


def run_notebook_magic(magics: DsJobsMagics, args: argparse.Namespace) -> NotebookRun | None:
    """Run the notebook ``args`` name; the run (``--async`` without ``-o``) or None."""
    assert magics.shell is not None
    here = magics._notebook_dir()
    notes: list[str] = []
    client = magics.get_client(args.endpoint, args.project, note=notes.append)
    d = magics._settings().defaults
    requirements: str = args.requirements or d.requirements or "auto"
    if requirements not in ("auto", "none"):
        requirements = str(here / Path(requirements).expanduser())
    run = run_notebook(
        here / Path(args.path).expanduser(),
        _notebook_parameters(args.parameters_file, args.parameter, here),
        output=here / Path(args.output).expanduser() if args.output else None,
        wait=False,
        raise_on_error=False,
        name=args.name,
        desc=args.desc,
        instance_type=args.instance_type or ([d.instance_type] if d.instance_type else []),
        requirements=requirements,
        pip=args.pip,
        python=args.python or d.python,
        files=[here / Path(f).expanduser() for f in args.file],
        output_files=args.output_file,
        written_files=not args.no_output_files,
        env=celljob.parse_env(args.env),
        client=client,
        quiet=True,
    )
    view = make_view(
        args.name or run.path.stem, quiet=args.quiet, on_cancel=lambda: run.cancel(graceful=True)
    )
    for text in notes:
        view.note(text)
    view.started(run.job_id)
    if args.handle:
        magics.shell.user_ns[args.handle] = run
    if args.async_:
        threading.Thread(
            target=_watch_quietly, args=(run, view), name=f"ds-nb-{run.job_id}", daemon=True
        ).start()
        return run if args.handle is None else None
    watch_notebook_run(run, view)
    if not run.ok and run.status != "CANCELLED":
        raise JobFailed(run.failure(), return_code=run.return_code)
    return None


def _notebook_parameters(files: Sequence[str], pairs: Sequence[Sequence[str]], here: Path) -> dict[str, Any]:
    """``-f`` files in order (relative: beside this notebook), then ``-p NAME VALUE`` (later wins)."""
    params: dict[str, Any] = {}
    for f in files:
        params.update(load_parameters_file(here / Path(f).expanduser()))
    for name, value in pairs:
        params[name] = parse_value(value)
    return check_parameters(params)


def _watch_quietly(run: NotebookRun, view: JobView) -> None:
    """``--async``: follow the run in a thread; how it ended is in the view and in ``run``."""
    with contextlib.suppress(Exception):
        watch_notebook_run(run, view, interruptible=False)
