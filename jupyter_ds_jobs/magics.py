"""IPython magics: ``%%ds_job`` runs a notebook cell as a job; ``%ds_jobs``, ``%ds_job_attach``,
``%ds_job_cancel``, ``%ds_job_logs`` and ``%ds_config`` manage jobs and settings.

Load with ``%load_ext jupyter_ds_jobs``. See ``docs/magics.md``.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import html
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from IPython.core import magic_arguments as _margs
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.core.errors import DsJobsError, InvalidArgument, JobFailed
from jupyter_ds_jobs.packaging import celljob
from jupyter_ds_jobs.packaging.celljob import CellJob, CellJobOptions
from jupyter_ds_jobs.packaging.runner import ERROR_FILE, OUTPUTS_DIR, OUTPUTS_MANIFEST, OUTPUTS_ZIP
from jupyter_ds_jobs.widgets import JobView, Summary, TextView, format_duration, make_view

__all__ = ["DsJob", "DsJobsMagics", "load_ipython_extension"]

_F = TypeVar("_F", bound=Callable[..., Any])


# IPython's magic_arguments is untyped: typed aliases
def argument(*args: Any, **kwargs: Any) -> Callable[[_F], _F]:
    return _margs.argument(*args, **kwargs)  # type: ignore[no-any-return,no-untyped-call]


def magic_arguments() -> Callable[[_F], _F]:
    return _margs.magic_arguments()  # type: ignore[no-any-return,no-untyped-call]


def parse_argstring(magic_func: Any, argstring: str) -> Any:
    return _margs.parse_argstring(magic_func, argstring)  # type: ignore[no-untyped-call]


_FINAL = ("SUCCESS", "ERROR", "CANCELLED")
_TAIL_LINES = 20
_SYSTEM_SHOWN = re.compile(r"environment|error|cancel|SIGKILL|signal|waiting for a free slot", re.I)


def _status_name(status: int) -> str:
    return str(jobs_pb2.JobStatus.Name(status))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the job handle


class DsJob:
    """A job started by ``%%ds_job`` or reattached by ``%ds_job_attach``.

    ``result()`` waits for the end and loads the cell's variables into the namespace (once),
    raising the remote exception when the cell failed; ``cancel()`` cancels the job; ``status``
    is the last known status name; ``logs`` the last lines of output.
    """

    def __init__(
        self,
        client: Any,
        job_id: str,
        *,
        shell: InteractiveShell | None,
        view: JobView,
        name: str = "",
        cell: CellJob | None = None,
        output_dir: Path | None = None,
        op: Any = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.name = name
        self.shell = shell
        self.view = view
        self.cell = cell
        self.output_dir = Path(output_dir) if output_dir is not None else Path.cwd()
        self.status = "CREATING"
        self.return_code: int | None = None
        self.values: dict[str, object] = {}
        self.files: list[Path] = []
        self.unpicklable: dict[str, str] = {}
        self.error: BaseException | None = None
        self._op = op
        self._t0 = time.monotonic()
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._decoders = {
            False: codecs.getincrementaldecoder("utf-8")("replace"),
            True: codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._logs: Any = None
        self._done = threading.Event()
        self._loaded = False
        self._finish_lock = threading.Lock()
        self._wait_error: BaseException | None = None
        self._result: Any = None
        self._waiter: threading.Thread | None = None
        self._cancel_requested = 0

    def __repr__(self) -> str:
        return f"<DsJob {self.name + ' ' if self.name else ''}{self.job_id} {self.status.lower()}>"

    # -- logs ----------------------------------------------------------------------------------
    def _on_log(self, m: Any) -> None:
        source = m.WhichOneof("source")
        if source == "file_path":
            text = m.content.decode("utf-8", "replace").rstrip("\n")
            if "_ds_" in text:  # the runner's own files (e.g. no _ds_error.json: no error)
                return
            if text and (_SYSTEM_SHOWN.search(text) or not isinstance(self.view, TextView)):
                self.view.note(text)
            return
        stderr = source == "standard_stream" and m.standard_stream == 2
        text = self._decoders[stderr].decode(m.content)
        if not text:
            return
        for line in text.splitlines():
            self._tail.append(("[stderr] " if stderr else "") + line)
        self.view.log(text, stderr)

    def start_logs(self, offset: int = 0) -> None:
        self._logs = self.client.logs_thread(self.job_id, self._on_log, offset)

    def _stop_logs(self, wait: float = 5.0) -> None:
        logs = self._logs
        if logs is None:
            return
        # the server ends the stream when the job is final: wait for it to drain, then stop
        if not logs.join(wait):
            logs.stop()
            logs.join(1.0)

    @property
    def logs(self) -> str:
        """The last lines of the job's output."""
        return "\n".join(self._tail)

    # -- waiting -------------------------------------------------------------------------------
    def _on_progress(self, *args: Any) -> None:
        for a in args:
            if isinstance(a, jobs_pb2.Job):
                self._set_status(a.status, a.status_details)
            elif isinstance(a, jobs_pb2.JobProgress):
                self.view.progress(a.message, int(a.progress))

    def _set_status(self, status: int, details: str = "") -> None:
        name = _status_name(status)
        if name != self.status or details:
            self.status = name
            self.view.status(name, details)

    def _wait_interruptible(self, interruptible: bool) -> Any:
        """``client.wait``; Ctrl-C cancels gracefully, a second one kills, then re-raises."""
        interrupted: KeyboardInterrupt | None = None
        while True:
            try:
                wake = self._logs.done if self._logs is not None else None
                return self.client.wait(
                    self.job_id, self._op, on_progress=self._on_progress, wake=wake, poll=0.02
                )
            except KeyboardInterrupt as e:
                if not interruptible:
                    raise
                interrupted = interrupted or e
                self._cancel_requested += 1
                graceful = self._cancel_requested == 1
                self.view.note(
                    "interrupted: cancelling the job gracefully (interrupt again to kill it)"
                    if graceful
                    else "interrupted again: killing the job"
                )
                with contextlib.suppress(DsJobsError):
                    self.client.cancel(self.job_id, graceful=graceful, reason="kernel interrupted")

    def _run_to_end(self, interruptible: bool) -> None:
        try:
            self._result = self._wait_interruptible(interruptible)
        except BaseException as e:
            self._wait_error = e
        finally:
            self._stop_logs()
            if self._result is not None:
                job = self._result.job
                self._set_status(job.status, job.status_details)
                self.return_code = self._result.return_code
            self._done.set()

    def run(self, *, interruptible: bool = True) -> None:
        """Wait for the job in this thread (Ctrl-C cancels it)."""
        self._run_to_end(interruptible)
        if self._cancel_requested and self.status == "CANCELLED":
            self._finish(load=False)
            raise KeyboardInterrupt(f"job {self.job_id} was cancelled")
        if isinstance(self._wait_error, KeyboardInterrupt | SystemExit):
            raise self._wait_error

    def run_in_background(self) -> None:
        """Wait in a daemon thread: the widget keeps updating; ``result()`` loads the results."""
        self._waiter = threading.Thread(
            target=self._run_to_end, args=(False,), name=f"ds-job-{self.job_id}", daemon=True
        )
        self._waiter.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job is final; True when it is."""
        if self._waiter is not None:
            self._waiter.join(timeout)
        return self._done.wait(0 if self._waiter is not None else timeout)

    def cancel(self, graceful: bool = True) -> None:
        """Cancel the job (``graceful``: its graceful-shutdown signal first)."""
        self._cancel_requested += 1
        self.client.cancel(self.job_id, graceful=graceful, reason="cancelled from the notebook")

    def result(self, timeout: float | None = None) -> dict[str, object]:
        """Wait for the end, load the variables into the namespace, return them.

        Raises the remote exception (with its traceback) when the cell failed, ``JobFailed`` for a
        non-zero exit without one, ``TimeoutError`` when ``timeout`` passes first.
        """
        if self._waiter is None and not self._done.is_set():
            self.run(interruptible=True)
        elif not self.wait(timeout):
            raise TimeoutError(f"job {self.job_id} is still {self.status.lower()} after {timeout} s")
        self._finish(load=True)
        return dict(self.values)

    # -- results -------------------------------------------------------------------------------
    def _finish(self, *, load: bool) -> None:
        with self._finish_lock:
            if not self._loaded:
                self._loaded = True
                self._collect(load)
        if self._wait_error is not None and not isinstance(self._wait_error, KeyboardInterrupt):
            raise self._wait_error
        self._raise_if_failed()

    def _collect(self, load: bool) -> None:
        message = ""
        try:
            if self._wait_error is None:
                self._download_and_load(load)
        except DsJobsError as e:
            message = f"could not bring the results back: {e}"
            self.error = self.error or e
        finally:
            self.view.finished(
                Summary(
                    status=self.status,
                    return_code=self.return_code,
                    duration_s=time.monotonic() - self._t0,
                    variables=list(self.values),
                    files=[str(p) for p in self.files],
                    unpicklable=self.unpicklable,
                    message=message or (f"error: {self._wait_error}" if self._wait_error else ""),
                )
            )
            self.view.close()

    def _download_and_load(self, load: bool) -> None:
        ours_p = celljob.is_cell_output
        urls = self._result is not None and bool(self._result.output_files)
        if urls:  # the URLs came with the operation
            storage = list(self._result.output_files)
            ours: list[Any] = [sf for sf in storage if ours_p(sf.file.desc.path)]
            user: list[Any] = [sf for sf in storage if not ours_p(sf.file.desc.path)]

            def fetch(items: list[Any], dest: Path, extract: bool) -> list[Path]:
                return list(self.client.download_storage_files(items, dest, extract=extract))
        else:  # ask the server for them
            files = list(self.client.get(self.job_id).output_files)
            ours = [f for f in files if ours_p(f.desc.path)]
            user = [f for f in files if not ours_p(f.desc.path)]

            def fetch(items: list[Any], dest: Path, extract: bool) -> list[Path]:
                return list(self.client.download(self.job_id, items, dest, extract=extract))

        tmp = Path(tempfile.mkdtemp(prefix="ds-job-results-"))
        try:
            got = fetch(ours, tmp, False) if ours else []
            by_name = {p.name: p for p in got}
            outputs = tmp / OUTPUTS_DIR if (tmp / OUTPUTS_DIR / OUTPUTS_MANIFEST).exists() else None
            res = celljob.load_cell_results(outputs or by_name.get(OUTPUTS_ZIP), by_name.get(ERROR_FILE))
            self.unpicklable = res.unpicklable
            self.error = res.error
            if user:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self.files = fetch(user, self.output_dir, True)
            if load and self.shell is not None:
                self.shell.user_ns.update(res.values)
                if self.cell is not None and self.error is None and self.status == "SUCCESS":
                    for name in self.cell.deletes:
                        self.shell.user_ns.pop(name, None)
            self.values = res.values
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for name, why in self.unpicklable.items():
            print(f"ds_job: variable {name!r} did not come back: {why}", file=sys.stderr)

    def _raise_if_failed(self) -> None:
        if self.error is not None and self.status != "CANCELLED":
            raise _with_remote_traceback(self.error, self.job_id)
        if self.status == "CANCELLED":
            if not self._cancel_requested:
                raise JobFailed(f"job {self.job_id} was cancelled", return_code=self.return_code)
            return
        if self.status == "ERROR" or (self.return_code not in (None, 0)):
            tail = self.logs
            raise JobFailed(
                f"job {self.job_id} failed"
                + (f" with exit code {self.return_code}" if self.return_code is not None else "")
                + (f" ({self.details})" if self.details else "")
                + (f"; last lines of its output:\n{tail}" if tail else ""),
                return_code=self.return_code,
            )

    @property
    def details(self) -> str:
        if self._result is None:
            return ""
        return str(self._result.job.status_details)


def _with_remote_traceback(exc: BaseException, job_id: str) -> BaseException:
    """``exc`` shown by IPython as the remote traceback only (``_render_traceback_``)."""
    from jupyter_ds_jobs.packaging.cellio import RemoteError

    remote = exc if isinstance(exc, RemoteError) else exc.__cause__
    if isinstance(remote, RemoteError) and remote.formatted:
        lines = [f"Remote traceback (job {job_id}):", *remote.formatted.rstrip("\n").split("\n")]

        def render() -> list[str]:
            return lines

        with contextlib.suppress(AttributeError, TypeError):
            exc._render_traceback_ = render  # type: ignore[attr-defined]
    return exc


# --------------------------------------------------------------------------- the magics


def _csv(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v for item in values for v in item.split(",") if v.strip()]


@magics_class
class DsJobsMagics(Magics):
    """The ``%%ds_job`` cell magic and the ``%ds_*`` line magics."""

    def __init__(self, shell: InteractiveShell | None = None) -> None:
        super().__init__(shell)
        self._clients: dict[tuple[str, str, str], Any] = {}
        self.jobs: dict[str, DsJob] = {}
        #: When set, used instead of connecting (tests, embedding).
        self.client: Any = None

    def _parse(self, magic: str, line: str) -> Any:
        return parse_argstring(getattr(self, magic), line)

    # -- connection ----------------------------------------------------------------------------
    def _settings(self) -> Any:
        from jupyter_ds_jobs.core.config import Settings

        return Settings.load()

    def get_client(self, endpoint: str | None = None, project: str | None = None) -> Any:
        """A connected ``JobsClient`` (cached): explicit > settings/env > embedded local server.

        With no endpoint anywhere, the embedded local server is found or started (detached; a few
        seconds at most) and a message says where it is.
        """
        if self.client is not None and not endpoint and not project:
            return self.client
        settings = self._settings()
        key = (endpoint or "", project or "", os.environ.get("DS_JOBS_TOKEN", ""))
        client = self._clients.get(key)
        if client is None:
            from jupyter_ds_jobs.core.client import JobsClient

            local = not (endpoint or settings.endpoint)
            found = None
            if local:
                from jupyter_ds_jobs.core.embedded import find_server

                found = find_server()
                if found is None:
                    print("ds_job: no job server configured; starting the local one", file=sys.stderr)
            client = JobsClient.connect(endpoint or None, project_id=project or None, settings=settings)
            if local:
                from jupyter_ds_jobs.core.embedded import find_server

                info = found or find_server()
                state = f" (state in {info.state_dir})" if info is not None else ""
                print(f"ds_job: using the local job server at {client.endpoint}{state}", file=sys.stderr)
            self._clients[key] = client
        return client

    def _user_namespace(self) -> dict[str, object]:
        assert self.shell is not None
        hidden = self.shell.user_ns_hidden
        return {
            k: v
            for k, v in self.shell.user_ns.items()
            if not (k in hidden and hidden[k] is v) and k not in ("In", "Out", "get_ipython", "exit", "quit")
        }

    def _notebook_dir(self) -> Path:
        return Path.cwd()

    # -- %%ds_job ------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--name", default="", help="job name (default: the first assigned variable or 'cell')")
    @argument("--desc", default="", help="job description")
    @argument(
        "--instance-type",
        action="append",
        default=None,
        metavar="T",
        help="cloud instance type (repeatable, in order of preference), e.g. c1.4, g1.1",
    )
    @argument(
        "--inputs", action="append", default=None, help="variables to send: a,b (overrides the analysis)"
    )
    @argument(
        "--outputs",
        action="append",
        default=None,
        help="variables to bring back: x,y (overrides the analysis)",
    )
    @argument("--no-outputs", action="store_true", help="bring no variables back")
    @argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH[:VAR]",
        help="extra input file or directory, put in the job's working dir; VAR holds its path there",
    )
    @argument(
        "--output-file",
        action="append",
        default=[],
        metavar="PATH",
        help="a file the job writes (relative path), brought back beside the notebook",
    )
    @argument(
        "--requirements",
        default=None,
        metavar="auto|none|FILE",
        help="pinned requirements: auto (from the analysis, the default), none, or a requirements file",
    )
    @argument("--pip", action="append", default=[], metavar="SPEC", help="extra requirement (repeatable)")
    @argument("--python", default=None, metavar="VERSION", help="the job's Python (default: the kernel's)")
    @argument("--env", action="append", default=[], metavar="K=V", help="environment variable of the job")
    @argument(
        "--graceful-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds between the graceful-shutdown signal and SIGKILL on cancel",
    )
    @argument(
        "--async",
        dest="async_",
        action="store_true",
        help="return at once; the widget keeps updating; results load on handle.result()",
    )
    @argument("-o", dest="handle", default=None, metavar="NAME", help="store the job handle in NAME")
    @argument(
        "--endpoint", default=None, help="job server endpoint host:port (default: settings, then local)"
    )
    @argument("--project", default=None, help="project id")
    @argument("--quiet", action="store_true", help="no widget and no status lines; only the job's output")
    @cell_magic
    def ds_job(self, line: str, cell: str) -> DsJob | None:
        """Run this cell as a job; its variables come back into the namespace.

        The names the cell reads that exist here are sent (cloudpickle), the names it assigns
        come back; local modules it imports are shipped and installed packages it uses are
        pinned. What the job prints appears live under the cell.
        """
        args = self._parse("ds_job", line)
        job = self._submit(args, cell)
        if job is None:
            return None
        if args.async_:
            job.run_in_background()
            return job if args.handle is None else None
        job.run()
        job._finish(load=True)
        return None

    def _options(self, args: Any) -> CellJobOptions:
        settings = self._settings()
        d: Mapping[str, Any] = settings.defaults or {}
        instance = args.instance_type
        if not instance:
            default_type = d.get("instance_type") or d.get("cloud_instance_type")
            instance = [default_type] if default_type else []
        return CellJobOptions(
            inputs=_csv(args.inputs),
            outputs=_csv(args.outputs),
            no_outputs=args.no_outputs,
            files=[celljob.parse_file_spec(f) for f in args.file],
            output_files=list(args.output_file),
            requirements=args.requirements or str(d.get("requirements") or "auto"),
            pip=list(args.pip),
            python=args.python or d.get("python"),
            env=celljob.parse_env(args.env),
            instance_types=list(instance),
            graceful_timeout=args.graceful_timeout
            if args.graceful_timeout is not None
            else d.get("graceful_timeout"),
            search_path=[self._notebook_dir(), *[Path(p) for p in sys.path[:1] if p]],
        )

    def _submit(self, args: Any, cell: str) -> DsJob | None:
        assert self.shell is not None
        if not cell.strip():
            raise InvalidArgument("the %%ds_job cell is empty")
        opts = self._options(args)
        cj = celljob.build_cell_job(cell, self._user_namespace(), opts)
        try:
            client = self.get_client(args.endpoint, args.project)
            name = args.name or (cj.outputs[0] if cj.outputs else "cell")
            holder: list[DsJob] = []

            def on_cancel() -> None:
                if holder:
                    holder[0].cancel(graceful=True)

            view = make_view(name, quiet=args.quiet, on_cancel=on_cancel)
            job_id = client.create(cj.params, cj.files, name=name, desc=args.desc or "", config=cell)
        finally:
            cj.cleanup()
        job = DsJob(
            client, job_id, shell=self.shell, view=view, name=name, cell=cj, output_dir=self._notebook_dir()
        )
        holder.append(job)
        self.jobs[job_id] = job
        if args.handle:
            self.shell.user_ns[args.handle] = job
        view.started(job_id)
        job.start_logs()
        job._op = client.execute(job_id)
        return job

    # -- line magics ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("--limit", type=int, default=20, help="how many jobs (most recent first)")
    @argument("--project", default=None, help="project id")
    @argument("--endpoint", default=None, help="job server endpoint")
    @line_magic
    def ds_jobs(self, line: str) -> None:
        """Show recent jobs as a table, with their status."""
        args = self._parse("ds_jobs", line)
        client = self.get_client(args.endpoint, args.project)
        jobs = list(client.list(project_id=args.project, limit=args.limit, page_size=min(100, args.limit)))
        rows = []
        for j in jobs:
            created = (
                j.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if j.HasField("created_at") else ""
            )
            dur = ""
            if j.HasField("finished_at") and j.HasField("created_at"):
                dur = format_duration((j.finished_at.ToNanoseconds() - j.created_at.ToNanoseconds()) / 1e9)
            rows.append((j.id, j.name, _status_name(j.status), created, dur, j.status_details))
        _display_table(["job id", "name", "status", "created", "duration", "details"], rows)

    @magic_arguments()
    @argument("job_id", help="the job to attach to")
    @argument("-o", dest="handle", default=None, metavar="NAME", help="store the job handle in NAME")
    @argument("--no-outputs", action="store_true", help="do not load the job's variables")
    @argument("--endpoint", default=None, help="job server endpoint")
    @argument("--project", default=None, help="project id")
    @argument("--quiet", action="store_true", help="no widget and no status lines")
    @line_magic
    def ds_job_attach(self, line: str) -> None:
        """Reattach to a job: live logs (from the start), then its results into the namespace."""
        args = self._parse("ds_job_attach", line)
        assert self.shell is not None
        client = self.get_client(args.endpoint, args.project)
        existing = self.jobs.get(args.job_id)
        if existing is not None and existing._waiter is not None:
            existing.result()
            return
        j = client.get(args.job_id)
        holder: list[DsJob] = []

        def on_cancel() -> None:
            if holder:
                holder[0].cancel(graceful=True)

        view = make_view(j.name, quiet=args.quiet, on_cancel=on_cancel)
        job = DsJob(client, j.id, shell=self.shell, view=view, name=j.name, output_dir=self._notebook_dir())
        holder.append(job)
        self.jobs[j.id] = job
        if args.handle:
            self.shell.user_ns[args.handle] = job
        view.started(j.id)
        job._set_status(j.status, j.status_details)
        job.start_logs()
        job.run()
        job._finish(load=not args.no_outputs)

    @magic_arguments()
    @argument("job_id", help="the job to cancel")
    @argument("--graceful", action="store_true", help="send the graceful-shutdown signal first")
    @argument("--endpoint", default=None, help="job server endpoint")
    @argument("--project", default=None, help="project id")
    @line_magic
    def ds_job_cancel(self, line: str) -> None:
        """Cancel a job."""
        args = self._parse("ds_job_cancel", line)
        client = self.get_client(args.endpoint, args.project)
        client.cancel(args.job_id, graceful=args.graceful, reason="cancelled with %ds_job_cancel")
        print(f"ds_job: cancel requested for job {args.job_id}")

    @magic_arguments()
    @argument("job_id", help="the job whose logs to show")
    @argument("--endpoint", default=None, help="job server endpoint")
    @argument("--project", default=None, help="project id")
    @line_magic
    def ds_job_logs(self, line: str) -> None:
        """Print a job's stdout and stderr (following them while it runs; Ctrl-C stops)."""
        args = self._parse("ds_job_logs", line)
        client = self.get_client(args.endpoint, args.project)

        def on_message(m: Any) -> None:
            if m.WhichOneof("source") == "file_path":
                return
            stream = sys.stderr if m.standard_stream == 2 else sys.stdout
            stream.write(m.content.decode("utf-8", "replace"))
            stream.flush()

        with contextlib.suppress(KeyboardInterrupt):
            client.follow_logs(args.job_id, on_message)

    @line_magic
    def ds_config(self, line: str) -> None:
        """Show or set the settings, persisted per user.

        ``%ds_config`` shows them; ``%ds_config KEY=VALUE ...`` sets ``endpoint``, ``project``,
        ``token``, ``operation_endpoint`` or ``defaults.NAME`` (e.g. ``defaults.instance_type=g1.1``,
        ``defaults.requirements=none``); an empty value unsets it.
        """
        from jupyter_ds_jobs.core.config import Settings, settings_path

        items = shlex.split(line)
        if items:
            s = Settings.load_file()
            for item in items:
                key, sep, value = item.partition("=")
                if not sep:
                    raise InvalidArgument(f"{item!r}: expected KEY=VALUE", field="%ds_config")
                if key.startswith("defaults."):
                    name = key.split(".", 1)[1]
                    if value:
                        s.defaults[name] = value
                    else:
                        s.defaults.pop(name, None)
                elif key in ("endpoint", "project", "operation_endpoint"):
                    setattr(s, key, value)
                elif key == "token":
                    s.token = value or None
                else:
                    raise InvalidArgument(
                        f"unknown setting {key!r}: endpoint, project, token, operation_endpoint, defaults.NAME",
                        field="%ds_config",
                    )
            path = s.save()
            self._clients.clear()
            print(f"ds_job: settings saved to {path}")
        s = Settings.load()
        print(f"settings file: {settings_path()}")
        for key, value in s.public().items():
            if key == "defaults":
                for dk, dv in sorted((value or {}).items()):
                    print(f"  defaults.{dk} = {dv}")
            else:
                print(f"  {key} = {value if value not in (None, '') else '(not set)'}")
        if not s.endpoint:
            print("  (no endpoint: the embedded local job server is used, found or started)")


def _display_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from IPython.display import display

    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    text = "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in [header, *rows]
    )
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    bundle = {"text/plain": text or "(no jobs)", "text/html": f"<table><tr>{cells}</tr>{body}</table>"}
    display(bundle, raw=True)  # type: ignore[no-untyped-call]


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext jupyter_ds_jobs``."""
    ipython.register_magics(DsJobsMagics(ipython))
