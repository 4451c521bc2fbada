"""Run a whole notebook as a job from Python: :func:`run_notebook` (also ``jupyter_ds_jobs.run_notebook``).

::

    from jupyter_ds_jobs import run_notebook

    run = run_notebook("report.ipynb", parameters={"alpha": 0.5, "regions": ["eu", "us"]})
    run.output_path      # report.executed.ipynb, beside the original
    run.notebook         # the executed notebook (nbformat.NotebookNode)
    run.files            # files the notebook wrote, now beside it

The notebook is packaged by :mod:`jupyter_ds_jobs.packaging.notebook` (parameters injected
papermill-style, cells analysed, refused naming the cell before anything is sent) and runs on the
job server of :meth:`JobsClient.connect` (the embedded local one by default). The job's output
(each line prefixed ``[cell N]``) is printed live unless ``quiet`` or ``on_log`` says otherwise.
A failing cell raises :class:`~jupyter_ds_jobs.common.errors.JobFailed` naming the cell (unless
``raise_on_error=False``); the executed notebook shows where it stopped either way.
"""

from __future__ import annotations

import codecs
import contextlib
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, pjs_pb2
from jupyter_ds_jobs.common.errors import InvalidArgument, JobFailed
from jupyter_ds_jobs.common.origin import parse_origin
from jupyter_ds_jobs.core.client import ExecuteResult, JobsClient
from jupyter_ds_jobs.core.logfollow import LogFollower, OnMessage
from jupyter_ds_jobs.packaging.nbfolder import NotebookResult, place_results
from jupyter_ds_jobs.packaging.notebook import (
    NotebookJob,
    NotebookJobOptions,
    build_notebook_job,
    default_output_path,
    executed_name,
)

__all__ = ["NotebookRun", "run_notebook"]

OnProgress = Callable[[jobs_pb2.Job, jobs_pb2.JobProgress | None], None]


class _Printer:
    """Job stdout / stderr to this process's, decoded incrementally (a UTF-8 character may span chunks)."""

    def __init__(self) -> None:
        self._dec = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in (pjs_pb2.OUT, pjs_pb2.ERR)}

    def __call__(self, m: pjs_pb2.LogMessage) -> None:
        if m.WhichOneof("source") == "file_path":
            return
        stream = sys.stderr if m.standard_stream == pjs_pb2.ERR else sys.stdout
        stream.write(self._dec[pjs_pb2.ERR if stream is sys.stderr else pjs_pb2.OUT].decode(m.content))
        stream.flush()


class NotebookRun:
    """A notebook running (or run) as a job: ``job_id``, ``status``, ``wait()``, ``result()``,
    ``notebook`` (the executed ``NotebookNode``), ``output_path``, ``files``, ``error``, ``cancel()``."""

    def __init__(
        self,
        client: JobsClient,
        job_id: str,
        *,
        path: Path,
        output: Path | None = None,
        job: NotebookJob | None = None,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.path = Path(path)
        """The notebook (as run)."""
        self.output_path = Path(output) if output is not None else default_output_path(self.path)
        """Where the executed notebook goes."""
        self.job = job
        self.status = "CREATED"
        self.return_code: int | None = None
        self.execute_result: ExecuteResult | None = None
        self.outputs: NotebookResult | None = None
        self._owns_client = owns_client
        self._op: op_pb2.Operation | None = None
        self._logs: LogFollower | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<NotebookRun {self.path.name} {self.job_id} {self.status.lower()}>"

    @classmethod
    def attach(
        cls, job_id: str, *, client: JobsClient | None = None, output: Path | None = None
    ) -> NotebookRun:
        """The run of an existing notebook job (e.g. started with ``wait=False`` or ``--async``),
        its notebook read from the job's origin line."""
        c = client or JobsClient.connect()
        origin = parse_origin(c.get(job_id).desc)
        if origin is None or not origin.notebook:
            raise InvalidArgument(f"job {job_id} does not say which notebook it ran (no origin in its desc)")
        return cls(c, job_id, path=Path(origin.notebook), output=output, owns_client=client is None)

    # -- running --------------------------------------------------------------------------------
    def start(self, on_log: OnMessage | None = None) -> NotebookRun:
        """Execute the job (or get its running execution); follow its logs into ``on_log``."""
        self._op = self.client.execute(self.job_id)
        if on_log is not None:
            self._logs = self.client.logs_thread(self.job_id, on_log, 0)
        return self

    def wait(self, timeout: float | None = None, *, on_progress: OnProgress | None = None) -> str:
        """Wait for the end, bring the executed notebook and the files back; the status name."""
        with self._lock:
            if self.execute_result is None:
                wake = self._logs.done if self._logs is not None else None
                res = self.client.wait(
                    self.job_id, self._op, on_progress=on_progress, timeout=timeout, wake=wake
                )
                if self._logs is not None and not self._logs.join(10.0):
                    self._logs.stop()
                self.fetch(res)
        return self.status

    def fetch(self, result: ExecuteResult | None = None) -> NotebookResult:
        """Download the finished job's outputs and put them in place (see :func:`place_results`)."""
        if result is not None:
            self.execute_result = result
            self.status, self.return_code = result.status, result.return_code
        base = self.path.parent
        staging = Path(tempfile.mkdtemp(prefix=".ds-notebook-", dir=base if base.is_dir() else None))
        try:
            if result is not None:
                self.client.download_result(result, staging)
            else:
                job = self.client.get(self.job_id)
                from jupyter_ds_jobs.common.contract import status_name

                self.status = status_name(job.status)
                self.client.download(self.job_id, list(job.output_files), staging)
            self.outputs = place_results(staging, executed_name(self.path), base, self.output_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.outputs

    def cancel(self, graceful: bool = False) -> None:
        self.client.cancel(self.job_id, graceful=graceful, reason="cancelled from run_notebook")

    def close(self) -> None:
        if self._logs is not None:
            self._logs.stop()
        if self._owns_client:
            self.client.close()

    # -- results --------------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS" and self.error is None

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"cell": "cell 7", "ename": ..., "evalue": ...}`` when a cell failed."""
        return self.outputs.error if self.outputs is not None else None

    @property
    def files(self) -> list[Path]:
        """The files the notebook wrote, now beside it."""
        return list(self.outputs.files) if self.outputs is not None else []

    @property
    def notebook(self) -> Any:
        """The executed notebook as an ``nbformat.NotebookNode`` (read from :attr:`output_path`)."""
        import nbformat

        if self.outputs is None or self.outputs.output is None:
            raise JobFailed(f"job {self.job_id} brought back no executed notebook (status {self.status})")
        read: Any = nbformat.read  # untyped
        return read(str(self.outputs.output), as_version=4)

    def failure(self) -> str:
        """One line saying why the run failed ("" when it did not)."""
        if self.ok:
            return ""
        where = (
            f" (the executed notebook: {self.outputs.output})" if self.outputs and self.outputs.output else ""
        )
        err = self.error
        if err is not None:
            return f"notebook {self.path.name} failed at {err.get('cell')}: {err.get('ename')}: {err.get('evalue')}{where}"
        rc = f", return code {self.return_code}" if self.return_code is not None else ""
        details = self.execute_result.job.status_details if self.execute_result is not None else ""
        return f"notebook job {self.job_id} ended {self.status}{rc}{': ' + details if details else ''}{where}"

    def result(self, timeout: float | None = None) -> Any:
        """Wait, then the executed notebook; raises ``JobFailed`` naming the failing cell."""
        self.wait(timeout)
        if not self.ok:
            job = self.execute_result.job if self.execute_result is not None else None
            raise JobFailed(self.failure(), job=job, return_code=self.return_code)
        return self.notebook


def run_notebook(
    path: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    output: str | Path | None = None,
    wait: bool = True,
    raise_on_error: bool = True,
    name: str | None = None,
    desc: str = "",
    instance_type: str | Sequence[str] = (),
    requirements: str = "auto",
    pip: Sequence[str] = (),
    python: str | None = None,
    files: Sequence[str | Path] = (),
    output_files: Sequence[str] = (),
    written_files: bool = True,
    env: Mapping[str, str] | None = None,
    client: JobsClient | None = None,
    quiet: bool = False,
    on_log: OnMessage | None = None,
    on_progress: OnProgress | None = None,
    timeout: float | None = None,
) -> NotebookRun:
    """Run the notebook at ``path`` as a job with ``parameters``; see the module docstring.

    ``output`` (default: ``STEM.executed.ipynb`` beside it) receives the executed notebook; files
    the notebook writes come back beside it (``written_files=False``: not). ``wait=False`` returns
    once the job started (``run.wait()`` later). The other options are ``run-notebook``'s.
    """
    nb_path = Path(path).expanduser().absolute()
    out = Path(output).expanduser().absolute() if output is not None else default_output_path(nb_path)
    if out == nb_path:
        raise InvalidArgument("the executed notebook must not replace the original", field="output")
    opts = NotebookJobOptions(
        parameters=dict(parameters or {}),
        name=name,
        desc=desc,
        instance_types=[instance_type] if isinstance(instance_type, str) else list(instance_type),
        requirements=requirements,
        pip=list(pip),
        python=python,
        files=[Path(f) for f in files],
        output_files=list(output_files),
        written_files=written_files,
        env=dict(env or {}),
    )
    job = build_notebook_job(nb_path, opts)
    c = client or JobsClient.connect()
    try:
        job_id = c.create_from_spec(job)
    except BaseException:
        if client is None:
            c.close()
        raise
    finally:
        job.cleanup()
    run = NotebookRun(c, job_id, path=nb_path, output=out, job=job, owns_client=client is None)
    run.start(on_log if on_log is not None or quiet else _Printer())
    if not wait:
        return run
    try:
        run.wait(timeout, on_progress=on_progress)
    finally:
        with contextlib.suppress(Exception):
            run.close()
    if raise_on_error and not run.ok:
        job_msg = run.execute_result.job if run.execute_result is not None else None
        raise JobFailed(run.failure(), job=job_msg, return_code=run.return_code)
    return run
