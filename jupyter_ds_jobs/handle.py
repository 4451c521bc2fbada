"""The handle of a job started by ``%%ds_job`` or reattached by ``%ds_job_attach``: it follows the
job's logs and progress into a view, waits (Ctrl-C or the view's Cancel button cancels), and loads
the results into the kernel. :func:`default_job_name` names a cell's job, :func:`cell_origin` says
where it came from (the line :mod:`~jupyter_ds_jobs.common.origin` appends to its ``desc``);
:func:`watch_notebook_run` gives a whole notebook's job (``%ds_run_notebook``) the same view."""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.interactiveshell import InteractiveShell

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, pjs_pb2
from jupyter_ds_jobs.common.contract import status_name
from jupyter_ds_jobs.common.errors import DsJobsError, JobFailed, Unavailable
from jupyter_ds_jobs.common.origin import Origin
from jupyter_ds_jobs.core.client import ExecuteResult, JobsClient
from jupyter_ds_jobs.core.logfollow import LogFollower
from jupyter_ds_jobs.packaging import celljob
from jupyter_ds_jobs.packaging.cellio import RemoteError
from jupyter_ds_jobs.packaging.celljob import CellJob
from jupyter_ds_jobs.packaging.runner import ERROR_FILE, OUTPUTS_DIR, OUTPUTS_MANIFEST, OUTPUTS_ZIP
from jupyter_ds_jobs.widgets import JobView, Summary, TextView

if TYPE_CHECKING:
    from jupyter_ds_jobs.notebooks import NotebookRun

__all__ = ["DsJob", "cell_origin", "default_job_name", "notebook_path", "watch_notebook_run"]

_TAIL_LINES = 20
_SYSTEM_SHOWN = re.compile(r"environment|error|cancel|SIGKILL|signal|waiting for a free slot", re.I)


def default_job_name(shell: InteractiveShell | None) -> str:
    """``quickstart [3]``: the notebook's name and the running cell's number where known, else
    ``cell`` (``cell [3]`` with a number alone).

    The notebook is the one VS Code names in ``__vsc_ipynb_file__`` or the Jupyter server session
    in ``JPY_SESSION_NAME`` (ipykernel copies it to ``__session__``); the number is the cell's
    execution count while IPython runs it.
    """
    path = notebook_path(shell)
    number = _execution_count(shell)
    return (Path(path).stem if path else "cell") + (f" [{number}]" if number is not None else "")


def notebook_path(shell: InteractiveShell | None) -> str:
    """The notebook the kernel runs, as it knows it: VS Code's ``__vsc_ipynb_file__``, else the
    Jupyter server session's ``JPY_SESSION_NAME`` (also in ``__session__``); ``""`` when unknown."""
    ns = shell.user_ns if shell is not None else {}
    for path in (ns.get("__vsc_ipynb_file__"), ns.get("__session__"), os.environ.get("JPY_SESSION_NAME")):
        if isinstance(path, str) and path.endswith(".ipynb"):
            return path
    return ""


def _execution_count(shell: InteractiveShell | None) -> int | None:
    running = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    number = getattr(running, "execution_count", None)
    return number if isinstance(number, int) else None


def cell_origin(shell: InteractiveShell | None, notebook_dir: Path | None = None) -> Origin:
    """Where the running cell is: the notebook (absolute when ``notebook_dir`` holds a notebook
    known by a relative path), its execution count and the cell id the frontend sent."""
    path = notebook_path(shell)
    if path and notebook_dir is not None and not Path(path).is_absolute():
        beside = Path(notebook_dir) / Path(path).name
        path = str(beside) if beside.is_file() else path
    cell_id = ""
    kernel = getattr(shell, "kernel", None)
    get_parent = getattr(kernel, "get_parent", None)
    with contextlib.suppress(Exception):  # any kernel (or none): the id is a nicety
        parent = get_parent("shell") if get_parent is not None else getattr(shell, "parent_header", None)
        metadata = parent.get("metadata") if isinstance(parent, dict) else None
        found = metadata.get("cellId") if isinstance(metadata, dict) else None
        cell_id = found if isinstance(found, str) else ""
    return Origin(notebook=path, count=_execution_count(shell), cell_id=cell_id)


class DsJob:
    """A job started by ``%%ds_job`` or reattached by ``%ds_job_attach``.

    ``result()`` waits for the end and loads the cell's variables into the namespace (once),
    raising the remote exception when the cell failed; ``cancel()`` cancels the job; ``status``
    is the last known status name; ``logs`` the last lines of output.
    """

    def __init__(
        self,
        client: JobsClient,
        job_id: str,
        *,
        shell: InteractiveShell | None,
        view: JobView,
        name: str = "",
        cell: CellJob | None = None,
        output_dir: Path | None = None,
        op: op_pb2.Operation | None = None,
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
        #: Output files over the cap, left with the job: ``{path: why}``.
        self.files_left: dict[str, str] = {}
        #: The runner's own files that a successful job did not bring back: ``{path: why}`` (the
        #: runner writes every one it declares, so each is a real problem, e.g. ``os._exit``).
        self.runner_file_errors: dict[str, str] = {}
        self.unpicklable: dict[str, str] = {}
        self.error: BaseException | None = None
        self._op = op
        self._t0 = time.monotonic()
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._decoders = {
            False: codecs.getincrementaldecoder("utf-8")("replace"),
            True: codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._logs: LogFollower | None = None
        self._done = threading.Event()
        self._loaded = False
        self._finish_lock = threading.Lock()
        self._wait_error: BaseException | None = None
        self._result: ExecuteResult | None = None
        self._waiter: threading.Thread | None = None
        self._cancel_requested = 0
        self._interrupted = False

    def __repr__(self) -> str:
        return f"<DsJob {self.name + ' ' if self.name else ''}{self.job_id} {self.status.lower()}>"

    # -- logs ----------------------------------------------------------------------------------
    def _on_log(self, m: pjs_pb2.LogMessage) -> None:
        source = m.WhichOneof("source")
        if source == "file_path":
            text = m.content.decode("utf-8", "replace").rstrip("\n")
            if self.cell is not None and any(
                f"{p!r} was not created" in text for p in self.cell.written_files
            ):
                return  # a write the analysis found on a path the cell did not take
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
    def _on_progress(self, job: jobs_pb2.Job, progress: jobs_pb2.JobProgress | None) -> None:
        self._set_status(job.status, job.status_details)
        if progress is not None:
            self.view.progress(progress.message, int(progress.progress))

    def _set_status(self, status: int, details: str = "") -> None:
        name = status_name(status)
        if name != self.status or details:
            self.status = name
            self.view.status(name, details)

    def _wait_interruptible(self, interruptible: bool) -> ExecuteResult:
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
                self._interrupted = True
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
        except Unavailable as e:  # the job server went away (killed, stopped) or stopped answering
            self._wait_error = self._lost_server(e)
        except BaseException as e:
            self._wait_error = e
        finally:
            self._stop_logs()
            if self._result is not None:
                job = self._result.job
                self._set_status(job.status, job.status_details)
                self.return_code = self._result.return_code
            self._done.set()

    def _lost_server(self, e: Unavailable) -> Unavailable:
        """The error a cell raises when its job server goes away: it names the job and what next."""
        job = f"job {self.job_id}" + (f" ({self.name})" if self.name else "")
        return Unavailable(
            f"lost the job server while waiting for {job}: {e}. The job cannot finish without its "
            "server: once a server runs again on its state dir (`jupyter ds-jobs server`, or a "
            f"%%ds_job in a new kernel) it reports the job ERROR; `%ds_job_attach {self.job_id}` in a "
            "new kernel shows it"
        )

    def run(self, *, interruptible: bool = True) -> None:
        """Wait for the job in this thread (Ctrl-C cancels it and raises KeyboardInterrupt; a
        :meth:`cancel` meanwhile, e.g. the view's Cancel button, ends the wait quietly)."""
        self._run_to_end(interruptible)
        if self._cancel_requested and self.status == "CANCELLED":
            self._finish(load=False)
            if self._interrupted:
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
        self.view.note("cancelling the job" + (" gracefully" if graceful else ""))
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
        error = f"error: {self._wait_error}" if self._wait_error else ""
        try:
            if self._wait_error is None:
                self._download_and_load(load)
        except DsJobsError as e:
            message = f"could not bring the results back: {e}"
            self.error = self.error or e
        finally:
            problems = [*self.runner_file_errors.values(), *self.files_left.values()]
            self.view.finished(
                Summary(
                    status=self.status,
                    return_code=self.return_code,
                    duration_s=time.monotonic() - self._t0,
                    variables=list(self.values),
                    files=[str(p) for p in self.files],
                    unpicklable=self.unpicklable,
                    message="\n".join(filter(None, [*problems, message or error])),
                )
            )
            self.view.close()

    def _download_and_load(self, load: bool) -> None:
        ours_p = celljob.is_cell_output
        result = self._result
        if result is not None and result.output_files:  # the URLs came with the operation
            storage = list(result.output_files)
            errors = list(result.file_errors)
            ours_s = [sf for sf in storage if ours_p(sf.file.desc.path)]
            user_s = [sf for sf in storage if not ours_p(sf.file.desc.path)]
            ours: list[jobs_pb2.StorageFile] | list[jobs_pb2.File] = ours_s
            user: list[jobs_pb2.StorageFile] | list[jobs_pb2.File] = user_s

            def fetch(items: Any, dest: Path, extract: bool) -> list[Path]:
                return list(self.client.download_storage_files(items, dest, extract=extract))
        else:  # ask the server for them
            job = self.client.get(self.job_id)
            files, errors = list(job.output_files), list(job.file_errors)
            ours = [f for f in files if ours_p(f.desc.path)]
            user = [f for f in files if not ours_p(f.desc.path)]

            def fetch(items: Any, dest: Path, extract: bool) -> list[Path]:
                return list(self.client.download(self.job_id, items, dest, extract=extract))

        tmp = Path(tempfile.mkdtemp(prefix="ds-job-results-"))
        try:
            got = fetch(ours, tmp, False) if ours else []
            by_name = {p.name: p for p in got}
            outputs = tmp / OUTPUTS_DIR if (tmp / OUTPUTS_DIR / OUTPUTS_MANIFEST).exists() else None
            res = celljob.load_cell_results(outputs or by_name.get(OUTPUTS_ZIP), by_name.get(ERROR_FILE))
            if self.status == "SUCCESS":
                self.runner_file_errors = _runner_file_errors(errors, bool(outputs or OUTPUTS_ZIP in by_name))
            self.unpicklable = res.unpicklable
            self.error = res.error
            user = self._within_cap(user)
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
        for why in [*self.runner_file_errors.values(), *self.files_left.values()]:
            print(f"ds_job: {why}", file=sys.stderr)

    def _within_cap(self, files: Any) -> Any:
        """``files`` (``File`` or ``StorageFile``) but those over the cap that were not named with
        ``--output-file``; those go to ``files_left``."""
        cap = (
            self.cell.max_output_file_bytes
            if self.cell is not None
            else celljob.DEFAULT_MAX_OUTPUT_FILE_BYTES
        )
        named = set(self.cell.output_files) if self.cell is not None else set()
        kept = []
        for item in files:
            f = item.file if isinstance(item, jobs_pb2.StorageFile) else item
            if cap is not None and f.size_bytes > cap and f.desc.path not in named:
                self.files_left[f.desc.path] = celljob.over_cap_message(
                    f.desc.path, f.size_bytes, cap, self.job_id
                )
            else:
                kept.append(item)
        return kept

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


def _runner_file_errors(errors: list[jobs_pb2.FileUploadError], outputs_came_back: bool) -> dict[str, str]:
    """``{path: why}`` of the errors about the cell runner's own files (not the user's) that are news.

    The runner writes every file it declares, so each is; but a file not found while the outputs
    manifest came back is one an older runner did not write (``_ds_error.json`` when the cell raised
    nothing, ``<name>.pkl`` for a variable that did not come back): no news then.
    """
    return {
        e.output_file_desc.path: e.description
        for e in errors
        if celljob.is_cell_output(e.output_file_desc.path)
        and not (outputs_came_back and e.type == jobs_pb2.FileUploadError.NOT_FOUND)
    }


def _with_remote_traceback(exc: BaseException, job_id: str) -> BaseException:
    """``exc`` shown by IPython as the remote traceback only (``_render_traceback_``)."""
    remote = exc if isinstance(exc, RemoteError) else exc.__cause__
    if isinstance(remote, RemoteError) and remote.formatted:
        lines = [f"Remote traceback (job {job_id}):", *remote.formatted.rstrip("\n").split("\n")]

        def render() -> list[str]:
            return lines

        with contextlib.suppress(AttributeError, TypeError):
            exc._render_traceback_ = render  # type: ignore[attr-defined]
    return exc


def watch_notebook_run(run: NotebookRun, view: JobView, *, interruptible: bool = True) -> None:
    """Follow a notebook's job (``run_notebook(..., wait=False)``) into ``view`` as ``%%ds_job``
    does a cell's: output, status and progress live; Ctrl-C cancels it gracefully, a second one
    kills it, then ``KeyboardInterrupt``; a cancel meanwhile (the view's button) ends it quietly.
    Then the executed notebook and the files it wrote come back (``run.wait()``, which whoever
    calls first does) and the summary names them."""
    feed = DsJob(run.client, run.job_id, shell=None, view=view, name=run.path.stem)
    feed.start_logs()
    feed._run_to_end(interruptible)  # its own wait: the view's progress whoever fetches the results
    message = f"error: {feed._wait_error}" if feed._wait_error is not None else ""
    try:
        if feed._wait_error is None:
            run.wait()
    except DsJobsError as e:
        message = f"could not bring the results back: {e}"
        raise
    finally:
        outputs = run.outputs
        failed = run.failure() if run.execute_result is not None else ""
        left = [
            f"{p!r} did not come back: over the size cap" for p in (outputs.files_left if outputs else [])
        ]
        view.finished(
            Summary(
                status=feed.status,
                return_code=feed.return_code,
                duration_s=time.monotonic() - feed._t0,
                files=([str(outputs.output)] if outputs is not None and outputs.output else [])
                + [str(p) for p in run.files],
                message="\n".join(filter(None, [message or failed, *left])),
            )
        )
        view.close()
    if feed._wait_error is not None:
        raise feed._wait_error
    if feed._interrupted and feed.status == "CANCELLED":
        raise KeyboardInterrupt(f"job {run.job_id} was cancelled")
