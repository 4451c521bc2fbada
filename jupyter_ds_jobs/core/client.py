"""``JobsClient``: the DataSphere Jobs API v2 (``ProjectJobService`` + ``OperationService``) from Python.

::

    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.packaging.jobspec import load_config

    spec = load_config(Path("config.yaml"))
    with JobsClient.connect() as client:            # settings / env, else the embedded local server
        job_id = client.create_from_spec(spec)      # hash, zip, Create, upload what the server lacks
        result = client.run(job_id, on_log=lambda m: print(m.content.decode(), end=""))
        client.download_result(result, Path("."))   # outputs, checked and extracted
        print(result.return_code)

The same client talks to DataSphere itself (:meth:`JobsClient.datasphere`, TLS and an IAM token).
Every unary call has a deadline (``timeout``) and is retried with backoff on UNAVAILABLE; errors
are the classes of :mod:`jupyter_ds_jobs.common.errors`. Imports nothing from IPython or the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, ops_grpc, ops_pb2, pjs_grpc, pjs_pb2
from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.common.contract import FINAL_STATUSES, LOCAL_MODULE_PREFIX, status_name
from jupyter_ds_jobs.common.errors import (
    DsJobsError,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
    from_status,
)
from jupyter_ds_jobs.core import transfer
from jupyter_ds_jobs.core.config import Settings
from jupyter_ds_jobs.core.credentials import Credentials
from jupyter_ds_jobs.core.endpoints import (
    DATASPHERE_ENDPOINT,
    DATASPHERE_OPERATION_ENDPOINT,
    is_loopback,
    make_channel,
    parse_endpoint,
)
from jupyter_ds_jobs.core.jobfiles import download_storage_files, local_target, upload_requested
from jupyter_ds_jobs.core.logfollow import LogFollower, OnMessage, OpenStream, follow
from jupyter_ds_jobs.core.results import CreateStats, ExecuteResult, JobSource
from jupyter_ds_jobs.core.tls import describe_tls_failure
from jupyter_ds_jobs.core.tls import root_certificates as tls_roots
from jupyter_ds_jobs.core.transfer import LocalFile, PreparedFile, ProgressCallback, TransferProgress

__all__ = [
    "DATASPHERE_ENDPOINT",
    "DATASPHERE_OPERATION_ENDPOINT",
    "FINAL_STATUSES",
    "CreateStats",
    "ExecuteResult",
    "JobSource",
    "JobsClient",
    "TransferProgress",
    "is_loopback",
    "local_target",
    "parse_endpoint",
    "status_name",
]

STREAM_TIMEOUT = 3600.0
_R = TypeVar("_R")


class JobsClient:
    """A client of ``ProjectJobService`` and ``OperationService``.

    ``endpoint`` is ``host:port`` (``grpcs://`` / ``grpc://`` prefixes choose TLS); ``token`` is
    sent as ``authorization: Bearer <token>`` with ``x-client-version``. ``operation_endpoint``
    serves ``OperationService`` when it lives elsewhere (DataSphere). ``timeout`` is the deadline
    of each unary call; UNAVAILABLE is retried with backoff for about ``retry_seconds``.
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        *,
        operation_endpoint: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        ca_file: Path | str | None = None,
        credentials: Credentials | None = None,
        project_id: str = "local",
        timeout: float = 30.0,
        retry_seconds: float = 8.0,
        upload_parallel: int = 4,
        local_blobs: Path | None = None,
    ) -> None:
        target, scheme_tls = parse_endpoint(endpoint)
        self.endpoint = target
        self.tls = tls if scheme_tls is None else scheme_tls
        self.project_id = project_id
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.upload_parallel = upload_parallel
        # The blob dir of a job server on this machine (the embedded one): downloads copy from it
        # instead of going through HTTP. Its content was checked by the server when stored.
        self.local_blobs = local_blobs
        self.last_create: CreateStats | None = None
        md = [("x-client-version", f"jupyter_ds_jobs/{__version__}")]
        if token and credentials is None:
            md.insert(0, ("authorization", f"Bearer {token}"))
        self._md: list[tuple[str, str]] = md
        #: Where the bearer token comes from when it is not a fixed one (DataSphere's IAM tokens).
        self.credentials = credentials
        self.ca_file = Path(ca_file).expanduser() if ca_file else None
        if self.ca_file is not None:
            root_certificates = root_certificates or tls_roots(self.ca_file)
            transfer.trust_ca_file(self.ca_file)
        self._channel = make_channel(target, tls=self.tls, root_certificates=root_certificates)
        if operation_endpoint:
            op_target, op_tls = parse_endpoint(operation_endpoint)
            self.operation_endpoint = op_target
            self._op_channel = make_channel(
                op_target, tls=self.tls if op_tls is None else op_tls, root_certificates=root_certificates
            )
        else:
            self.operation_endpoint = target
            self._op_channel = self._channel
        self._jobs = pjs_grpc.ProjectJobServiceStub(self._channel)
        self._ops = ops_grpc.OperationServiceStub(self._op_channel)

    # -- construction --------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        endpoint: str | None = None,
        token: str | None = None,
        project_id: str | None = None,
        *,
        start: bool = True,
        settings: Settings | None = None,
        state_dir: Path | None = None,
        ca_file: Path | str | None = None,
        yc_profile: str | None = None,
    ) -> JobsClient:
        """A client by precedence: arguments > ``DS_JOBS_*`` env / settings file > the embedded server.

        ``endpoint="datasphere"`` means :meth:`datasphere`. With no endpoint at all, the local
        server of ``state_dir`` (default state dir) is found, or started detached when ``start``.
        Without a scheme, TLS is used for every host but loopback; a TLS server's certificate is
        checked against the system roots plus ``ca_file`` (``DS_JOBS_CA_FILE``, the settings).
        """
        from jupyter_ds_jobs.core.connecting import connect

        return connect(cls, endpoint, token, project_id, start=start, settings=settings,
                       state_dir=state_dir, ca_file=ca_file, yc_profile=yc_profile)  # fmt: skip

    @classmethod
    def datasphere(
        cls,
        token: str | None = None,
        project_id: str = "",
        *,
        settings: Settings | None = None,
        yc_profile: str | None = None,
        auth: str | None = None,
    ) -> JobsClient:
        """DataSphere itself: TLS, jobs and operations on their public endpoints, and an IAM token
        from ``token`` or the official CLI's sources in its order (``YC_IAM_TOKEN``, an OAuth token
        in ``YC_TOKEN`` / ``YC_OAUTH_TOKEN``, the compute metadata service, ``yc``; see
        :mod:`jupyter_ds_jobs.core.credentials`), refreshed before it expires."""
        from jupyter_ds_jobs.core.connecting import datasphere

        return datasphere(cls, token, project_id, settings=settings, yc_profile=yc_profile, auth=auth)

    def close(self) -> None:
        self._channel.close()
        if self._op_channel is not self._channel:
            self._op_channel.close()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------
    def _metadata(self) -> list[tuple[str, str]]:
        """The call metadata: the bearer token (a fresh one from the credentials, when there are
        some) and ``x-client-version``."""
        if self.credentials is None:
            return self._md
        return [self.credentials.authorization(), *self._md]

    def _rpc(self, method: Callable[..., _R], request: Message, *, timeout: float | None = None) -> _R:
        """One unary call with a deadline, retried on UNAVAILABLE with backoff, and once with a new
        token after UNAUTHENTICATED when the token can be renewed."""
        delay = 0.05
        deadline = time.monotonic() + self.retry_seconds
        renewed = False
        while True:
            try:
                return method(request, metadata=self._metadata(), timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED and self.credentials is not None and not renewed:
                    renewed = True
                    if self.credentials.invalidate():
                        continue
                err = from_rpc_error(e)
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise self._refused(err) from None
                if code == grpc.StatusCode.UNAVAILABLE:
                    tls = describe_tls_failure(self.endpoint, self.ca_file, str(err)) if self.tls else None
                    raise Unavailable(
                        tls or f"cannot reach the job server at {self.endpoint}: {err}"
                    ) from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Unavailable(
                        f"the job server at {self.endpoint} did not answer within {timeout or self.timeout:g}s"
                    ) from None
                raise err from None

    def _refused(self, err: DsJobsError) -> Unauthenticated:
        if self.credentials is not None:
            return Unauthenticated(
                f"{self.endpoint} refused the IAM token from {self.credentials.source or 'the credentials'} "
                f"({err}): {self.credentials.renew_hint()}"
            )
        return Unauthenticated(f"{self.endpoint} refused the token ({err}): check --token / DS_JOBS_TOKEN")

    def _project(self, project_id: str | None) -> str:
        if project_id is not None:
            return project_id  # explicit, even empty (the local server then means every project)
        p = self.project_id
        if not p:
            raise InvalidArgument("no project given (use -p PROJECT, DS_JOBS_PROJECT or the settings)")
        return p

    def wait_operation(
        self, op: op_pb2.Operation, *, timeout: float | None = None, poll: float = 0.05, max_poll: float = 1.0
    ) -> op_pb2.Operation:
        """Poll ``OperationService.Get`` until done (short intervals growing to ``max_poll``);
        raise the operation's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll
        while not op.done:
            if deadline is not None and time.monotonic() > deadline:
                raise Unavailable(f"operation {op.id} not done within {timeout:g}s")
            time.sleep(interval)
            interval = min(interval * 1.5, max_poll)
            op = self._rpc(self._ops.Get, ops_pb2.GetOperationRequest(operation_id=op.id))
        if op.HasField("error"):
            raise from_status(op.error.code, op.error.message or f"operation {op.id} failed")
        return op

    # -- creating ---------------------------------------------------------------------
    def create(
        self,
        params: jobs_pb2.JobParameters,
        files: Sequence[LocalFile] = (),
        *,
        modules: Sequence[LocalFile] = (),
        name: str = "",
        desc: str = "",
        config: str = "",
        data_ttl: timedelta | None = None,
        progress: ProgressCallback | None = None,
        project_id: str | None = None,
    ) -> str:
        """Create a job; return its id.

        ``files`` are hashed (directories zipped) and appended to ``input_files``; those with a
        ``_LOCAL_MODULE_<i>`` var, and ``modules``, go to ``env.python_env.local_modules``. After
        ``Create`` only the files the server asks for are uploaded (streamed, a few in parallel).
        ``progress`` receives :class:`TransferProgress` of the ``hash`` and ``upload`` phases.
        Numbers of the run are left in :attr:`last_create`.
        """
        t0 = time.monotonic()
        p = jobs_pb2.JobParameters()
        p.CopyFrom(params)
        inputs = [f for f in files if not f.var.startswith(LOCAL_MODULE_PREFIX)]
        mods = [f for f in files if f.var.startswith(LOCAL_MODULE_PREFIX)] + list(modules)
        prepared = transfer.prepare_files([*inputs, *mods], progress=progress)
        for pf in prepared[: len(inputs)]:
            p.input_files.append(pf.file)
        for pf in prepared[len(inputs) :]:
            p.env.python_env.local_modules.append(pf.file)
        t1 = time.monotonic()
        req = pjs_pb2.CreateProjectJobRequest(
            project_id=self._project(project_id), job_parameters=p, config=config, name=name, desc=desc
        )
        if data_ttl is not None:
            req.data_ttl.FromTimedelta(data_ttl)
        op = self.wait_operation(self._rpc(self._jobs.Create, req))
        resp = pjs_pb2.CreateProjectJobResponse()
        if not op.response.Unpack(resp):
            raise DsJobsError(f"operation {op.id}: unexpected response {op.response.type_url}")
        self.last_create = self._upload(resp.upload_files, prepared, progress, t0, t1)
        return resp.job_id

    def create_from_spec(
        self,
        spec: JobSource,
        *,
        project_id: str | None = None,
        data_ttl: timedelta | None = None,
        progress: ProgressCallback | None = None,
        name: str | None = None,
        desc: str | None = None,
    ) -> str:
        """:meth:`create` from a parsed ``config.yaml`` (``packaging.jobspec.load_config``)."""
        return self.create(
            spec.params,
            spec.inputs,
            modules=spec.local_modules,
            name=spec.name if name is None else name,
            desc=spec.desc if desc is None else desc,
            config=spec.config_text,
            data_ttl=data_ttl,
            progress=progress,
            project_id=project_id,
        )

    def _upload(
        self,
        wanted: Sequence[jobs_pb2.StorageFile],
        prepared: Sequence[PreparedFile],
        progress: ProgressCallback | None,
        t0: float,
        t1: float,
    ) -> CreateStats:
        return upload_requested(
            wanted,
            prepared,
            parallel=self.upload_parallel,
            timeout=max(self.timeout, 60.0),
            progress=progress,
            started=t0,
            prepared_at=t1,
        )

    def clone(
        self,
        job_id: str,
        overrides: jobs_pb2.JobParameters | None = None,
        files: Sequence[LocalFile] = (),
        *,
        name: str = "",
        desc: str = "",
        data_ttl: timedelta | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Clone a job with ``overrides`` (see :func:`jobspec.fork_overrides`); ``files`` are new
        inputs (hashed, uploaded when the server lacks them). Returns the new job's id."""
        t0 = time.monotonic()
        o = jobs_pb2.JobParameters()
        if overrides is not None:
            o.CopyFrom(overrides)
        prepared = transfer.prepare_files(list(files), progress=progress)
        for pf in prepared:
            o.input_files.append(pf.file)
        t1 = time.monotonic()
        req = pjs_pb2.CloneProjectJobRequest(
            source_job_id=job_id, job_parameters_overrides=o, name=name, desc=desc
        )
        if data_ttl is not None:
            req.data_ttl.FromTimedelta(data_ttl)
        op = self.wait_operation(self._rpc(self._jobs.Clone, req))
        resp = pjs_pb2.CloneProjectJobResponse()
        if not op.response.Unpack(resp):
            raise DsJobsError(f"operation {op.id}: unexpected response {op.response.type_url}")
        self.last_create = self._upload(resp.upload_files, prepared, progress, t0, t1)
        return resp.job_id

    # -- running ----------------------------------------------------------------------
    def execute(self, job_id: str) -> op_pb2.Operation:
        """Start the job (or, if it runs or ran already, get that run's operation)."""
        op: op_pb2.Operation = self._rpc(self._jobs.Execute, pjs_pb2.ExecuteProjectJobRequest(job_id=job_id))
        return op

    def wait(
        self,
        job_id: str,
        op: op_pb2.Operation | None = None,
        *,
        on_progress: Callable[[jobs_pb2.Job, jobs_pb2.JobProgress | None], None] | None = None,
        poll: float = 0.1,
        timeout: float | None = None,
        wake: threading.Event | None = None,
    ) -> ExecuteResult:
        """Wait for the Execute operation ``op`` (default: :meth:`execute`'s) to end.

        Polls every ``poll`` seconds (slowing to 2 s after 30 s); ``wake`` (e.g. a log follower's
        ``done``) makes it poll at once. ``on_progress(job, progress)`` is called after every poll
        with the operation's metadata. A job that failed or was cancelled is returned, not raised.
        """
        op = op if op is not None else self.execute(job_id)
        t0 = time.monotonic()
        interval = poll
        while True:
            if on_progress is not None:
                meta = pjs_pb2.ExecuteProjectJobMetadata()
                if op.metadata.Unpack(meta) and meta.HasField("job"):
                    on_progress(meta.job, meta.progress if meta.HasField("progress") else None)
                else:
                    on_progress(self.get(job_id), None)
            if op.done:
                break
            elapsed = time.monotonic() - t0
            if timeout is not None and elapsed > timeout:
                raise Unavailable(f"job {job_id} did not finish within {timeout:g}s")
            if wake is not None and not wake.is_set():
                wake.wait(interval)
            else:
                time.sleep(min(interval, 0.05) if wake is not None else interval)
            if elapsed > 30:
                interval = min(interval * 1.25, 2.0)
            op = self._rpc(self._ops.Get, ops_pb2.GetOperationRequest(operation_id=op.id))
        return self._result(job_id, op)

    def _result(self, job_id: str, op: op_pb2.Operation) -> ExecuteResult:
        resp = pjs_pb2.ExecuteProjectJobResponse()
        rc: int | None = None
        if op.HasField("response") and op.response.Unpack(resp):
            rc = int(resp.result.return_code)  # proto3: an absent result is return code 0
        meta = pjs_pb2.ExecuteProjectJobMetadata()
        # The done operation carries the finished job (the deprecated field every server fills);
        # ask for it only when it is missing.
        if op.metadata.Unpack(meta) and meta.job.id == job_id and meta.job.status in FINAL_STATUSES:
            job = meta.job
        else:
            job = self.get(job_id)
        return ExecuteResult(job, rc, list(resp.output_files), list(resp.output_files_errors), op)

    def run(
        self,
        job_id: str,
        *,
        on_log: OnMessage | None = None,
        on_progress: Callable[[jobs_pb2.Job, jobs_pb2.JobProgress | None], None] | None = None,
        log_offset: int = 0,
        poll: float = 0.1,
        timeout: float | None = None,
    ) -> ExecuteResult:
        """:meth:`execute`, follow the logs (``on_log`` per message) and :meth:`wait`."""
        op = self.execute(job_id)
        follower = self.logs_thread(job_id, on_log, log_offset) if on_log is not None else None
        try:
            result = self.wait(
                job_id,
                op,
                on_progress=on_progress,
                poll=poll,
                timeout=timeout,
                wake=follower.done if follower else None,
            )
        finally:
            if follower is not None and not follower.join(10.0):
                follower.stop()
                follower.join(2.0)
        return result

    def follow_logs(
        self,
        job_id: str,
        on_message: OnMessage,
        *,
        offset: int = 0,
        stop: threading.Event | None = None,
    ) -> int:
        """Call ``on_message`` for each log message from ``offset`` (``-1``: from now) until the job
        ends or ``stop`` is set; reconnects from the last offset after a dropped stream. Returns the
        final offset (pass it back to resume)."""
        return follow(self._log_stream(job_id), on_message, offset=offset, stop=stop)

    def logs_thread(self, job_id: str, on_message: OnMessage, offset: int = 0) -> LogFollower:
        """:meth:`follow_logs` in a started daemon thread (``.stop()``, ``.join()``, ``.done``)."""
        return LogFollower(self._log_stream(job_id), on_message, offset).start()

    def _log_stream(self, job_id: str) -> OpenStream:
        def open_stream(offset: int) -> Any:
            req = pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id, offset=offset)
            return self._jobs.ReadLogs(req, metadata=self._metadata(), timeout=STREAM_TIMEOUT)

        return open_stream

    # -- reading ----------------------------------------------------------------------
    def get(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = self._rpc(self._jobs.Get, pjs_pb2.GetProjectJobRequest(job_id=job_id))
        return job

    def list_jobs(
        self,
        project_id: str | None = None,
        statuses: Sequence[int] = (),
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[jobs_pb2.Job]:
        """Jobs of the project, newest first, page by page; ``statuses`` filters."""
        flt = f"status IN ({', '.join(status_name(s) for s in statuses)})" if statuses else ""
        token = ""
        n = 0
        while True:
            req = pjs_pb2.ListProjectJobRequest(
                project_id=self._project(project_id), page_size=page_size, page_token=token, filter=flt
            )
            resp = self._rpc(self._jobs.List, req)
            for job in resp.jobs:
                if limit is not None and n >= limit:
                    return
                n += 1
                yield job
            token = resp.next_page_token
            if not token:
                return

    # -- changing ---------------------------------------------------------------------
    def cancel(self, job_id: str, graceful: bool = False, reason: str = "") -> None:
        """Cancel a job (``graceful``: its graceful-shutdown signal first, SIGKILL after the timeout)."""
        self._rpc(
            self._jobs.Cancel,
            pjs_pb2.CancelProjectJobRequest(job_id=job_id, graceful=graceful, reason=reason),
        )

    def set_data_ttl(self, job_id: str, ttl: timedelta | None) -> None:
        """Keep the job's data ``ttl`` from now; None keeps it forever."""
        req = pjs_pb2.SetProjectJobDataTtlRequest(job_id=job_id)
        if ttl is not None:
            req.ttl.FromTimedelta(ttl)
        self._rpc(self._jobs.SetDataTtl, req)

    def delete(self, job_id: str) -> None:
        """Delete a finished (or never executed) job and its data."""
        self.wait_operation(self._rpc(self._jobs.Delete, pjs_pb2.DeleteProjectJobRequest(job_id=job_id)))

    def delete_data(self, job_id: str) -> None:
        """Delete a finished job's files; the job stays listed."""
        self.wait_operation(
            self._rpc(self._jobs.DeleteData, pjs_pb2.DeleteProjectJobDataRequest(job_id=job_id))
        )

    # -- downloading ------------------------------------------------------------------
    def download(
        self,
        job_id: str,
        files: Sequence[jobs_pb2.File] | None = None,
        dest: Path = Path("."),
        *,
        extract: bool = True,
        progress: ProgressCallback | None = None,
    ) -> list[Path]:
        """Download ``files`` of the job (default: its output files) under ``dest``; see
        :meth:`download_storage_files`."""
        if files is None:
            files = list(self.get(job_id).output_files)
        if not files:
            return []
        resp = self._rpc(
            self._jobs.DownloadJobFiles, pjs_pb2.DownloadProjectJobFilesRequest(job_id=job_id, files=files)
        )
        return self.download_storage_files(resp.download_files, dest, extract=extract, progress=progress)

    def download_result(
        self, result: ExecuteResult, dest: Path = Path("."), *, extract: bool = True,
        progress: ProgressCallback | None = None,
    ) -> list[Path]:  # fmt: skip
        """Download an :class:`ExecuteResult`'s outputs (their URLs came with the operation)."""
        return self.download_storage_files(result.output_files, dest, extract=extract, progress=progress)

    def download_storage_files(
        self,
        files: Sequence[jobs_pb2.StorageFile],
        dest: Path = Path("."),
        *,
        extract: bool = True,
        progress: ProgressCallback | None = None,
    ) -> list[Path]:
        """Stream each file to a temporary name, check size and sha256, rename atomically.

        A file goes to ``dest / desc.path`` (``dest / basename`` when the path is absolute or has
        ``..``). A ZIP output (a directory) is extracted there unless ``extract`` is False (then
        it is kept as ``<path>.zip``). Returns the paths written.
        """
        return download_storage_files(
            files, dest, local_blobs=self.local_blobs, extract=extract, progress=progress
        )
