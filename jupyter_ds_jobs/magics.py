"""IPython magics: ``%%ds_job`` runs a notebook cell as a job, ``%ds_run_notebook`` a whole
notebook; ``%ds_jobs``, ``%ds_job_attach``, ``%ds_job_cancel``, ``%ds_job_logs`` and
``%ds_config`` manage jobs and settings.

Load with ``%load_ext jupyter_ds_jobs``. See ``docs/magics.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core import magic_arguments as _margs
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from jupyter_ds_jobs._proto import pjs_pb2
from jupyter_ds_jobs.common.connection import server_alive
from jupyter_ds_jobs.common.contract import status_name
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.handle import DsJob
from jupyter_ds_jobs.packaging import celljob
from jupyter_ds_jobs.packaging.celljob import CellJobOptions
from jupyter_ds_jobs.widgets import format_duration, make_view

if TYPE_CHECKING:
    import argparse

    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.core.config import Settings
    from jupyter_ds_jobs.notebooks import NotebookRun

__all__ = ["DsJob", "DsJobsMagics", "load_ipython_extension"]

_F = TypeVar("_F", bound=Callable[..., Any])


# IPython's magic_arguments is untyped: typed aliases
def argument(*args: Any, **kwargs: Any) -> Callable[[_F], _F]:
    return _margs.argument(*args, **kwargs)  # type: ignore[no-any-return,no-untyped-call]


def magic_arguments() -> Callable[[_F], _F]:
    return _margs.magic_arguments()  # type: ignore[no-any-return,no-untyped-call]


def parse_argstring(magic_func: Any, argstring: str) -> Any:
    return _margs.parse_argstring(magic_func, argstring)  # type: ignore[no-untyped-call]


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
        self._clients: dict[tuple[str, str, str], JobsClient] = {}
        #: The pid of the embedded server each cached client talks to: a client of a server that
        #: has died is dropped, and the next call finds or starts a new server.
        self._server_pids: dict[tuple[str, str, str], int] = {}
        self.jobs: dict[str, DsJob] = {}
        #: When set, used instead of connecting (tests, embedding).
        self.client: JobsClient | None = None
        #: The kernel's working directory when the extension loaded (see ``_notebook_dir``).
        self._start_dir = Path.cwd()

    def _parse(self, magic: str, line: str) -> argparse.Namespace:
        args: argparse.Namespace = parse_argstring(getattr(self, magic), line)
        return args

    # -- connection ----------------------------------------------------------------------------
    def _settings(self) -> Settings:
        from jupyter_ds_jobs.core.config import Settings

        return Settings.load()

    def get_client(
        self,
        endpoint: str | None = None,
        project: str | None = None,
        *,
        note: Callable[[str], None] | None = None,
    ) -> JobsClient:
        """A connected ``JobsClient`` (cached): explicit > settings/env > embedded local server.

        With no endpoint anywhere, the embedded local server is found or started (detached; a few
        seconds at most) and, once per client, one line says where it is: to ``note`` (a view's,
        shown before the job's logs), else printed on stdout.
        """
        if self.client is not None and not endpoint and not project:
            return self.client
        settings = self._settings()
        key = (endpoint or "", project or "", os.environ.get("DS_JOBS_TOKEN", ""))
        client = self._clients.get(key)
        pid = self._server_pids.get(key)
        if client is not None and pid is not None and not server_alive(pid):
            client.close()
            del self._clients[key], self._server_pids[key]
            client = None
        if client is None:
            from jupyter_ds_jobs.core.client import JobsClient
            from jupyter_ds_jobs.core.embedded import find_server

            local = not (endpoint or settings.endpoint)
            found = find_server() if local else None
            client = JobsClient.connect(endpoint or None, project_id=project or None, settings=settings)
            if local:
                info = found or find_server()
                how = "found" if found is not None else "started"
                state = f"; state in {info.state_dir}" if info is not None else ""
                if info is not None:
                    self._server_pids[key] = info.pid
                message = f"local job server at {client.endpoint} ({how}{state})"
                if note is not None:
                    note(message)
                else:
                    print(f"ds_job: {message}")
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
        """Where ``--file`` / ``--requirements`` paths and local modules are looked for and output
        files come back: the notebook's own directory when the kernel knows it, else the current
        working directory (what a relative ``open()`` in the cell would use).

        jupyter_server starts a notebook's kernel with ``JPY_SESSION_NAME``: the notebook's absolute
        path when the frontend names the session (JupyterLab, Notebook 7), else its API path
        relative to the server root; and with the notebook's directory as the working directory.
        So ``%cd`` does not move it, and a relative value is resolved from the directory the
        kernel started in (the server root when the kernel started there).
        """
        session = os.environ.get("JPY_SESSION_NAME", "")
        if session:
            parent = Path(session).parent
            start = self._start_dir
            if parent.is_absolute():
                here = parent
            elif parent.parts and start.parts[-len(parent.parts) :] != parent.parts:
                here = start / parent  # started at the server root
            else:
                here = start  # started beside the notebook
            if here.is_dir():
                return here
        return Path.cwd()

    # -- %%ds_job ------------------------------------------------------------------------------
    @magic_arguments()
    @argument(
        "--name",
        default="",
        help="job name (default: the notebook's name and the cell's number, e.g. 'train [3]')",
    )
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
        "--no-input-files",
        action="store_true",
        help="do not send the files the cell reads by literal relative path (sent by default)",
    )
    @argument(
        "--no-output-files",
        action="store_true",
        help="do not bring back the files the cell writes by literal relative path (brought back by default)",
    )
    @argument(
        "--max-output-file-size",
        default=None,
        metavar="SIZE",
        help="files the job writes come back up to SIZE each (default 100M; K, M, G); larger ones stay with the job",
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

    def _options(self, args: argparse.Namespace) -> CellJobOptions:
        """The options of ``%%ds_job``, then the settings' defaults; local paths from the notebook's
        directory (``_notebook_dir``)."""
        d = self._settings().defaults
        here = self._notebook_dir()
        instance: list[str] = args.instance_type or ([d.instance_type] if d.instance_type else [])
        requirements: str = args.requirements or d.requirements or "auto"
        if requirements not in ("auto", "none"):
            requirements = str(here / Path(requirements).expanduser())
        files = [celljob.parse_file_spec(f) for f in args.file]
        cap = celljob.DEFAULT_MAX_OUTPUT_FILE_BYTES
        if args.max_output_file_size is not None:
            from jupyter_ds_jobs.cli.console import parse_size  # the CLI's, for the same spelling

            cap = parse_size(args.max_output_file_size)
            if cap < 0:
                raise InvalidArgument("must be a size >= 0", field="--max-output-file-size")
        return CellJobOptions(
            inputs=_csv(args.inputs),
            outputs=_csv(args.outputs),
            no_outputs=args.no_outputs,
            files=[(here / path.expanduser(), var) for path, var in files],
            output_files=list(args.output_file),
            requirements=requirements,
            pip=list(args.pip),
            python=args.python or d.python,
            env=celljob.parse_env(args.env),
            instance_types=instance,
            graceful_timeout=args.graceful_timeout
            if args.graceful_timeout is not None
            else d.graceful_timeout,
            search_path=[here, *[Path(p) for p in sys.path[:1] if p]],
            base_dir=here,
            read_files=not args.no_input_files,
            written_files=not args.no_output_files,
            max_output_file_bytes=cap,
        )

    def _submit(self, args: argparse.Namespace, cell: str) -> DsJob | None:
        assert self.shell is not None
        if not cell.strip():
            raise InvalidArgument("the %%ds_job cell is empty")
        opts = self._options(args)
        cj = celljob.build_cell_job(cell, self._user_namespace(), opts)
        try:
            notes: list[str] = []
            client = self.get_client(args.endpoint, args.project, note=notes.append)
            from jupyter_ds_jobs.common.origin import with_origin
            from jupyter_ds_jobs.handle import cell_origin, default_job_name

            name = args.name or default_job_name(self.shell)
            holder: list[DsJob] = []

            def on_cancel() -> None:
                if holder:
                    holder[0].cancel(graceful=True)

            view = make_view(name, quiet=args.quiet, on_cancel=on_cancel)
            for text in notes:
                view.note(text)
            defaults = self._settings().defaults
            desc = with_origin(args.desc or "", cell_origin(self.shell, self._notebook_dir()))
            job_id = client.create(
                cj.params, cj.files, name=name, desc=desc, config=cell, data_ttl=defaults.data_ttl
            )
            if defaults.keep_data_forever:  # Create cannot say "forever"; SetDataTtl without a ttl does
                client.set_data_ttl(job_id, None)
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

    # -- %ds_run_notebook ----------------------------------------------------------------------
    @magic_arguments()
    @argument("path", help="the notebook to run (a relative path: beside this notebook)")
    @argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter (repeatable); VALUE is a Python literal, YAML true/false/null or [..]/{..}, else a string",
    )
    @argument(
        "-f",
        "--parameters-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML file of parameters",
    )
    @argument(
        "--output",
        default=None,
        metavar="PATH",
        help="the executed notebook (default: STEM.executed.ipynb beside it)",
    )
    @argument("--name", default=None, help="job name (default: the notebook's name)")
    @argument("--desc", default="", help="job description (where it came from is added to it)")
    @argument(
        "--instance-type", action="append", default=None, metavar="T", help="instance type (repeatable)"
    )
    @argument(
        "--requirements", default=None, metavar="auto|none|FILE", help="pinned requirements (default: auto)"
    )
    @argument("--pip", action="append", default=[], metavar="SPEC", help="extra requirement (repeatable)")
    @argument("--python", default=None, metavar="VERSION", help="the job's Python (default: the kernel's)")
    @argument("--file", action="append", default=[], metavar="PATH", help="extra input file or directory")
    @argument(
        "--output-file",
        action="append",
        default=[],
        metavar="PATH",
        help="a file it writes, always brought back",
    )
    @argument("--no-output-files", action="store_true", help="bring back only the executed notebook")
    @argument("--env", action="append", default=[], metavar="K=V", help="environment variable of the job")
    @argument("--async", dest="async_", action="store_true", help="return at once; the view keeps updating")
    @argument("-o", dest="handle", default=None, metavar="NAME", help="store the run (NotebookRun) in NAME")
    @argument(
        "--endpoint", default=None, help="job server endpoint host:port (default: settings, then local)"
    )
    @argument("--project", default=None, help="project id")
    @argument("--quiet", action="store_true", help="no widget and no status lines; only the job's output")
    @line_magic
    def ds_run_notebook(self, line: str) -> NotebookRun | None:
        """Run a whole notebook as a job, with parameters, and get it back executed.

        ``%ds_run_notebook report.ipynb -p alpha 0.5 -p regions "['eu', 'us']"``: the same live
        view as ``%%ds_job`` (each cell's output, "cell 4 of 12"); the executed notebook comes back
        (``--output``, default ``STEM.executed.ipynb`` beside it) with the files it wrote. A failing
        cell raises ``JobFailed`` naming it. The line is split as a shell splits it, ``{var}``
        expanded by IPython first.
        """
        from jupyter_ds_jobs.notebook_magic import run_notebook_magic

        func: Any = getattr(self, "ds_run_notebook")  # noqa: B009 - the magic's parser, untyped
        return run_notebook_magic(self, func.parser.parse_args(shlex.split(line)))

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
        jobs = list(client.list_jobs(args.project, limit=args.limit, page_size=min(100, args.limit)))
        rows = []
        for j in jobs:
            created = (
                j.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if j.HasField("created_at") else ""
            )
            dur = ""
            if j.HasField("finished_at") and j.HasField("created_at"):
                dur = format_duration((j.finished_at.ToNanoseconds() - j.created_at.ToNanoseconds()) / 1e9)
            rows.append((j.id, j.name, status_name(j.status), created, dur, j.status_details))
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
        notes: list[str] = []
        client = self.get_client(args.endpoint, args.project, note=notes.append)
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
        for text in notes:
            view.note(text)
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

        def on_message(m: pjs_pb2.LogMessage) -> None:
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

        ``%ds_config`` shows them (typed); ``%ds_config KEY=VALUE ...`` sets ``endpoint``,
        ``project``, ``token``, ``operation_endpoint`` or a known ``defaults.NAME``:
        ``instance_type``, ``requirements``, ``python``, ``graceful_timeout``, ``data_ttl_days``
        (e.g. ``defaults.instance_type=g1.1 defaults.graceful_timeout=30``). Values are checked
        before anything is saved; an empty value unsets.
        """
        from jupyter_ds_jobs.core.config import Settings, settings_path

        items = shlex.split(line)
        if items:
            changes: dict[str, str] = {}
            for item in items:
                key, sep, value = item.partition("=")
                if not sep:
                    raise InvalidArgument(f"{item!r}: expected KEY=VALUE", field="%ds_config")
                changes[key.strip()] = value
            path = Settings.update_file(changes)
            self._clients.clear()
            print(f"ds_job: settings saved to {path}")
        s = Settings.load()
        print(f"settings file: {settings_path()}")
        for key, value in s.shown():
            print(f"  {key} = {value}")
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
