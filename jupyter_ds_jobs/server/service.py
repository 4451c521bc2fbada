"""The gRPC servicers: ``ProjectJobService`` and ``OperationService``.

Exceptions of :mod:`jupyter_ds_jobs.common.errors` become gRPC status codes in one
place, :func:`map_errors`; handlers just raise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import inspect
import json
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from jupyter_ds_jobs._proto import (
    jobs_pb2,
    op_pb2,
    ops_grpc,
    ops_pb2,
    pjs_grpc,
    pjs_pb2,
    project_pb2,
    ps_grpc,
    ps_pb2,
    status_pb2,
)
from jupyter_ds_jobs.common.contract import (
    DEFAULT_INSTANCE_TYPE,
    FINAL_STATUSES,
    RUNNING_STATUSES,
    status_name,
)
from jupyter_ds_jobs.common.errors import DsJobsError, FailedPrecondition, InvalidArgument, NotFound
from jupyter_ds_jobs.server.blobs import BlobStore
from jupyter_ds_jobs.server.environments import EnvironmentCache, EnvSpec
from jupyter_ds_jobs.server.logs import SOURCE_ERR, SOURCE_FILE, SOURCE_OUT, LogStore
from jupyter_ds_jobs.server.runtime import ABORTED_CODE, JobManager
from jupyter_ds_jobs.server.store import FileRef, OperationRow, Store
from jupyter_ds_jobs.server.validation import check_parameters

__all__ = ["AuthInterceptor", "JobService", "OperationService", "ProjectService", "map_errors"]

S = jobs_pb2
C = TypeVar("C", bound=type)
FILTER_RE = re.compile(r"^\s*status\s+in\s*\(([^)]*)\)\s*$", re.IGNORECASE)
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
BLOB_GRACE_S = 3600.0


def map_errors(cls: C) -> C:
    """Wrap every RPC method of a servicer so DsJobsError aborts with its status code."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream(
                self: Any, request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for item in fn(self, request, context):
                        yield item
                except DsJobsError as e:
                    await context.abort(e.code, str(e))

            return stream

        @functools.wraps(fn)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(self, request, context)
            except DsJobsError as e:
                await context.abort(e.code, str(e))

        return unary

    for name, fn in list(vars(cls).items()):
        if name[:1].isupper() and callable(fn):
            setattr(cls, name, wrap(fn))
    return cls


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every RPC needs ``authorization: Bearer <token>``; otherwise UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._want = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        got = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode()
        if hmac.compare_digest(got.encode(), self._want) or handler is None:
            return handler
        msg = "missing bearer token" if not got else "invalid bearer token"

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)
            yield  # pragma: no cover

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            deny_unary, handler.request_deserializer, handler.response_serializer
        )


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(9)


def _set_ts(ts: Any, t: float) -> None:
    ts.FromNanoseconds(int(t * 1e9))


def _duration_s(d: Any) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


def public_job(job: jobs_pb2.Job) -> jobs_pb2.Job:
    """A job as Get / List show it: secrets (registry passwords) never go back out."""
    spec = job.job_parameters.env.docker_image_spec
    if spec.WhichOneof("password") == "password_plain_text":
        out = jobs_pb2.Job()
        out.CopyFrom(job)
        out.job_parameters.env.docker_image_spec.ClearField("password_plain_text")
        return out
    return job


class Context:
    """What both servicers share."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        logs: LogStore,
        manager: JobManager,
        *,
        instance_types: Iterable[str],
        default_ttl: timedelta | None,
        environments: EnvironmentCache | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.logs = logs
        self.manager = manager
        self.instance_types = list(instance_types)
        self.default_ttl = default_ttl
        self.environments = environments

    # -- operations ------------------------------------------------------------
    def operation(self, op_id: str) -> op_pb2.Operation:
        return self.render(self.store.get_operation(op_id))

    def render(self, row: OperationRow) -> op_pb2.Operation:
        op = op_pb2.Operation(
            id=row.id, description=_DESCRIPTIONS.get(row.kind, row.kind), created_by="local"
        )
        _set_ts(op.created_at, row.created_at)
        _set_ts(op.modified_at, row.modified_at)
        op.done = row.done
        kind = row.kind
        if kind == "create":
            op.metadata.Pack(pjs_pb2.CreateProjectJobMetadata(project_id=row.project_id, job_id=row.job_id))
        elif kind == "clone":
            op.metadata.Pack(pjs_pb2.CloneProjectJobMetadata(project_id=row.project_id, job_id=row.job_id))
        elif kind == "execute":
            job = public_job(self.store.get_job(row.job_id))
            meta = pjs_pb2.ExecuteProjectJobMetadata(job=job, metadata=job_metadata(job))
            progress = self.store.progress(row.job_id)
            if progress is not None:
                meta.progress.CopyFrom(progress)
            op.metadata.Pack(meta)
        elif kind == "delete":
            op.metadata.Pack(pjs_pb2.DeleteProjectJobMetadata(job_id=row.job_id))
        elif kind == "delete_data":
            op.metadata.Pack(pjs_pb2.DeleteProjectJobDataMetadata(job_id=row.job_id))
        elif kind == "delete_all_data":
            op.metadata.Pack(pjs_pb2.DeleteAllProjectJobDataMetadata(project_id=row.project_id))
        if not row.done:
            return op
        if row.error_code is not None:
            op.error.CopyFrom(status_pb2.Status(code=row.error_code, message=row.error_message or ""))
        elif kind in ("create", "clone"):
            cls = pjs_pb2.CreateProjectJobResponse if kind == "create" else pjs_pb2.CloneProjectJobResponse
            op.response.Pack(cls(job_id=row.job_id, upload_files=self.upload_files(row.job_id)))
        elif kind == "execute":
            op.response.Pack(self.execute_response(row))
        elif kind == "delete":
            op.response.Pack(empty_pb2.Empty())
        elif kind == "delete_data":
            op.response.Pack(pjs_pb2.DeleteProjectJobDataResponse())
        elif kind == "delete_all_data":
            op.response.Pack(pjs_pb2.DeleteAllProjectJobDataResponse())
        return op

    def upload_files(self, job_id: str) -> list[jobs_pb2.StorageFile]:
        """Inputs and local modules whose content the store lacks, each with a signed PUT URL."""
        job = self.store.get_job(job_id)
        if job.status != S.CREATING:
            return []
        p = job.job_parameters
        out = []
        for f in [*p.input_files, *p.env.python_env.local_modules]:
            if not self.blobs.exists(f.sha256):
                out.append(
                    jobs_pb2.StorageFile(file=f, url=self.blobs.signed_url("PUT", f.sha256, f.size_bytes))
                )
        return out

    def execute_response(self, row: OperationRow) -> pjs_pb2.ExecuteProjectJobResponse:
        job = self.store.get_job(row.job_id)
        resp = pjs_pb2.ExecuteProjectJobResponse()
        if row.response is not None:  # return code 0 serializes to b"": still a result
            resp.result.CopyFrom(jobs_pb2.JobResult.FromString(row.response))
        if not job.data_cleared:
            for f in job.output_files:
                resp.output_files.add(file=f, url=self.blobs.signed_url("GET", f.sha256))
        resp.output_files_errors.extend(job.file_errors)
        return resp

    def new_operation(self, kind: str, job_id: str, project_id: str, done: bool = True) -> op_pb2.Operation:
        op_id = new_id("op")
        self.store.insert_operation(op_id, kind, job_id, project_id)
        if done:
            self.store.finish_operation(op_id)
        return self.operation(op_id)

    # -- jobs -------------------------------------------------------------------
    def check_python(self, p: jobs_pb2.JobParameters) -> None:
        if self.environments is None:
            return
        spec = EnvSpec.from_proto(p.env.python_env)
        self.environments.interpreter_for(spec.python_version)

    def create_job(
        self,
        project_id: str,
        params: jobs_pb2.JobParameters,
        *,
        name: str,
        desc: str,
        config: str,
        data_ttl: Any | None,
        parent_job_id: str = "",
        kind: str = "create",
    ) -> op_pb2.Operation:
        if not project_id:
            raise InvalidArgument("project_id is empty", field="project_id")
        if not params.cloud_instance_types:
            params.cloud_instance_types.add(
                name=DEFAULT_INSTANCE_TYPE
                if DEFAULT_INSTANCE_TYPE in self.instance_types
                else self.instance_types[0]
            )
        check_parameters(params, self.instance_types)
        self.check_python(params)
        if data_ttl is not None and _duration_s(data_ttl) < 0:
            raise InvalidArgument("data_ttl is negative", field="data_ttl")
        job = jobs_pb2.Job(
            id=new_id("dsj"),
            name=name,
            desc=desc,
            status=S.CREATING,
            config=config,
            created_by_id="local",
            project_id=project_id,
            job_parameters=params,
            parent_job_id=parent_job_id,
        )
        now = time.time()
        _set_ts(job.created_at, now)
        ttl = _duration_s(data_ttl) if data_ttl is not None else (
            self.default_ttl.total_seconds() if self.default_ttl else None
        )  # fmt: skip
        if ttl is not None:
            _set_ts(job.data_expires_at, now + ttl)
        job.actual_cloud_instance_type.name = params.cloud_instance_types[0].name
        refs = [
            FileRef("input", f.desc.path, f.desc.var, f.sha256, f.size_bytes, f.compression_type)
            for f in params.input_files
        ] + [
            FileRef("module", f.desc.path, f.desc.var, f.sha256, f.size_bytes, f.compression_type)
            for f in params.env.python_env.local_modules
        ]
        self.store.insert_job(job, refs)
        return self.new_operation(kind, job.id, project_id)

    def clear_data(self, job: jobs_pb2.Job) -> None:
        if job.status not in FINAL_STATUSES:
            raise FailedPrecondition(
                f"job {job.id} is {status_name(job.status)}; only finished jobs can be cleared"
            )
        for sha in self.store.drop_files(job.id):
            if not self.store.is_referenced(sha):
                self.blobs.delete(sha)
        shutil.rmtree(self.manager.jobs_root / job.id, ignore_errors=True)
        job.data_cleared = True
        job.data_size_bytes = 0
        self.store.save_job(job)

    def sweep(self, now: float | None = None) -> list[str]:
        """Clear the data of finished jobs past ``data_expires_at``; drop unreferenced blobs."""
        cleared = []
        for job_id in self.store.expired_jobs(now or time.time(), FINAL_STATUSES):
            self.clear_data(self.store.get_job(job_id))
            cleared.append(job_id)
        # A blob nothing references is garbage, unless it is fresh: outputs being collected are
        # published a moment before their reference is stored.
        referenced = self.store.referenced()
        cutoff = (now or time.time()) - BLOB_GRACE_S
        for sha in self.blobs.all():
            if sha not in referenced and self.blobs.changed_at(sha) < cutoff:
                self.blobs.delete(sha)
        return cleared


_DESCRIPTIONS = {
    "create": "Create job",
    "clone": "Clone job",
    "execute": "Execute job",
    "delete": "Delete job",
    "delete_data": "Delete job data",
    "delete_all_data": "Delete all jobs data",
}


def job_metadata(job: jobs_pb2.Job) -> jobs_pb2.JobMetadata:
    m = jobs_pb2.JobMetadata(
        id=job.id,
        name=job.name,
        description=job.desc,
        status=job.status,
        status_details=job.status_details,
        created_by_id=job.created_by_id,
        project_id=job.project_id,
        parent_job_id=job.parent_job_id,
    )
    for f in ("created_at", "started_at", "finished_at", "data_expires_at"):
        if job.HasField(f):
            getattr(m, f).MergeFrom(getattr(job, f))
    return m


def merge_overrides(base: jobs_pb2.JobParameters, o: jobs_pb2.JobParameters) -> jobs_pb2.JobParameters:
    """Clone: start from the source job's parameters and apply the overrides.

    Repeated entries replace the source's entry with the same key (input/output var or
    path, argument name); scalars and messages replace when set; env vars merge.
    """
    p = jobs_pb2.JobParameters()
    p.CopyFrom(base)

    def key(f: jobs_pb2.File) -> str:
        return f"var:{f.desc.var}" if f.desc.var else f"path:{f.desc.path}"

    for f in o.input_files:
        for i, old in enumerate(p.input_files):
            if key(old) == key(f):
                p.input_files[i].CopyFrom(f)
                break
        else:
            p.input_files.append(f)
    for d in o.output_files:
        for i, old_d in enumerate(p.output_files):
            if (old_d.var and old_d.var == d.var) or old_d.path == d.path:
                p.output_files[i].CopyFrom(d)
                break
        else:
            p.output_files.append(d)
    for a in o.arguments:
        for i, old_a in enumerate(p.arguments):
            if old_a.name == a.name:
                p.arguments[i].value = a.value
                break
        else:
            p.arguments.append(a)
    if o.cmd:
        p.cmd = o.cmd
    if o.cloud_instance_types:
        del p.cloud_instance_types[:]
        p.cloud_instance_types.extend(o.cloud_instance_types)
    p.env.vars.update(o.env.vars)
    if o.env.HasField("python_env"):
        p.env.python_env.CopyFrom(o.env.python_env)
    which = o.env.WhichOneof("docker_image")
    if which == "docker_image_spec":
        p.env.docker_image_spec.CopyFrom(o.env.docker_image_spec)
    elif which == "docker_image_resource_id":
        p.env.docker_image_resource_id = o.env.docker_image_resource_id
    for fld in ("extended_working_storage", "graceful_shutdown_parameters", "spark_parameters"):
        if o.HasField(fld):
            getattr(p, fld).CopyFrom(getattr(o, fld))
    if o.attach_project_disk:
        p.attach_project_disk = True
    if o.s3_mount_ids:
        p.s3_mount_ids.extend(x for x in o.s3_mount_ids if x not in p.s3_mount_ids)
    if o.dataset_ids:
        p.dataset_ids.extend(x for x in o.dataset_ids if x not in p.dataset_ids)
    if o.output_datasets:
        p.output_datasets.extend(o.output_datasets)
    return p


@map_errors
class JobService(pjs_grpc.ProjectJobServiceServicer):  # type: ignore[misc]
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def Create(self, request: pjs_pb2.CreateProjectJobRequest, context: Any) -> op_pb2.Operation:
        params = jobs_pb2.JobParameters()
        params.CopyFrom(request.job_parameters)
        return self.ctx.create_job(
            request.project_id,
            params,
            name=request.name,
            desc=request.desc,
            config=request.config,
            data_ttl=request.data_ttl if request.HasField("data_ttl") else None,
        )

    async def Clone(self, request: pjs_pb2.CloneProjectJobRequest, context: Any) -> op_pb2.Operation:
        src = self.ctx.store.get_job(request.source_job_id) if request.source_job_id else None
        if src is None:
            raise InvalidArgument("source_job_id is empty", field="source_job_id")
        params = merge_overrides(src.job_parameters, request.job_parameters_overrides)
        return self.ctx.create_job(
            src.project_id,
            params,
            name=request.name or src.name,
            desc=request.desc or src.desc,
            config=src.config,
            data_ttl=request.data_ttl if request.HasField("data_ttl") else None,
            parent_job_id=src.id,
            kind="clone",
        )

    async def Execute(self, request: pjs_pb2.ExecuteProjectJobRequest, context: Any) -> op_pb2.Operation:
        ctx = self.ctx
        job = ctx.store.get_job(request.job_id)
        op_id = ctx.store.execute_op(job.id)
        if op_id is not None:  # running, queued or finished: that run's operation, never a second run
            return ctx.operation(op_id)
        if job.data_cleared:
            raise FailedPrecondition(f"job {job.id} data has been cleared")
        if job.status != S.CREATING:
            raise FailedPrecondition(f"job {job.id} is {status_name(job.status)} and cannot be executed")
        p = job.job_parameters
        missing = [
            f.desc.path
            for f in [*p.input_files, *p.env.python_env.local_modules]
            if not ctx.blobs.exists(f.sha256)
        ]
        if missing:
            raise FailedPrecondition(f"files not uploaded yet: {', '.join(missing)}")
        ctx.check_python(p)
        op = ctx.new_operation("execute", job.id, job.project_id, done=False)
        ctx.manager.submit(job.id, op.id)
        return ctx.operation(op.id)

    async def Cancel(self, request: pjs_pb2.CancelProjectJobRequest, context: Any) -> empty_pb2.Empty:
        job = self.ctx.store.get_job(request.job_id)
        if job.status in FINAL_STATUSES:
            raise FailedPrecondition(f"job {job.id} is already {status_name(job.status)}")
        task = asyncio.ensure_future(self.ctx.manager.cancel(job.id, request.graceful, request.reason))
        if not request.graceful:
            await task
        return empty_pb2.Empty()

    async def Finalize(
        self, request: pjs_pb2.FinalizeProjectJobRequest, context: Any
    ) -> pjs_pb2.FinalizeProjectJobResponse:
        job = self.ctx.store.get_job(request.job_id)
        if job.status not in FINAL_STATUSES:
            raise FailedPrecondition(f"job {job.id} is {status_name(job.status)}; finalize a finished job")
        shutil.rmtree(self.ctx.manager.workdir(job.id), ignore_errors=True)
        return pjs_pb2.FinalizeProjectJobResponse(job_id=job.id)

    async def _follow(self, job_id: str, offset: int) -> AsyncIterator[tuple[list[Any], int]]:
        ctx = self.ctx
        job = ctx.store.get_job(job_id)
        if job.data_cleared:
            raise FailedPrecondition(f"job {job_id} data has been cleared")

        def is_final() -> bool:
            return not ctx.manager.is_active(job_id) and ctx.store.get_job(job_id).status in FINAL_STATUSES

        async for batch, new_offset in ctx.logs.follow(job_id, offset, is_final):
            yield batch, new_offset

    async def ReadLogs(self, request: pjs_pb2.ReadProjectJobLogsRequest, context: Any) -> AsyncIterator[Any]:
        async for batch, offset in self._follow(request.job_id, request.offset):
            resp = pjs_pb2.ReadProjectJobLogsResponse(offset=offset)
            for r in batch:
                m = resp.logs.add(content=r.content)
                _set_ts(m.created_at, r.created_at)
                if r.source == SOURCE_FILE:
                    m.file_path = r.path
                else:
                    m.standard_stream = pjs_pb2.OUT if r.source == SOURCE_OUT else pjs_pb2.ERR
            yield resp

    async def ReadStdLogs(
        self, request: pjs_pb2.ReadProjectJobStdLogsRequest, context: Any
    ) -> AsyncIterator[Any]:
        async for batch, offset in self._follow(request.job_id, request.offset):
            resp = pjs_pb2.ReadProjectJobStdLogsResponse(offset=offset)
            for r in batch:
                if r.source in (SOURCE_OUT, SOURCE_ERR):
                    t = pjs_pb2.StdLog.OUT if r.source == SOURCE_OUT else pjs_pb2.StdLog.ERR
                    resp.logs.add(content=r.content, type=t)
            yield resp

    async def DownloadJobFiles(self, request: pjs_pb2.DownloadProjectJobFilesRequest, context: Any) -> Any:
        ctx = self.ctx
        if not request.job_id:
            raise InvalidArgument("job_id is empty", field="job_id")
        job = ctx.store.get_job(request.job_id)
        if not request.files:
            raise InvalidArgument("at least one file is required", field="files")
        if job.data_cleared:
            raise FailedPrecondition(f"job {job.id} data has been cleared")
        known = ctx.store.files(job.id)
        resp = pjs_pb2.DownloadProjectJobFilesResponse()
        for i, want in enumerate(request.files):
            match = next(
                (
                    f
                    for f in known
                    if (want.sha256 and f.sha256 == want.sha256)
                    or (
                        want.desc.path
                        and f.path == want.desc.path
                        and (not want.desc.var or f.var == want.desc.var)
                    )
                ),
                None,
            )
            if match is None or not ctx.blobs.exists(match.sha256):
                name = want.desc.path or want.sha256 or f"files[{i}]"
                raise NotFound(f"job {job.id} has no file {name!r}")
            resp.download_files.add(file=match.to_proto(), url=ctx.blobs.signed_url("GET", match.sha256))
        return resp

    async def List(
        self, request: pjs_pb2.ListProjectJobRequest, context: Any
    ) -> pjs_pb2.ListProjectJobResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"must be between 1 and {MAX_PAGE_SIZE}, got {request.page_size}", field="page_size"
            )
        statuses = parse_filter(request.filter)
        after = None
        if request.page_token:
            try:
                t, jid = json.loads(base64.urlsafe_b64decode(request.page_token.encode()))
                after = (float(t), str(jid))
            except (ValueError, TypeError):
                raise InvalidArgument("malformed page token", field="page_token") from None
        jobs = self.ctx.store.list_jobs(request.project_id, statuses, size + 1, after)
        resp = pjs_pb2.ListProjectJobResponse(jobs=[public_job(j) for j in jobs[:size]])
        if len(jobs) > size:
            last = jobs[size - 1]
            token = [last.created_at.seconds + last.created_at.nanos / 1e9, last.id]
            resp.next_page_token = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        return resp

    async def Get(self, request: pjs_pb2.GetProjectJobRequest, context: Any) -> jobs_pb2.Job:
        return public_job(self.ctx.store.get_job(request.job_id))

    async def Delete(self, request: pjs_pb2.DeleteProjectJobRequest, context: Any) -> op_pb2.Operation:
        ctx = self.ctx
        job = ctx.store.get_job(request.job_id)
        if job.status not in FINAL_STATUSES and not (
            job.status == S.CREATING and not ctx.manager.is_active(job.id)
        ):
            raise FailedPrecondition(f"job {job.id} is {status_name(job.status)}; cancel it before deleting")
        shas = ctx.store.drop_files(job.id)
        ctx.store.delete_job(job.id)
        for sha in shas:
            if not ctx.store.is_referenced(sha):
                ctx.blobs.delete(sha)
        shutil.rmtree(ctx.manager.jobs_root / job.id, ignore_errors=True)
        return ctx.new_operation("delete", job.id, job.project_id)

    async def DeleteData(
        self, request: pjs_pb2.DeleteProjectJobDataRequest, context: Any
    ) -> op_pb2.Operation:
        job = self.ctx.store.get_job(request.job_id)
        self.ctx.clear_data(job)
        return self.ctx.new_operation("delete_data", job.id, job.project_id)

    async def DeleteAllData(
        self, request: pjs_pb2.DeleteAllProjectJobDataRequest, context: Any
    ) -> op_pb2.Operation:
        if not request.project_id:
            raise InvalidArgument("project_id is empty", field="project_id")
        for job in self.ctx.store.list_jobs(request.project_id, FINAL_STATUSES, 1_000_000, None):
            if not job.data_cleared:
                self.ctx.clear_data(job)
        return self.ctx.new_operation("delete_all_data", "", request.project_id)

    async def SetDataTtl(self, request: pjs_pb2.SetProjectJobDataTtlRequest, context: Any) -> Any:
        job = self.ctx.store.get_job(request.job_id)
        if request.HasField("ttl"):
            ttl = _duration_s(request.ttl)
            if ttl < 0:
                raise InvalidArgument("ttl is negative", field="ttl")
            _set_ts(job.data_expires_at, time.time() + ttl)
        else:  # no ttl: keep forever
            job.ClearField("data_expires_at")
        self.ctx.store.save_job(job)
        return pjs_pb2.SetProjectJobDataTtlResponse()


def parse_filter(text: str) -> list[int] | None:
    if not text.strip():
        return None
    if len(text) > 1000:
        raise InvalidArgument("longer than 1000 characters", field="filter")
    m = FILTER_RE.match(text)
    if not m:
        raise InvalidArgument(f"only 'status IN (...)' is supported, got {text!r}", field="filter")
    out = []
    for raw in m.group(1).split(","):
        name = raw.strip().strip("'\"").upper()
        if name not in S.JobStatus.keys() or name == "JOB_STATUS_UNSPECIFIED":  # noqa: SIM118
            raise InvalidArgument(f"unknown status {raw.strip()!r}", field="filter")
        out.append(int(S.JobStatus.Value(name)))
    return out


@map_errors
class OperationService(ops_grpc.OperationServiceServicer):  # type: ignore[misc]
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def Get(self, request: ops_pb2.GetOperationRequest, context: Any) -> op_pb2.Operation:
        if not request.operation_id:
            raise InvalidArgument("operation_id is empty", field="operation_id")
        return self.ctx.operation(request.operation_id)

    async def Cancel(self, request: ops_pb2.CancelOperationRequest, context: Any) -> op_pb2.Operation:
        if not request.operation_id:
            raise InvalidArgument("operation_id is empty", field="operation_id")
        row = self.ctx.store.get_operation(request.operation_id)
        if not row.done:
            if row.kind != "execute":
                raise FailedPrecondition(f"operation {row.id} ({row.kind}) cannot be cancelled")
            await self.ctx.manager.cancel(row.job_id, graceful=False, reason="operation cancelled")
            await self.ctx.manager.wait(row.job_id)
        return self.ctx.operation(row.id)


@map_errors
class ProjectService(ps_grpc.ProjectServiceServicer):  # type: ignore[misc]
    """``ProjectService.Get``: what the official CLI asks after Execute (to print a job link).

    Projects are implicit on the local server: any id names a project, created with its first job.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def Get(self, request: ps_pb2.GetProjectRequest, context: Any) -> project_pb2.Project:
        if not request.project_id:
            raise InvalidArgument("project_id is empty", field="project_id")
        project = project_pb2.Project(
            id=request.project_id, name=request.project_id, created_by_id="local", community_id="local"
        )
        _set_ts(project.created_at, self.ctx.store.project_first_seen(request.project_id) or time.time())
        return project


def recover(ctx: Context) -> list[str]:
    """At start: jobs a dead server left running become ERROR, their leftover processes killed."""
    interrupted = []
    for job in ctx.store.jobs_with_status([*RUNNING_STATUSES, S.CREATING]):
        op_id = ctx.store.execute_op(job.id)
        if job.status == S.CREATING and op_id is None:
            continue  # created, never executed: still executable
        was = status_name(job.status)
        pgid = ctx.store.pgid(job.id)
        if pgid and _group_is_job(pgid, job.id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        job.status = S.ERROR
        job.status_details = f"interrupted: the job server stopped while the job was {was}"
        job.finished_at.GetCurrentTime()
        ctx.store.save_job(job)
        ctx.store.set_pgid(job.id, None)
        if op_id is not None:
            ctx.store.finish_operation(op_id, error=(ABORTED_CODE, job.status_details))
        interrupted.append(job.id)
    return interrupted


def _group_is_job(pgid: int, job_id: str) -> bool:
    """Is process ``pgid`` still the job's (not a reused pid)? Its environment says, or (for a
    job forked from a warm interpreter, whose initial environment is the interpreter's) its
    working directory inside the job's dir."""
    try:
        with open(f"/proc/{pgid}/environ", "rb") as f:
            if f"DS_JOB_ID={job_id}".encode() in f.read().split(b"\0"):
                return True
        return f"/jobs/{job_id}/" in os.readlink(f"/proc/{pgid}/cwd") + "/"
    except OSError:
        return False
