"""The notebook commands: ``run-notebook`` (a whole notebook as one job, executed notebook back) and
``convert`` (a job folder for the official DataSphere CLI and ours). Registered in
:func:`jupyter_ds_jobs.cli.parser.build_parser`; the packaging is :mod:`jupyter_ds_jobs.packaging.notebook`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jupyter_ds_jobs.cli.commands import run_attached
from jupyter_ds_jobs.cli.console import Console, human_bytes, parse_size
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging.nbparams import check_parameters, load_parameters_file, parse_value
from jupyter_ds_jobs.packaging.notebook import NotebookJob, NotebookJobOptions, build_notebook_job

__all__ = ["cmd_convert", "cmd_run_notebook"]


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """``-f`` files in order, then ``-p NAME VALUE`` (later wins)."""
    params: dict[str, Any] = {}
    for f in args.parameters_file or ():
        params.update(load_parameters_file(Path(f)))
    for name, value in args.parameter or ():
        params[name] = parse_value(value)
    return check_parameters(params)


def _env(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InvalidArgument(f"{item!r}: expected NAME=VALUE", field="--env")
        out[key.strip()] = value
    return out


def _options(args: argparse.Namespace, *, collect: bool) -> NotebookJobOptions:
    return NotebookJobOptions(
        parameters=_parameters(args),
        name=args.name,
        desc=args.desc or "",
        instance_types=list(args.instance_type or ()),
        requirements=args.requirements,
        pip=list(args.pip or ()),
        python=args.python,
        files=[Path(f) for f in args.file or ()],
        output_files=list(args.output_file or ()),
        collect=collect,
        written_files=not args.no_output_files,
        max_file_bytes=parse_size(args.max_output_file_size),
        env=_env(args.env),
    )


def _build(args: argparse.Namespace, console: Console, *, collect: bool) -> NotebookJob:
    job = build_notebook_job(Path(args.notebook), _options(args, collect=collect))
    for w in job.warnings:
        console.info(f"warning: {w}")
    return job


def cmd_run_notebook(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.notebooks import NotebookRun

    console = Console(system_logs=args.verbose)
    path = Path(args.notebook).expanduser().absolute()
    output = Path(args.output).expanduser().absolute() if args.output else None
    if output == path:
        raise InvalidArgument("the executed notebook must not replace the original", field="-o")
    job = _build(args, console, collect=True)
    try:
        with JobsClient.connect(args.endpoint, args.token, args.project) as client:
            job_id = client.create_from_spec(job, progress=console.transfer)
            job.cleanup()
            st = client.last_create
            uploaded = f"; uploaded {st.files_uploaded} ({human_bytes(st.bytes_uploaded)})" if st else ""
            console.info(f"created job {job_id}: notebook {path.name}{uploaded}")
            if args.async_:
                client.execute(job_id)
                print(job_id)
                return 0
            rc = run_attached(client, job_id, console, download_dir=None)
            run = NotebookRun(client, job_id, path=path, output=output, job=job)
            placed = run.fetch()
    finally:
        job.cleanup()
    if placed.output is not None:
        console.info(f"executed notebook: {placed.output}")
    for f in placed.files:
        console.info(f"file: {f}")
    if placed.files_left:
        console.info(
            f"warning: {len(placed.files_left)} file(s) the notebook wrote are over the size limit and did not "
            f"come back (name them with --output-file): {', '.join(placed.files_left)}"
        )
    if placed.error is not None:
        e = placed.error
        console.info(f"error: the notebook failed at {e.get('cell')}: {e.get('ename')}: {e.get('evalue')}")
        return rc or 1
    return rc


def cmd_convert(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.packaging.nbfolder import write_job_folder

    console = Console()
    job = _build(args, console, collect=False)
    try:
        written = write_job_folder(job, Path(args.output_dir))
    finally:
        job.cleanup()
    for p in written:
        print(p)
    dest = Path(args.output_dir)
    console.info(f"job folder {dest}: run it with `cd {dest} && jupyter ds-jobs execute -c config.yaml`")
    return 0
