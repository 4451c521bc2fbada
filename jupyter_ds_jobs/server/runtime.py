"""The job manager: queue, prepare, run, collect, cancel.  Runs on the server's event loop.

Life of a job (statuses of ``JobStatus``)::

    CREATING ──Execute──▶ (waits for a slot in CREATING) ──▶ PREPARING ──▶ EXECUTING
        ──▶ UPLOADING_OUTPUT ──▶ SUCCESS | ERROR
    any running status ──Cancel──▶ CANCELLING ──▶ CANCELLED
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

import grpc

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.bundle import extract_as, safe_extract
from jupyter_ds_jobs.common.contract import (
    FINAL_STATUSES,
    LOCAL_MODULE_PREFIX,
    PROJECT_HOME,
    is_safe_relpath,
    status_name,
)
from jupyter_ds_jobs.common.errors import DsJobsError, FailedPrecondition, ResourceExhausted, rpc_code
from jupyter_ds_jobs.server.blobs import BlobStore
from jupyter_ds_jobs.server.environments import Environment, EnvironmentCache, EnvSpec
from jupyter_ds_jobs.server.executors import Executor, LocalExecutor, RunningProcess
from jupyter_ds_jobs.server.executors.base import PROGRESS_FILE, OutputSink
from jupyter_ds_jobs.server.logs import SOURCE_ERR, SOURCE_OUT, JobLog, LogStore
from jupyter_ds_jobs.server.outputs import store_dir, store_file
from jupyter_ds_jobs.server.resources import Allotment, Resources, watch_memory
from jupyter_ds_jobs.server.store import FileRef, Store
from jupyter_ds_jobs.server.substitute import substitute

__all__ = ["ABORTED_CODE", "CancelMode", "JobManager"]

log = logging.getLogger(__name__)

S = jobs_pb2
# google.rpc.Code values of an Execute operation's error
CANCELLED_CODE = rpc_code(grpc.StatusCode.CANCELLED)
ABORTED_CODE = rpc_code(grpc.StatusCode.ABORTED)
INTERNAL_CODE = rpc_code(grpc.StatusCode.INTERNAL)


class CancelMode(StrEnum):
    """How a run is being stopped (``_Run.cancel``; None while nobody stops it)."""

    GRACEFUL = "graceful"  # the job's shutdown signal, SIGKILL after its timeout
    HARD = "hard"  # SIGKILL now
    SHUTDOWN = "shutdown"  # the server stops: the job ends in ERROR, not CANCELLED


@dataclass
class _Run:
    job_id: str
    op_id: str
    task: asyncio.Task[None] | None = None
    proc: RunningProcess | None = None
    cancel: CancelMode | None = None
    cancel_reason: str = ""
    response: bytes | None = None
    environment: Environment | None = None
    allotment: Allotment | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def cancelled_details(self) -> str:
        return f"cancelled{': ' + self.cancel_reason if self.cancel_reason else ''}"


def place(workdir: Path, path: str, var: str, kind: str) -> Path:
    """Where an input or output file lives in the job's working dir (never outside it)."""
    if is_safe_relpath(path):
        dest = workdir / path
    else:  # absolute or '..' paths are allowed only with a var: keep them inside the job dir
        dest = workdir / f"_{kind}" / var / (PurePosixPath(path).name or var)
    real = Path(os.path.realpath(dest))
    if not real.is_relative_to(Path(os.path.realpath(workdir))):
        raise FailedPrecondition(f"path {path!r} escapes the job directory")
    return dest


class JobManager:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        logs: LogStore,
        jobs_root: Path,
        projects_root: Path,
        *,
        max_concurrent: int = 2,
        executor: Executor | None = None,
        environments: EnvironmentCache | None = None,
        work_root: Path | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.logs = logs
        self.jobs_root = jobs_root  # <id>/logs: the server's own
        self.work_root = work_root if work_root is not None else jobs_root.parent / "work"
        self.projects_root = projects_root
        self.max_concurrent = max(1, max_concurrent)
        self.executor: Executor = executor or LocalExecutor()
        self.environments = environments
        self.resources = resources
        self._runs: dict[str, _Run] = {}
        self._queue: list[str] = []
        self._active = 0
        self._slot = asyncio.Condition()

    # -- helpers ----------------------------------------------------------
    def workdir(self, job_id: str) -> Path:
        """The job's working dir, in a root of its own: nothing of the server's is near it."""
        return self.work_root / job_id

    def remove_job_dirs(self, job_id: str) -> None:
        """Remove the job's working dir and its logs dir (its data)."""
        for path in (self.workdir(job_id), self.jobs_root / job_id):
            shutil.rmtree(path, ignore_errors=True)

    def is_active(self, job_id: str) -> bool:
        return job_id in self._runs

    def _set_status(
        self,
        job_id: str,
        status: int,
        details: str | None = None,
        update: Callable[[jobs_pb2.Job], None] | None = None,
    ) -> None:
        """Move a job to ``status``: read, change and save with no await in between, so a
        concurrent RPC's change (SetDataTtl, say) is never overwritten by a stale copy."""
        job = self.store.get_job(job_id)
        if update is not None:
            update(job)
        job.status = status  # type: ignore[assignment]
        if details is not None:
            job.status_details = details
        if status == S.EXECUTING and not job.HasField("started_at"):
            job.started_at.GetCurrentTime()
        if status in FINAL_STATUSES:
            job.finished_at.GetCurrentTime()
        self.store.save_job(job)
        run = self._runs.get(job.id)
        if run is not None:
            self.store.touch_operation(run.op_id)

    def _progress(self, job_id: str, message: str, pct: int) -> None:
        p = jobs_pb2.JobProgress(message=message, progress=max(0, min(100, pct)))
        p.create_time.GetCurrentTime()
        self.store.set_progress(job_id, p)

    # -- public API -----------------------------------------------------------
    def submit(self, job_id: str, op_id: str) -> None:
        run = _Run(job_id, op_id)
        self._runs[job_id] = run
        self.logs.open(job_id)  # live before Execute answers, so followers never poll for it
        self._queue.append(job_id)
        self.store.set_execute_op(job_id, op_id)
        run.task = asyncio.ensure_future(self._lifecycle(run))

    async def cancel(self, job_id: str, graceful: bool, reason: str = "") -> None:
        run = self._runs.get(job_id)
        if run is None:
            job = self.store.get_job(job_id)
            if job.status in FINAL_STATUSES:
                raise FailedPrecondition(f"job {job_id} is already {status_name(job.status)}")
            # Created but never executed: nothing runs, it just ends.
            self._set_status(job_id, S.CANCELLED, f"cancelled{': ' + reason if reason else ''}")
            return
        if run.cancel is CancelMode.HARD or (run.cancel is CancelMode.GRACEFUL and graceful):
            return
        run.cancel = CancelMode.GRACEFUL if graceful else CancelMode.HARD
        run.cancel_reason = reason
        job = self.store.get_job(job_id)
        if job.status in FINAL_STATUSES:
            return
        if run.proc is None:
            # queued or preparing: stop the lifecycle task where it waits
            if run.task is not None:
                run.task.cancel()
            return
        self._set_status(job_id, S.CANCELLING)
        jl = self.logs.open(job_id)
        if graceful:
            gsp = job.job_parameters.graceful_shutdown_parameters
            signum = int(gsp.signal) or int(signal.SIGTERM)
            timeout = gsp.timeout.ToTimedelta().total_seconds() if gsp.HasField("timeout") else 15.0
            jl.system(f"cancel requested: sending signal {signum} to the job, SIGKILL in {timeout:g}s")
            run.proc.signal(signum)
            try:
                await asyncio.wait_for(asyncio.shield(run.done.wait()), timeout)
                return
            except TimeoutError:
                jl.system("job did not stop in time: SIGKILL")
        else:
            jl.system("cancel requested: SIGKILL")
        run.cancel = CancelMode.HARD
        if run.proc is not None:
            run.proc.kill_all()

    async def wait(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            await run.done.wait()

    async def shutdown(self) -> None:
        """Stop every running job (SIGKILL to its process group) and mark it ERROR."""
        for run in list(self._runs.values()):
            run.cancel = CancelMode.SHUTDOWN
            if run.proc is not None:
                run.proc.kill_all()
            if run.task is not None:
                run.task.cancel()
        for run in list(self._runs.values()):
            if run.task is not None:
                with contextlib.suppress(BaseException):
                    await run.task

    # -- lifecycle ------------------------------------------------------------
    async def _acquire_slot(self, run: _Run) -> None:
        kind = self.store.get_job(run.job_id).actual_cloud_instance_type.name
        res = self.resources if self.executor.runs_here else None  # else the executor finds room itself
        async with self._slot:
            while True:
                ahead = self._queue.index(run.job_id)
                msg = f"waiting for a free slot: {ahead} job(s) ahead, {self._active} running"
                if ahead == 0 and self._active < self.max_concurrent:
                    if res is not None:  # the job's instance type must fit what is free
                        run.allotment = res.take(kind)
                        p = res.profiles[kind]  # take() raised if it is not there
                        msg = f"waiting for resources: {p.describe()} with {res.free()}"
                    if res is None or run.allotment is not None:
                        self._queue.pop(0)
                        self._active += 1
                        self._slot.notify_all()
                        return
                self._progress(run.job_id, msg, 0)
                self.store.touch_operation(run.op_id)
                await self._slot.wait()

    async def _release_slot(self, run: _Run) -> None:
        async with self._slot:
            self._active -= 1
            if run.allotment is not None and self.resources is not None:
                self.resources.release(run.allotment)
                run.allotment = None
            self._slot.notify_all()

    async def _lifecycle(self, run: _Run) -> None:
        job_id = run.job_id
        jl = self.logs.open(job_id)
        got_slot = False
        error: tuple[int, str] | None = None
        try:
            try:
                jl.system("job queued")
                await self._acquire_slot(run)
                got_slot = True
                error = await self._run(run, jl)
            except asyncio.CancelledError:
                if run.cancel is CancelMode.SHUTDOWN:
                    error = (ABORTED_CODE, "interrupted: the job server stopped")
                    self._finish(
                        job_id, S.ERROR, "interrupted: the job server stopped while the job was running"
                    )
                else:
                    reason = run.cancelled_details()
                    error = (CANCELLED_CODE, reason)
                    self._finish(job_id, S.CANCELLED, reason)
            except DsJobsError as e:
                jl.system(f"error: {e}")
                error = (rpc_code(e.code), str(e))
                self._finish(job_id, S.ERROR, str(e))
            except Exception as e:  # an OS error or a bug: the job still ends, saying what happened
                details = f"{type(e).__name__}: {e}"[:2000]
                if isinstance(e, _NOT_A_BUG):  # the OS refused (a path, a limit, the disk), bad data
                    log.warning("job %s failed: %s", job_id, details)
                else:
                    log.exception("job %s failed", job_id)
                jl.system(f"error: {details}")
                error = (INTERNAL_CODE, details)
                self._finish(job_id, S.ERROR, details)
        finally:
            if run.job_id in self._queue:
                self._queue.remove(run.job_id)
            if got_slot:
                await self._release_slot(run)
            if run.environment is not None and self.environments is not None:
                self.environments.release(run.environment)
            self.store.finish_operation(run.op_id, response=run.response, error=error)
            self._runs.pop(job_id, None)
            self.logs.finish(job_id)
            run.done.set()

    def _finish(self, job_id: str, status: int, details: str) -> None:
        if self.store.get_job(job_id).status not in FINAL_STATUSES:
            self._set_status(job_id, status, details)

    async def _run(self, run: _Run, jl: JobLog) -> tuple[int, str] | None:
        job = self.store.get_job(run.job_id)
        p = job.job_parameters
        self._set_status(job.id, S.PREPARING, "")
        self._progress(job.id, "preparing the job directory", 5)
        workdir = self.workdir(job.id)
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        values = await asyncio.to_thread(self._materialize, job, workdir)
        env = self._base_env(job, workdir)
        if self.environments is not None and not self.executor.builds_environments:
            env = await self._environment(run, job, env, jl)  # else on the node (Ray, workdir node)
        cmd = substitute(p.cmd, values)
        jl.system(f"running: {cmd}")
        self._progress(job.id, "running", 10)

        def sink(source: int, chunk: bytes) -> None:
            jl.write(SOURCE_OUT if source == 1 else SOURCE_ERR, chunk)

        run.proc, memory = await self._start(run, cmd, workdir, env, sink, jl)
        jl.system(f"isolation: {run.proc.isolation}")
        self.store.set_pgid(job.id, run.proc.pid)
        self._set_status(job.id, S.EXECUTING)
        progress = _ProgressReader(workdir / PROGRESS_FILE)
        watcher = asyncio.ensure_future(self._watch_progress(job.id, progress))
        try:
            code = await run.proc.wait()
        finally:
            watcher.cancel()
            if memory is not None:
                memory.cancel()
            self.store.set_pgid(job.id, None)
        self._read_progress(job.id, progress)  # what the job wrote last
        jl.system(f"process exited with code {code}")
        if run.cancel is not None:
            reason = run.cancelled_details()
            await self._collect_logs(job.id, jl)
            self._set_status(job.id, S.CANCELLED, reason, self._record_files)
            return (CANCELLED_CODE, reason)
        self._set_status(job.id, S.UPLOADING_OUTPUT)
        self._progress(job.id, "collecting outputs", 95)
        errors, full = await self._collect_outputs(job, workdir, jl)
        full += await self._collect_logs(job.id, jl)
        if jl.failed is not None:
            full.append(jl.failed)

        def finished(j: jobs_pb2.Job) -> None:
            self._record_files(j)
            del j.file_errors[:]
            j.file_errors.extend(errors)

        what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if (
            memory is not None
            and memory.done()
            and not memory.cancelled()
            and memory.result()
            and run.allotment
        ):
            what = f"exceeded the memory of {run.allotment.memory_limit} (killed)"
            jl.system(f"the job {what}")
        details = "; ".join(([f"process {what}"] if code else []) + full)  # full: did not fit
        self._set_status(job.id, S.ERROR if details else S.SUCCESS, details, finished)
        self._progress(job.id, "done", 100)
        run.response = _result(code)
        return None

    async def _start(
        self, run: _Run, cmd: str, workdir: Path, env: dict[str, str], sink: OutputSink, jl: JobLog
    ) -> tuple[RunningProcess, asyncio.Future[bool] | None]:
        """Start the job's process with its allotment (its env, cores, GPUs; ``server.resources``)
        and the watch on its memory. Only an executor of processes here (one whose ``start`` takes
        ``cores``) gets them: another places and limits its jobs itself."""
        a = run.allotment
        if a is None or not self.executor.runs_here:
            return await self.executor.start(cmd, workdir, env, sink), None
        jl.system(a.describe())
        env = a.apply_env(env, self.store.get_job(run.job_id).job_parameters.env.vars)
        proc = await self.executor.start(cmd, workdir, env, sink, cores=a.cores)  # type: ignore[call-arg]
        return proc, asyncio.ensure_future(watch_memory(proc.pid, a.memory_bytes, proc.kill_all))

    # -- preparing ------------------------------------------------------------
    def _materialize(self, job: jobs_pb2.Job, workdir: Path) -> dict[str, str]:
        """Put inputs and local modules in the working dir; return ${VAR} values."""
        p = job.job_parameters
        values: dict[str, str] = {a.name: a.value for a in p.arguments}
        for f in p.env.python_env.local_modules:  # their entries are relative to the job dir
            safe_extract(self.blobs.path(f.sha256), workdir)
            if f.desc.var:
                values[f.desc.var] = "."
        for i in range(len(p.env.python_env.local_modules)):
            values.setdefault(f"{LOCAL_MODULE_PREFIX}{i}", ".")
        for f in p.input_files:
            dest = place(workdir, f.desc.path, f.desc.var, "inputs")
            if f.compression_type == S.ZIP:
                extract_as(self.blobs.path(f.sha256), dest)
            else:
                self.blobs.copy_to(f.sha256, dest)
            if f.desc.var:
                values[f.desc.var] = str(dest.relative_to(workdir))
        for d in p.output_files:
            dest = place(workdir, d.path, d.var, "outputs")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if d.var:
                values[d.var] = str(dest.relative_to(workdir))
        if p.attach_project_disk:
            home = self.projects_root / (job.project_id or "default")
            home.mkdir(parents=True, exist_ok=True)
            values[PROJECT_HOME] = str(home)
        return values

    def _base_env(self, job: jobs_pb2.Job, workdir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DS_JOBS_", "VIRTUAL_ENV"))}
        env.update(job.job_parameters.env.vars)
        env["DS_JOB_ID"] = job.id
        env["PYTHONUNBUFFERED"] = "1"
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(workdir) + (os.pathsep + pp if pp else "")
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        if job.job_parameters.attach_project_disk:
            env[PROJECT_HOME] = str(self.projects_root / (job.project_id or "default"))
        return env

    async def _environment(
        self, run: _Run, job: jobs_pb2.Job, env: dict[str, str], jl: JobLog
    ) -> dict[str, str]:
        cache = self.environments
        assert cache is not None
        spec = EnvSpec.from_proto(job.job_parameters.env.python_env)
        if cache.lookup(spec) is None:
            self._progress(job.id, "building the Python environment", 7)
            jl.system(f"building a Python environment: {' '.join(spec.requirements)}")
        t0 = time.monotonic()
        environment = await cache.ensure(spec, jl.system, acquire=True)
        run.environment = environment
        if time.monotonic() - t0 > 0.05:
            jl.system(f"environment ready in {time.monotonic() - t0:.2f}s")
        return environment.apply(env)

    # -- progress ------------------------------------------------------------
    async def _watch_progress(self, job_id: str, progress: _ProgressReader) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._read_progress(job_id, progress)

    def _read_progress(self, job_id: str, progress: _ProgressReader) -> None:
        last = progress.latest()
        if last is not None:
            self._progress(job_id, *last)
            run = self._runs.get(job_id)
            if run is not None:
                self.store.touch_operation(run.op_id)

    # -- outputs -----------------------------------------------------------------
    def _record_files(self, job: jobs_pb2.Job) -> None:
        """Copy the stored file references into the job message."""
        files = self.store.files(job.id)
        job.ClearField("output_files")
        job.output_files.extend(f.to_proto() for f in files if f.kind == "output")
        job.ClearField("log_files")
        job.log_files.extend(f.to_proto() for f in files if f.kind == "log")
        job.data_size_bytes = sum(f.size for f in files)

    async def _collect_outputs(
        self, job: jobs_pb2.Job, workdir: Path, jl: JobLog
    ) -> tuple[list[jobs_pb2.FileUploadError], list[str]]:
        """Store the declared outputs (``server.outputs``: copies, no link followed out of the job
        dir); return the per-file errors and the messages of what did not fit on the disk."""
        refs: list[FileRef] = []
        errors: list[jobs_pb2.FileUploadError] = []
        full: list[str] = []

        def fail(d: jobs_pb2.FileDesc, msg: str, not_found: bool = False) -> None:
            jl.system(msg)
            kind = S.FileUploadError.NOT_FOUND if not_found else S.FileUploadError.UPLOAD_FAILED
            errors.append(jobs_pb2.FileUploadError(output_file_desc=d, description=msg, type=kind))

        for d in job.job_parameters.output_files:
            try:
                src = place(workdir, d.path, d.var, "outputs")
                if src.is_dir():
                    sha, size, skipped = await asyncio.to_thread(store_dir, self.blobs, src, workdir, d.path)
                    refs.append(FileRef("output", d.path, d.var, sha, size, S.ZIP))
                    for s in skipped:
                        fail(d, f"output directory {d.path!r}: {s}")
                elif src.is_file():
                    sha, size = await asyncio.to_thread(store_file, self.blobs, src, d.path)
                    refs.append(FileRef("output", d.path, d.var, sha, size, S.NONE))
                else:
                    fail(d, f"output file {d.path!r} was not created by the job", not_found=True)
            except ResourceExhausted as e:
                full.append(str(e))
                fail(d, str(e))
            except DsJobsError as e:  # e.g. the job made the output a symlink out of its dir
                fail(d, f"output file {d.path!r} not collected: {e}")
            except OSError as e:
                fail(d, f"output file {d.path!r} not collected: {e.strerror}")
        self.store.add_files(job.id, refs)
        return errors, full

    async def _collect_logs(self, job_id: str, jl: JobLog) -> list[str]:
        """Store the job's stdout / stderr files; return the messages of what did not fit."""
        refs, full = [], []
        for path in self.logs.plain_files(job_id):
            what = f"log file {path.name!r} into the server's state dir"
            try:
                sha, size = await asyncio.to_thread(self.blobs.add_file, path, what)
            except ResourceExhausted as e:
                jl.system(str(e))
                full.append(str(e))
                continue
            refs.append(FileRef("log", path.name, "", sha, size, S.NONE))
        self.store.add_files(job_id, refs)
        return full


class _ProgressReader:
    """Follows the job's ``job_progress.jsonl``: complete new lines only, read in bounded chunks."""

    CHUNK = 64 * 1024
    MAX_LINE = 1 << 20  # a longer "line" is dropped, never held whole

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0  # where the first line not yet read starts

    def latest(self) -> tuple[str, int] | None:
        """(message, progress) of the last well-formed line written since the previous call."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return None
        last = None
        with f:
            f.seek(self.pos)
            buf = b""
            while chunk := f.read(self.CHUNK):
                buf += chunk
                end = buf.rfind(b"\n")
                if end >= 0:
                    for line in buf[: end + 1].splitlines():
                        with contextlib.suppress(ValueError, AttributeError, TypeError):
                            obj = json.loads(line)
                            last = (str(obj.get("message", "")), int(obj.get("progress", 0)))
                    self.pos += end + 1
                    buf = buf[end + 1 :]
                elif len(buf) > self.MAX_LINE:
                    self.pos += len(buf)
                    buf = b""
        return last


#: What ends a job without a bug to trace: the OS refused, or an archive's data is corrupt.
_NOT_A_BUG = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _result(code: int) -> bytes:
    return jobs_pb2.JobResult(return_code=code).SerializeToString()
