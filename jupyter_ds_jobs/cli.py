"""`jupyter ds-jobs` (also `ds-jobs`): the command line.

Each command is a ``cmd_<name>(args) -> int`` registered in :func:`build_parser`.
User errors print one line (``error: ...``) and exit non-zero, never a traceback.

Which server: ``--endpoint`` / ``--token`` / ``-p``, else ``DS_JOBS_ENDPOINT`` / ``DS_JOBS_TOKEN`` /
``DS_JOBS_PROJECT`` or the settings file, else the embedded local server (started detached when
none runs). ``--endpoint datasphere`` is DataSphere itself (token from ``YC_IAM_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument

if TYPE_CHECKING:
    from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
    from jupyter_ds_jobs.core.client import ExecuteResult, JobsClient
    from jupyter_ds_jobs.core.transfer import TransferProgress

__all__ = ["Console", "build_parser", "main"]


# --------------------------------------------------------------------------- output


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Console:
    """Job output and the CLI's own messages.

    Job stdout goes to stdout and job stderr to stderr, byte for byte. The CLI's messages,
    progress bars and the status line go to stderr; on a terminal the status line and bars are
    redrawn in place, elsewhere only changes and summaries are printed.
    """

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, *, system_logs: bool = False
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.err.isatty()
        self.system_logs = system_logs
        self._status = ""
        self._plain_last = ""
        self._lock = threading.RLock()

    # low level
    def _clear(self) -> None:
        if self.tty and self._status:
            self.err.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.tty and self._status:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.err.write(self._status[: max(cols - 1, 10)])
        self.err.flush()

    def info(self, message: str) -> None:
        with self._lock:
            self._clear()
            self.err.write(message + "\n")
            self._redraw()

    def status(self, text: str, *, plain_key: str | None = None) -> None:
        """The status line (terminal), or one line per change of ``plain_key`` (elsewhere)."""
        with self._lock:
            if self.tty:
                self._clear()
                self._status = text
                self._redraw()
            else:
                key = text if plain_key is None else plain_key
                if key and key != self._plain_last:
                    self._plain_last = key
                    self.err.write(text + "\n")
                    self.err.flush()

    def end_status(self) -> None:
        with self._lock:
            self._clear()
            self._status = ""
            self.err.flush()

    # job logs
    def on_log(self, m: pjs_pb2.LogMessage) -> None:
        with self._lock:
            self._clear()
            if m.WhichOneof("source") == "file_path":
                if self.system_logs:
                    text = m.content.decode("utf-8", "replace")
                    for line in text.splitlines():
                        self.err.write(f"[{m.file_path}] {line}\n")
            else:
                from jupyter_ds_jobs._proto import pjs_pb2 as p

                stream = self.err if m.standard_stream == p.ERR else self.out
                self.out.flush()
                buf = getattr(stream, "buffer", None)
                if buf is not None:
                    buf.write(m.content)
                    buf.flush()
                else:
                    stream.write(m.content.decode("utf-8", "replace"))
                stream.flush()
            self._redraw()

    # transfers and job progress
    def transfer(self, p: TransferProgress) -> None:
        verb = {"hash": "hashing", "zip": "zipping", "upload": "uploading", "download": "downloading"}.get(
            p.phase, p.phase
        )
        if p.finished:
            self.end_status()
            if p.phase in ("upload", "download") and p.files_total:
                rate = p.done_bytes / p.elapsed if p.elapsed > 0 else 0.0
                past = "uploaded" if p.phase == "upload" else "downloaded"
                self.info(
                    f"{past} {p.files_total} file(s), {human_bytes(p.done_bytes)} in {p.elapsed:.1f}s"
                    + (f" ({human_bytes(rate)}/s)" if p.elapsed > 0.5 else "")
                )
            elif p.phase == "hash" and p.elapsed > 1.0:
                self.info(f"hashed {p.files_total} file(s), {human_bytes(p.total_bytes)} in {p.elapsed:.1f}s")
            return
        if not self.tty:
            return
        frac = p.done_bytes / p.total_bytes if p.total_bytes else 0.0
        rate = p.done_bytes / p.elapsed if p.elapsed > 0 else 0.0
        self.status(
            f"{verb} {p.files_done}/{p.files_total} {_bar(frac)} {frac * 100:3.0f}% "
            f"{human_bytes(p.done_bytes)}/{human_bytes(p.total_bytes)} {human_bytes(rate)}/s {p.current}"
        )

    def job_progress(self, job: jobs_pb2.Job, progress: jobs_pb2.JobProgress | None, t0: float) -> None:
        from jupyter_ds_jobs.common.contract import status_name

        st = status_name(job.status)
        msg = progress.message if progress is not None else ""
        pct = int(progress.progress) if progress is not None else 0
        elapsed = time.monotonic() - t0
        if self.tty:
            bar = f" {_bar(pct / 100, 16)} {pct:3d}%" if st == "PREPARING" or (0 < pct < 100) else ""
            self.status(f"job {job.id}: {st}{bar} {msg} ({elapsed:.0f}s)")
        else:
            self.status(f"job {job.id}: {st}{': ' + msg if msg else ''}", plain_key=f"{st}|{msg}")


# --------------------------------------------------------------------------- helpers


def _client(args: argparse.Namespace) -> JobsClient:
    from jupyter_ds_jobs.core.client import JobsClient

    return JobsClient.connect(
        getattr(args, "endpoint", None), getattr(args, "token", None), getattr(args, "project", None)
    )


def _pairs(items: Sequence[str] | None, opt: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"{opt} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _ts(ts: Any) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: jobs_pb2.Job) -> str:
    if not job.HasField("started_at"):
        return ""
    end = (
        job.finished_at.seconds + job.finished_at.nanos / 1e9 if job.HasField("finished_at") else time.time()
    )
    secs = max(0.0, end - (job.started_at.seconds + job.started_at.nanos / 1e9))
    return str(timedelta(seconds=round(secs)))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


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


# --------------------------------------------------------------------------- running attached


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


# --------------------------------------------------------------------------- commands


def cmd_execute(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.packaging.jobspec import load_config

    spec = load_config(Path(args.config))
    console = Console(system_logs=args.verbose)
    ttl = _ttl(args.data_ttl_days) if args.data_ttl_days is not None else None
    with _client(args) as client:
        job_id = client.create_from_spec(spec, progress=console.transfer, data_ttl=ttl)
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
        [j.id, j.name, status_name(j.status), _ts(j.created_at), _duration(j), j.status_details[:50]]
        for j in jobs
    ]
    print(_table(rows, ["ID", "NAME", "STATUS", "CREATED", "DURATION", "DETAILS"]))
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
        ["created", _ts(job.created_at)],
        ["started", _ts(job.started_at)],
        ["finished", _ts(job.finished_at)],
        ["duration", _duration(job)],
        ["cmd", p.cmd],
        ["instance type", job.actual_cloud_instance_type.name],
        ["inputs", ", ".join(f.desc.path for f in p.input_files)],
        [
            "outputs",
            ", ".join(f.desc.path for f in job.output_files) or ", ".join(d.path for d in p.output_files),
        ],
        ["logs", ", ".join(f.desc.path for f in job.log_files)],
        ["data size", human_bytes(job.data_size_bytes) if job.data_size_bytes else ""],
        ["data expires", _ts(job.data_expires_at) or ("never" if not job.data_cleared else "")],
        ["data cleared", "yes" if job.data_cleared else "no"],
    ]
    print(_table([r for r in rows if r[1]], ["FIELD", "VALUE"]))
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
    when = _ts(job.data_expires_at) or "never"
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


# --------------------------------------------------------------------------- server


def _add_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "server",
        help="run the local job server (foreground), or manage it",
        description="Run the local ProjectJobService in the foreground. It binds to 127.0.0.1 by default, "
        "requires a bearer token (generated unless --token is given) and writes a connection file "
        "ds-jobs-server.json (mode 0600) into the state dir and the Jupyter runtime dir. "
        "'server status' and 'server stop' manage a running one.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="gRPC port; 0 picks a free one (default: 0)")
    p.add_argument("--http-port", type=int, default=0, help="HTTP port for job files; 0 picks a free one")
    p.add_argument("--state-dir", type=Path, default=None, help="where jobs, files and environments are kept")
    p.add_argument("--token", default=None, help="bearer token clients must send (default: generated)")
    p.add_argument(
        "--max-concurrent-jobs", type=int, default=2, help="jobs run at once; the rest wait (default: 2)"
    )
    p.add_argument(
        "--data-ttl-days", type=float, default=14.0, help="default lifetime of job data in days (default: 14)"
    )
    p.add_argument(
        "--env-cache-size",
        default=None,
        help="size cap of the Python environment cache, e.g. 20G (least recently used are removed)",
    )
    p.add_argument(
        "--find-links",
        action="append",
        default=[],
        help="extra local wheel dir for job environments (repeatable)",
    )
    p.add_argument(
        "--instance-types",
        default=None,
        help="comma-separated instance types this server accepts (default: c1.4, c1.8, c1.32, g1.1, g2.1, ...)",
    )
    p.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="start every cell job as a new Python instead of forking a warm interpreter",
    )
    p.set_defaults(func=cmd_server)
    ssub = p.add_subparsers(dest="server_command", metavar="{status,stop}")
    st = ssub.add_parser(
        "status",
        help="show the running local server",
        description="Show the local job server of the state dir (or the runtime dir's): endpoint, pid, jobs.",
    )
    st.add_argument("--state-dir", dest="status_state_dir", type=Path, default=None, help="its state dir")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=cmd_server_status)
    sp = ssub.add_parser(
        "stop",
        help="stop the running local server",
        description="Stop the local job server (SIGTERM: running jobs are cancelled, the connection file removed).",
    )
    sp.add_argument("--state-dir", dest="status_state_dir", type=Path, default=None, help="its state dir")
    sp.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for it to exit (default: 30)"
    )
    sp.set_defaults(func=cmd_server_stop)


def parse_size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise DsJobsError(f"bad size {text!r}: use a number with K, M, G or T") from None


def cmd_server(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.common.connection import default_state_dir
    from jupyter_ds_jobs.common.contract import INSTANCE_TYPES
    from jupyter_ds_jobs.server.app import ServerOptions, run_server

    if args.max_concurrent_jobs < 1:
        raise DsJobsError("--max-concurrent-jobs must be at least 1")
    types = (
        tuple(t.strip() for t in args.instance_types.split(",") if t.strip()) if args.instance_types else None
    )
    opts = ServerOptions(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        state_dir=args.state_dir or default_state_dir(),
        token=args.token or os.environ.get("DS_JOBS_TOKEN") or None,
        max_concurrent_jobs=args.max_concurrent_jobs,
        default_ttl_days=args.data_ttl_days or None,
        instance_types=types or tuple(INSTANCE_TYPES),
        env_cache_cap_bytes=parse_size(args.env_cache_size) if args.env_cache_size else None,
        find_links=tuple(args.find_links),
        warm_start=args.warm_start,
    )
    return run_server(opts)


def _server_state_dir(args: argparse.Namespace) -> Path | None:
    sd: Path | None = getattr(args, "status_state_dir", None) or getattr(args, "state_dir", None)
    return sd


def cmd_server_status(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.core.embedded import find_server

    info = find_server(_server_state_dir(args))
    if info is None:
        print("no local job server is running", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    with JobsClient(info.endpoint, info.token, project_id="") as client:
        from jupyter_ds_jobs.common.contract import status_name

        for job in client.list_jobs(project_id="", limit=10_000):
            counts[status_name(job.status)] = counts.get(status_name(job.status), 0) + 1
    data = {
        "endpoint": info.endpoint,
        "http_url": info.http_url,
        "pid": info.pid,
        "state_dir": info.state_dir,
        "version": info.version,
        "jobs": counts,
    }
    if args.format == "json":
        print(json.dumps(data, indent=1))
        return 0
    rows = [[k, str(v)] for k, v in data.items() if k != "jobs"]
    rows.append(["jobs", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"])
    print(_table(rows, ["SERVER", ""]))
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.core.embedded import find_server, stop_server

    info = find_server(_server_state_dir(args))
    if info is None:
        print("no local job server is running", file=sys.stderr)
        return 0
    if not stop_server(info, timeout=args.timeout):
        raise DsJobsError(f"the job server (pid {info.pid}) did not stop within {args.timeout:g}s")
    print(f"stopped the job server (pid {info.pid})", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, project: bool = True) -> None:
    g = p.add_argument_group("server")
    g.add_argument(
        "--endpoint",
        default=None,
        help="job server host:port, or 'datasphere' (default: DS_JOBS_ENDPOINT, settings, else the local server)",
    )
    g.add_argument("--token", default=None, help="bearer token (default: DS_JOBS_TOKEN or settings)")
    if project:
        g.add_argument(
            "-p",
            "--project",
            default=None,
            help="project id (default: DS_JOBS_PROJECT, settings, or 'local')",
        )


def _id(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", required=True, help="job id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter ds-jobs",
        description="Run scripts, notebooks and DataSphere config.yaml jobs on a DataSphere Jobs API server "
        "(the embedded local one by default).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "execute",
        help="run a job from a config.yaml",
        description="Read a DataSphere config.yaml, upload what the server lacks, run the job, stream its "
        "logs, download its outputs into the working dir, and exit with the job's return code. "
        "Ctrl-C asks whether to cancel; a second Ctrl-C cancels.",
    )
    p.add_argument("-c", "--config", required=True, help="the job's config.yaml")
    p.add_argument(
        "--async", dest="async_", action="store_true", help="create and start, print the job id, exit"
    )
    p.add_argument("--data-ttl-days", default=None, help="keep the job's data N days (or 'infinity')")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _common(p)
    p.set_defaults(func=cmd_execute)

    p = sub.add_parser(
        "attach",
        help="follow a running job to its end",
        description="Attach to a job: stream its logs (from now by default), wait, download outputs, exit "
        "with its return code. A job that was created but not started is started.",
    )
    _id(p)
    p.add_argument("--offset", type=int, default=-1, help="log offset to start from (default -1: from now)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _common(p)
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("list", help="list jobs", description="List the project's jobs, newest first.")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--limit", type=int, default=None, help="at most N jobs")
    p.add_argument("--status", action="append", help="only jobs in this status (repeatable)")
    _common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("get", help="show a job", description="Show one job.")
    _id(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    _common(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("cancel", help="cancel a job", description="Cancel a running job.")
    _id(p)
    p.add_argument(
        "--graceful",
        action="store_true",
        help="send the job's graceful-shutdown signal, SIGKILL after its timeout",
    )
    p.add_argument("--reason", default="", help="why (shown in the job's status details)")
    _common(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "fork",
        help="run a copy of a job with changes",
        description="Clone a job with other arguments, inputs, environment variables or instance type, and run it "
        "like execute.",
    )
    _id(p)
    p.add_argument("--arg", action="append", metavar="NAME=VALUE", help="argument override (repeatable)")
    p.add_argument("--var", action="append", metavar="NAME=PATH", help="input file override (repeatable)")
    p.add_argument(
        "--env-var", action="append", metavar="NAME=VALUE", help="environment variable (repeatable)"
    )
    p.add_argument("--cloud-instance-type", default=None, metavar="TYPE", help="instance type")
    p.add_argument("--name", default=None, help="name of the new job")
    p.add_argument("--desc", default=None, help="description of the new job")
    p.add_argument("--async", dest="async_", action="store_true", help="start it, print the job id, exit")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _common(p)
    p.set_defaults(func=cmd_fork)

    p = sub.add_parser(
        "set-data-ttl", help="change how long a job's data is kept", description="Set a job's data TTL."
    )
    _id(p)
    p.add_argument("--days", required=True, help="N days from now, or 'infinity'")
    _common(p)
    p.set_defaults(func=cmd_set_data_ttl)

    p = sub.add_parser(
        "download-files",
        help="download a job's files",
        description="Download a job's output files (and logs, diagnostics); ZIP outputs are extracted.",
    )
    _id(p)
    p.add_argument("--with-logs", action="store_true", help="also the log files")
    p.add_argument("--with-diagnostics", action="store_true", help="also the diagnostic files")
    p.add_argument("--output-dir", default=".", help="where to put them (default: .)")
    _common(p)
    p.set_defaults(func=cmd_download_files)

    p = sub.add_parser("delete", help="delete a job", description="Delete a finished job and its data.")
    _id(p)
    p.add_argument("--data-only", action="store_true", help="delete only its files; keep the job listed")
    _common(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("logs", help="print a job's logs", description="Print a job's stdout and stderr.")
    _id(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the job ends")
    p.add_argument("--offset", type=int, default=0, help="byte offset to start from (-1: from now)")
    p.add_argument("-v", "--verbose", action="store_true", help="also the system log, and the final offset")
    _common(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "generate-requirements",
        help="print the pinned requirements a script needs",
        description="Statically analyze a script: print name==version of the installed distributions it uses "
        "(local modules and unresolved names go to stderr).",
    )
    p.add_argument("file", help="the entry script")
    p.add_argument("--root", default=None, help="directory of local modules (default: the script's)")
    p.set_defaults(func=cmd_generate_requirements)

    _add_server(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return int(func(args))
    except DsJobsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
