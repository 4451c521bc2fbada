"""The gRPC servicers: ``ProjectJobService``, ``OperationService`` and ``ProjectService``.

Thin: each RPC turns its request into a call of :class:`~jupyter_ds_jobs.server.jobs.Jobs` and
renders the answer (operations through :class:`~jupyter_ds_jobs.server.operations.Operations`).
Exceptions of :mod:`jupyter_ds_jobs.common.errors` become gRPC status codes in one place,
:func:`map_errors`; handlers just raise. Anything else is a bug: INTERNAL with its class and
message (and the traceback in the server log), never grpc's UNKNOWN. A request body that does not
parse (invalid UTF-8 in a string, broken wire format) is INVALID_ARGUMENT before any handler runs
(:class:`DecodeInterceptor`).
"""

from __future__ import annotations

import functools
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

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
)
from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument
from jupyter_ds_jobs.server.jobs import Jobs, public_job
from jupyter_ds_jobs.server.logs import SOURCE_ERR, SOURCE_FILE, SOURCE_OUT
from jupyter_ds_jobs.server.operations import Operations
from jupyter_ds_jobs.server.store import Store, set_seconds
from jupyter_ds_jobs.server.validation import MAX_ID_BYTES, check_length

__all__ = [
    "AuthInterceptor",
    "DecodeInterceptor",
    "JobService",
    "OperationService",
    "ProjectService",
    "map_errors",
]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=type)
Unary = Callable[[object, Message, grpc.aio.ServicerContext], Awaitable[Message]]
Streaming = Callable[[object, Message, grpc.aio.ServicerContext], AsyncIterator[Message]]


async def _abort_for(e: Exception, method: str, context: grpc.aio.ServicerContext) -> None:
    """Abort the RPC with the status of ``e``: its own for a DsJobsError, INTERNAL for a bug."""
    if isinstance(e, DsJobsError):
        await context.abort(e.code, str(e))
    log.error("%s failed", method, exc_info=e)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"[:1000])


def map_errors(cls: C) -> C:
    """Wrap every RPC method of a servicer so DsJobsError aborts with its status code."""

    def wrap_stream(fn: Streaming) -> Streaming:
        @functools.wraps(fn)
        async def stream(
            self: object, request: Message, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Message]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort_for(e, fn.__qualname__, context)

        return stream

    def wrap_unary(fn: Unary) -> Unary:
        @functools.wraps(fn)
        async def unary(self: object, request: Message, context: grpc.aio.ServicerContext) -> Message:
            try:
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort_for(e, fn.__qualname__, context)
                raise  # not reached: abort raises

        return unary

    for name, fn in list(vars(cls).items()):
        if name[:1].isupper() and callable(fn):
            if inspect.isasyncgenfunction(fn):
                setattr(cls, name, wrap_stream(cast(Streaming, fn)))
            else:
                setattr(cls, name, wrap_unary(cast(Unary, fn)))
    return cls


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every RPC needs ``authorization: Bearer <token>``; otherwise UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._want = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        got = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode()
        if hmac.compare_digest(got.encode(), self._want) or handler is None:
            return handler
        msg = "missing bearer token" if not got else "invalid bearer token"

        async def deny_unary(request: Message, context: grpc.aio.ServicerContext) -> Message:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)
            raise AssertionError("not reached: abort raises")

        async def deny_stream(request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)
            yield  # pragma: no cover

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            deny_unary, handler.request_deserializer, handler.response_serializer
        )


class _Undecodable:
    """What a request body that does not parse becomes; the handler answers INVALID_ARGUMENT."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception as e:  # DecodeError, or whatever the parser raises on hostile bytes
            first = (str(e).splitlines() or [type(e).__name__])[0][:300]
            return _Undecodable(f"cannot decode the request: {first}")

    return parse


class DecodeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A body that does not parse is INVALID_ARGUMENT with a one-line message (grpc-aio answers
    UNKNOWN and logs a traceback): the handler's deserializer turns a parse error into a marker
    that the handler, wrapped here, answers before it runs."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(request: object, context: grpc.aio.ServicerContext) -> object:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result

            return grpc.unary_unary_rpc_method_handler(unary, parse, handler.response_serializer)
        if handler.unary_stream is not None:
            stream_behaviour = handler.unary_stream

            async def stream(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                async for item in stream_behaviour(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream, parse, handler.response_serializer)
        return handler


@map_errors
class JobService(pjs_grpc.ProjectJobServiceServicer):  # type: ignore[misc]
    def __init__(self, jobs: Jobs, ops: Operations) -> None:
        self.jobs = jobs
        self.ops = ops

    async def Create(
        self, request: pjs_pb2.CreateProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        params = jobs_pb2.JobParameters()
        params.CopyFrom(request.job_parameters)
        op_id = self.jobs.create(
            request.project_id,
            params,
            name=request.name,
            desc=request.desc,
            config=request.config,
            data_ttl=request.data_ttl if request.HasField("data_ttl") else None,
        )
        return self.ops.get(op_id)

    async def Clone(
        self, request: pjs_pb2.CloneProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        op_id = self.jobs.clone(
            request.source_job_id,
            request.job_parameters_overrides,
            name=request.name,
            desc=request.desc,
            data_ttl=request.data_ttl if request.HasField("data_ttl") else None,
        )
        return self.ops.get(op_id)

    async def Execute(
        self, request: pjs_pb2.ExecuteProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        return self.ops.get(self.jobs.execute(request.job_id))

    async def Cancel(
        self, request: pjs_pb2.CancelProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.jobs.cancel(request.job_id, request.graceful, request.reason)
        return empty_pb2.Empty()

    async def Finalize(
        self, request: pjs_pb2.FinalizeProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> pjs_pb2.FinalizeProjectJobResponse:
        return pjs_pb2.FinalizeProjectJobResponse(job_id=self.jobs.finalize(request.job_id))

    async def ReadLogs(
        self, request: pjs_pb2.ReadProjectJobLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pjs_pb2.ReadProjectJobLogsResponse]:
        async for batch, offset in self.jobs.follow(request.job_id, request.offset):
            resp = pjs_pb2.ReadProjectJobLogsResponse(offset=offset)
            for r in batch:
                m = resp.logs.add(content=r.content)
                set_seconds(m.created_at, r.created_at)
                if r.source == SOURCE_FILE:
                    m.file_path = r.path
                else:
                    m.standard_stream = pjs_pb2.OUT if r.source == SOURCE_OUT else pjs_pb2.ERR
            yield resp

    async def ReadStdLogs(
        self, request: pjs_pb2.ReadProjectJobStdLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pjs_pb2.ReadProjectJobStdLogsResponse]:
        async for batch, offset in self.jobs.follow(request.job_id, request.offset):
            resp = pjs_pb2.ReadProjectJobStdLogsResponse(offset=offset)
            for r in batch:
                if r.source in (SOURCE_OUT, SOURCE_ERR):
                    t = pjs_pb2.StdLog.OUT if r.source == SOURCE_OUT else pjs_pb2.StdLog.ERR
                    resp.logs.add(content=r.content, type=t)
            yield resp

    async def DownloadJobFiles(
        self, request: pjs_pb2.DownloadProjectJobFilesRequest, context: grpc.aio.ServicerContext
    ) -> pjs_pb2.DownloadProjectJobFilesResponse:
        files = self.jobs.download_files(request.job_id, request.files)
        return pjs_pb2.DownloadProjectJobFilesResponse(download_files=files)

    async def List(
        self, request: pjs_pb2.ListProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> pjs_pb2.ListProjectJobResponse:
        jobs, token = self.jobs.list_jobs(
            request.project_id, request.filter, request.page_size, request.page_token
        )
        return pjs_pb2.ListProjectJobResponse(jobs=jobs, next_page_token=token)

    async def Get(
        self, request: pjs_pb2.GetProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        return public_job(self.jobs.store.get_job(request.job_id))

    async def Delete(
        self, request: pjs_pb2.DeleteProjectJobRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        return self.ops.get(self.jobs.delete(request.job_id))

    async def DeleteData(
        self, request: pjs_pb2.DeleteProjectJobDataRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        return self.ops.get(self.jobs.delete_data(request.job_id))

    async def DeleteAllData(
        self, request: pjs_pb2.DeleteAllProjectJobDataRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        return self.ops.get(self.jobs.delete_all_data(request.project_id))

    async def SetDataTtl(
        self, request: pjs_pb2.SetProjectJobDataTtlRequest, context: grpc.aio.ServicerContext
    ) -> pjs_pb2.SetProjectJobDataTtlResponse:
        self.jobs.set_data_ttl(request.job_id, request.ttl if request.HasField("ttl") else None)
        return pjs_pb2.SetProjectJobDataTtlResponse()


@map_errors
class OperationService(ops_grpc.OperationServiceServicer):  # type: ignore[misc]
    def __init__(self, jobs: Jobs, ops: Operations) -> None:
        self.jobs = jobs
        self.ops = ops

    async def Get(
        self, request: ops_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        if not request.operation_id:
            raise InvalidArgument("operation_id is empty", field="operation_id")
        return self.ops.get(request.operation_id)

    async def Cancel(
        self, request: ops_pb2.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> op_pb2.Operation:
        if not request.operation_id:
            raise InvalidArgument("operation_id is empty", field="operation_id")
        await self.jobs.cancel_operation(request.operation_id)
        return self.ops.get(request.operation_id)


@map_errors
class ProjectService(ps_grpc.ProjectServiceServicer):  # type: ignore[misc]
    """``ProjectService.Get``: what the official CLI asks after Execute (to print a job link).

    Projects are implicit on the local server: any id names a project, created with its first job.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def Get(
        self, request: ps_pb2.GetProjectRequest, context: grpc.aio.ServicerContext
    ) -> project_pb2.Project:
        if not request.project_id:
            raise InvalidArgument("project_id is empty", field="project_id")
        check_length(request.project_id, MAX_ID_BYTES, "project_id")
        project = project_pb2.Project(
            id=request.project_id, name=request.project_id, created_by_id="local", community_id="local"
        )
        first = self.store.project_first_seen(request.project_id)
        if first is None:
            project.created_at.GetCurrentTime()
        else:
            set_seconds(project.created_at, first)
        return project
