"""The job commands of the command line: each ``cmd_<name>(args) -> int`` is registered in
:func:`jupyter_ds_jobs.cli.parser.build_parser`; :func:`run_attached` follows a job to its end
(logs, Ctrl-C, outputs, exit code) for ``execute``, ``attach`` and ``fork``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_ds_jobs.cli.console import Console, format_duration, format_time, human_bytes, table
from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument

if TYPE_CHECKING:
    from jupyter_ds_jobs._proto import jobs_pb2
    from jupyter_ds_jobs.core.client import ExecuteResult, JobsClient

__all__ = [
    "cmd_attach",
    "cmd_cancel",
    "cmd_delete",
    "cmd_download_files",
    "cmd_execute",
    "cmd_fork",
    "cmd_generate_requirements",
    "cmd_get",
    "cmd_list",
    "cmd_logs",
    "cmd_set_data_ttl",
    "run_attached",
]


def _client(args: argparse.Namespace) -> JobsClient:
    from jupyter_ds_jobs.core.client import JobsClient

    return JobsClient.connect(
        getattr(args, "endpoint", None),
        getattr(args, "token", None),
        getattr(args, "project", None),
        ca_file=getattr(args, "ca_file", None),
        yc_profile=getattr(args, "yc_profile", None),
    )


def _pairs(items: Sequence[str] | None, opt: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"{opt} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _job_dict(job: jobs_pb2.Job) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    d: dict[str, Any] = MessageToDict(job, preserving_proto_field_name=True)
    return d


def _exit_code(result: ExecuteResult) -> int:
    from jupyter_ds_jobs._proto import jobs_pb2

    if result.job.status == jobs_pb2.CANCELLED:
        return 130
    if result.return_code is not None and result.job.status in (jobs_pb2.SUCCESS, jobs_pb2.ERROR):
        rc = result.return_code
        if rc == 0 and result.job.status == jobs_pb2.ERROR:
            return 1
        return rc if 0 <= rc < 256 else (128 - rc if -128 < rc < 0 else 1)
    return 1


def _ask_cancel(console: Console, job_id: str, ended: threading.Event) -> bool:
    """After a Ctrl-C: ask (terminal) or wait 10 s for a second Ctrl-C; True means cancel."""
    console.end_status()
    try:
        if sys.stdin is not None and sys.stdin.isatty():
            console.err.write(f"\nCancel job {job_id}? [y/N] (Ctrl-C again cancels) ")
            console.err.flush()
            answer = input()
            return answer.strip().lower() in ("y", "yes")
        console.info(f"\nCtrl-C: press Ctrl-C again within 10 s to cancel job {job_id}")
        ended.wait(10.0)
        return False
    except KeyboardInterrupt:
        return True
    except EOFError:
        return False


def run_attached(
    client: JobsClient,
    job_id: str,
    console: Console,
    *,
    log_offset: int = 0,
    download_dir: Path | None = Path("."),
) -> int:
    """Execute (or attach to) a job, stream its logs, wait, download outputs; the exit code.

    Ctrl-C asks whether to cancel; a second Ctrl-C cancels (gracefully when the job has
    graceful-shutdown settings). The exit code is the job's return code, 130 when cancelled.
    """
    t0 = time.monotonic()
    op = client.execute(job_id)
    follower = client.logs_thread(job_id, console.on_log, log_offset)
    cancelled = False
    result: ExecuteResult | None = None
    try:
        while result is None:
            try:
                result = client.wait(
                    job_id, op, on_progress=lambda j, p: console.job_progress(j, p, t0), wake=follower.done
                )
            except KeyboardInterrupt:
                if cancelled:
                    console.info(f"job {job_id} is being cancelled; Ctrl-C again leaves it")
                    try:
                        follower.done.wait(5.0)
                    except KeyboardInterrupt:
                        console.end_status()
                        return 130
                    continue
                if _ask_cancel(console, job_id, follower.done):
                    job = client.get(job_id)
                    graceful = job.job_parameters.HasField("graceful_shutdown_parameters")
                    console.info(f"cancelling job {job_id}{' gracefully' if graceful else ''}")
                    try:
                        client.cancel(job_id, graceful=graceful, reason="cancelled from the command line")
                    except DsJobsError as e:
                        console.info(f"cancel: {e}")
                    cancelled = True
    finally:
        if not follower.join(10.0):
            follower.stop()
            follower.join(2.0)
        console.end_status()
    if follower.error is not None:
        console.info(f"warning: log stream: {follower.error}")
    for fe in result.file_errors:
        what = (
            fe.output_file_desc.path if fe.WhichOneof("file_type") == "output_file_desc" else fe.log_file_name
        )
        console.info(f"warning: {what}: {fe.description}")
    if download_dir is not None and result.output_files:
        paths = client.download_result(result, download_dir, progress=console.transfer)
        for p in paths:
            console.info(f"output: {p}")
    elapsed = time.monotonic() - t0
    rc = "" if result.return_code is None else f", return code {result.return_code}"
    detail = f": {result.job.status_details}" if result.job.status_details and not result.ok else ""
    console.info(f"job {job_id} {result.status}{rc} in {elapsed:.1f}s{detail}")
    return _exit_code(result)


def cmd_execute(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.packaging.jobspec import load_config

    spec = load_config(Path(args.config))
    console = Console(system_logs=args.verbose)
    ttl = _ttl(args.data_ttl_days) if args.data_ttl_days is not None else None
    with _client(args) as client:
        job_id = client.create_from_spec(spec, progress=console.transfer, data_ttl=ttl)
        if args.data_ttl_days is not None and ttl is None:  # 'infinity': Create cannot say "forever"
            client.set_data_ttl(job_id, None)
        st = client.last_create
        if st is not None:
            console.info(
                f"created job {job_id}: {st.files} file(s), {human_bytes(st.bytes_total)}; uploaded "
                f"{st.files_uploaded} ({human_bytes(st.bytes_uploaded)}) in {st.total_seconds:.2f}s"
            )
        if args.async_:
            client.execute(job_id)
            print(job_id)
            return 0
        return run_attached(client, job_id, console, download_dir=Path.cwd())


def cmd_attach(args: argparse.Namespace) -> int:
    console = Console(system_logs=args.verbose)
    with _client(args) as client:
        return run_attached(client, args.id, console, log_offset=args.offset, download_dir=Path.cwd())


def cmd_list(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs._proto import jobs_pb2
    from jupyter_ds_jobs.common.contract import status_name

    statuses = []
    for s in args.status or ():
        name = s.strip().upper()
        if name not in jobs_pb2.JobStatus.keys():  # noqa: SIM118
            raise InvalidArgument(f"unknown status {s!r}", field="--status")
        statuses.append(jobs_pb2.JobStatus.Value(name))
    with _client(args) as client:
        jobs = list(client.list_jobs(args.project, statuses, limit=args.limit))
    if args.format == "json":
        print(json.dumps([_job_dict(j) for j in jobs], indent=1))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = [
        [
            j.id,
            j.name,
            status_name(j.status),
            format_time(j.created_at),
            format_duration(j),
            j.status_details[:50],
        ]
        for j in jobs
    ]
    print(table(rows, ["ID", "NAME", "STATUS", "CREATED", "DURATION", "DETAILS"]))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.common.contract import status_name

    with _client(args) as client:
        job = client.get(args.id)
    if args.format == "json":
        print(json.dumps(_job_dict(job), indent=1))
        return 0
    p = job.job_parameters
    rows = [
        ["id", job.id],
        ["name", job.name],
        ["desc", job.desc],
        ["status", status_name(job.status)],
        ["details", job.status_details],
        ["project", job.project_id],
        ["parent", job.parent_job_id],
        ["created", format_time(job.created_at)],
        ["started", format_time(job.started_at)],
        ["finished", format_time(job.finished_at)],
        ["duration", format_duration(job)],
        ["cmd", p.cmd],
        ["instance type", job.actual_cloud_instance_type.name],
        ["inputs", ", ".join(f.desc.path for f in p.input_files)],
        [
            "outputs",
            ", ".join(f.desc.path for f in job.output_files) or ", ".join(d.path for d in p.output_files),
        ],
        ["logs", ", ".join(f.desc.path for f in job.log_files)],
        ["data size", human_bytes(job.data_size_bytes) if job.data_size_bytes else ""],
        ["data expires", format_time(job.data_expires_at) or ("never" if not job.data_cleared else "")],
        ["data cleared", "yes" if job.data_cleared else "no"],
    ]
    print(table([r for r in rows if r[1]], ["FIELD", "VALUE"]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.cancel(args.id, graceful=args.graceful, reason=args.reason)
    print(f"cancel requested for job {args.id}{' (graceful)' if args.graceful else ''}", file=sys.stderr)
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.packaging.jobspec import fork_overrides

    console = Console(system_logs=args.verbose)
    with _client(args) as client:
        src = client.get(args.id)
        overrides, files = fork_overrides(
            args=_pairs(args.arg, "--arg"),
            vars={k: Path(v) for k, v in _pairs(args.var, "--var").items()},
            env_vars=_pairs(args.env_var, "--env-var"),
            instance_type=args.cloud_instance_type,
            base=src.job_parameters,
        )
        job_id = client.clone(args.id, overrides, files, name=args.name or "", desc=args.desc or "",
                              progress=console.transfer)  # fmt: skip
        console.info(f"created job {job_id} (fork of {args.id})")
        if args.async_:
            client.execute(job_id)
            print(job_id)
            return 0
        return run_attached(client, job_id, console, download_dir=Path.cwd())


def _ttl(days: str) -> timedelta | None:
    if days.strip().lower() in ("infinity", "inf", "never"):
        return None
    try:
        n = float(days)
    except ValueError:
        raise InvalidArgument(
            f"expected a number of days or 'infinity', got {days!r}", field="--days"
        ) from None
    if n < 0:
        raise InvalidArgument(f"must not be negative, got {days!r}", field="--days")
    return timedelta(days=n)


def cmd_set_data_ttl(args: argparse.Namespace) -> int:
    ttl = _ttl(args.days)
    with _client(args) as client:
        client.set_data_ttl(args.id, ttl)
        job = client.get(args.id)
    when = format_time(job.data_expires_at) or "never"
    print(f"job {args.id} data expires: {when}", file=sys.stderr)
    return 0


def cmd_download_files(args: argparse.Namespace) -> int:
    console = Console()
    dest = Path(args.output_dir)
    with _client(args) as client:
        job = client.get(args.id)
        files = list(job.output_files)
        if args.with_logs:
            files += list(job.log_files)
        if args.with_diagnostics:
            files += list(job.diagnostic_files)
        if not files:
            console.info(f"job {args.id} has no files to download")
            return 0
        paths = client.download(args.id, files, dest, progress=console.transfer)
    for p in paths:
        print(p)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.data_only:
            client.delete_data(args.id)
            print(f"deleted the data of job {args.id}", file=sys.stderr)
        else:
            client.delete(args.id)
            print(f"deleted job {args.id}", file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.common.contract import FINAL_STATUSES

    console = Console(system_logs=args.verbose)
    with _client(args) as client:
        job = client.get(args.id)
        if args.follow or job.status in FINAL_STATUSES:
            offset = client.follow_logs(args.id, console.on_log, offset=args.offset)
        else:  # what is there now: stop once the stream goes quiet
            follower = client.logs_thread(args.id, console.on_log, args.offset)
            while not follower.done.wait(0.1):
                if time.monotonic() - follower.last_message_at > 0.5:
                    follower.stop()
            follower.join(5.0)
            if follower.error is not None:
                raise follower.error
            offset = follower.offset
    if args.verbose:
        console.info(f"offset: {offset}")
    return 0


def cmd_generate_requirements(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.packaging.analysis import analyze_script, format_requirements

    result = analyze_script(Path(args.file), Path(args.root) if args.root else None)
    sys.stdout.write(format_requirements(result.requirements))
    for m in result.local_modules:
        print(f"# local module: {m}", file=sys.stderr)
    for u in result.unresolved:
        print(f"# not found (neither local, standard nor installed): {u}", file=sys.stderr)
    return 0
