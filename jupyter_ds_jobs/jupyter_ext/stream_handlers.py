"""The streaming routes: a job's log and the job changes as server-sent events, a job's files.

Nothing is held whole: log batches pass through a bounded queue (``streams.LogBridge``), a file
goes out in chunks read in the pool, each written and flushed before the next is read. A browser
that goes away stops its stream (the log follower's gRPC call is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import urllib.parse
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import DsJobsError, FailedPrecondition, InvalidArgument, NotFound
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.reads import open_job_file
from jupyter_ds_jobs.jupyter_ext.handlers import DsJobsHandler
from jupyter_ds_jobs.jupyter_ext.streams import LogBridge, LogEnd, LogEvents, sse
from jupyter_ds_jobs.jupyter_ext.watcher import Subscriber
from jupyter_ds_jobs.jupyter_ext.wire import error_reply, message_json, parse_log_position

__all__ = ["EventsHandler", "FileHandler", "FilesHandler", "LogsHandler"]

KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies close idle connections)
TICK = 0.5  # seconds between looks at whether the browser is still there
FIRST_WAIT = 0.5  # seconds a log stream waits for the job server's first answer before its headers
RETRY_MS = 2000  # the browser's reconnect delay
CHUNK = 256 * 1024
T = TypeVar("T")
FILE_KINDS = ("output", "log", "diagnostic")


class _EventStream(DsJobsHandler):
    """Server-sent events: headers once, then events, each flushed; the browser may vanish."""

    closed = False
    _on_close: Callable[[], None] | None = None

    def on_connection_close(self) -> None:
        self.closed = True
        if self._on_close is not None:
            self._on_close()

    async def next_item(self, queue: asyncio.Queue[T]) -> T | None:
        """The next item of ``queue``, with a keepalive comment every :data:`KEEPALIVE` seconds of
        quiet; None once the browser went away."""
        quiet = 0.0
        while not self.closed:
            try:
                return await asyncio.wait_for(queue.get(), TICK)
            except TimeoutError:
                quiet += TICK
            if quiet >= KEEPALIVE:
                quiet = 0.0
                await self.send(": keepalive\n\n")
        return None

    def start_events(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-transform")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer
        self.write(f"retry: {RETRY_MS}\n\n")

    async def send(self, text: str) -> bool:
        """Write and flush; False when the browser went away."""
        if self.closed:
            return False
        try:
            self.write(text)
            await self.flush()
        except StreamClosedError:
            self.closed = True
        return not self.closed

    def end_events(self) -> None:
        if not self.closed:
            self.finish(set_content_type="text/event-stream; charset=utf-8")


class LogsHandler(_EventStream):
    """``GET /ds-jobs/jobs/{id}/logs?offset=N``: the job's log, live, resumable."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        header = self.request.headers.get("Last-Event-ID")
        if header:
            pos = parse_log_position(header, "Last-Event-ID")
        else:
            pos = parse_log_position(self.get_query_argument("offset", "0"), "offset")
        await self.backend.run(JobsClient.get, job_id)  # 404 before any header
        bridge = LogBridge(self.backend, job_id, pos.offset).start()
        self._on_close = bridge.stop
        try:
            await self._stream(bridge, LogEvents(pos.offset, pos.skip))
        finally:
            bridge.stop()

    async def _stream(self, bridge: LogBridge, events: LogEvents) -> None:
        item: Any = None
        # an error the job server finds at once (a bad offset) is a plain JSON answer
        with contextlib.suppress(TimeoutError):
            item = await asyncio.wait_for(bridge.queue.get(), FIRST_WAIT)
        if isinstance(item, DsJobsError):
            raise item
        self.start_events()
        if not await self.send(""):
            return
        while True:
            if item is None:
                item = await self.next_item(bridge.queue)
                if item is None:
                    return
            if isinstance(item, LogEnd):
                data = {"offset": item.offset, "status": item.status}
                await self.send(sse(data, event="end", id=str(item.offset)))
                break
            if isinstance(item, DsJobsError):
                await self.send(sse(error_reply(item)[1], event="error"))
                break
            messages, end = item
            item = None
            if not await self.send(events.batch(messages, end)):
                return
        self.end_events()


class EventsHandler(_EventStream):
    """``GET /ds-jobs/events``: job changes (one poller per Jupyter server, see ``watcher.py``)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        watcher = self.watcher
        sub = watcher.subscribe()
        try:
            await watcher.ready.wait()  # the baseline is taken: a list loaded from now on misses nothing
            self.start_events()
            last = self.request.headers.get("Last-Event-ID")
            if last:
                missed = watcher.missed(last)
                text = sse({}, event="reset") if missed is None else "".join(self._event(e) for e in missed)
            else:
                text = sse(watcher.reachable, event="server")
            if await self.send(text):
                await self._stream(sub)
        finally:
            watcher.unsubscribe(sub)

    @staticmethod
    def _event(e: Any) -> str:
        return sse(e.data, event=e.name or None, id=e.id)

    async def _stream(self, sub: Subscriber) -> None:
        while True:
            event = await self.next_item(sub.queue)
            if event is None:
                return
            if sub.lost:  # too far behind: reload
                await self.send(sse({}, event="reset"))
                self.end_events()
                return
            if not await self.send(self._event(event)):
                return


def _files(job: jobs_pb2.Job) -> list[tuple[str, jobs_pb2.File]]:
    return [
        *(("output", f) for f in job.output_files),
        *(("log", f) for f in job.log_files),
        *(("diagnostic", f) for f in job.diagnostic_files),
    ]


def _file_json(kind: str, f: jobs_pb2.File) -> dict[str, Any]:
    zipped = f.compression_type == jobs_pb2.ZIP
    name = (f.desc.path.rstrip("/").rsplit("/", 1)[-1] or f.desc.var or "file") + (".zip" if zipped else "")
    return {
        "kind": kind,
        "path": f.desc.path,
        "var": f.desc.var,
        "size_bytes": f.size_bytes,
        "sha256": f.sha256,
        "compression_type": jobs_pb2.FileCompressionType.Name(f.compression_type),
        "download_name": name,
    }


class FilesHandler(DsJobsHandler):
    """``GET /ds-jobs/jobs/{id}/files``: the job's output, log and diagnostic files."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.backend.run(JobsClient.get, job_id)
        self.reply(
            {
                "files": [_file_json(kind, f) for kind, f in _files(job)],
                "file_errors": [message_json(e) for e in job.file_errors],
                "data_cleared": job.data_cleared,
            }
        )


def _find_file(job: jobs_pb2.Job, path: str, kind: str) -> tuple[str, jobs_pb2.File]:
    if kind and kind not in FILE_KINDS:
        raise InvalidArgument(f"expected one of {', '.join(FILE_KINDS)}, got {kind!r}", field="kind")
    for k, f in _files(job):
        if (not kind or k == kind) and f.desc.path == path:
            if job.data_cleared:
                raise FailedPrecondition(f"the data of job {job.id} has been deleted")
            return k, f
    err = NotFound(f"job {job.id} has no {kind + ' ' if kind else ''}file {path!r}")
    err.field = "path"
    raise err


class FileHandler(DsJobsHandler):
    """``GET /ds-jobs/jobs/{id}/files/{path}?kind=K``: one file, streamed as an attachment (a
    directory output as its ZIP)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str, path: str) -> None:
        job = await self.backend.run(JobsClient.get, job_id)
        kind, f = _find_file(job, path, self.get_query_argument("kind", ""))
        meta = _file_json(kind, f)
        stream: BinaryIO = await self.backend.run(open_job_file, job_id, f)
        try:
            mime = "application/zip" if f.compression_type == jobs_pb2.ZIP else None
            mime = mime or mimetypes.guess_type(meta["download_name"])[0] or "application/octet-stream"
            if mime.startswith("text/"):
                mime += "; charset=utf-8"
            self.set_header("Content-Type", mime)
            quoted = urllib.parse.quote(meta["download_name"], safe="")
            self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quoted}")
            self.set_header("X-Content-Type-Options", "nosniff")
            if f.size_bytes:
                self.set_header("Content-Length", str(f.size_bytes))
            while chunk := await self.backend.in_pool(stream.read, CHUNK):
                self.write(chunk)
                try:
                    await self.flush()
                except StreamClosedError:
                    return
            self.finish(set_content_type=mime)
        finally:
            await self.backend.in_pool(stream.close)
