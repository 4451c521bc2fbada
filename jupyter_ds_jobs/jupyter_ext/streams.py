"""Server-sent events: their text, and a job's log carried from a thread to the event loop.

A log event's ``id`` is where a reconnect resumes exactly (``Last-Event-ID``): the job server's
log offset after the event when it ends one of the server's batches (``"1234"``), else that of the
batch's start plus the messages past it (``"1200:3"``: from offset 1200, skip 3). The log follower
(:func:`~jupyter_ds_jobs.core.reads.follow_batches`) runs in its own thread and hands batches over
through a bounded queue: a slow browser slows the gRPC stream instead of filling memory.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from jupyter_ds_jobs._proto import pjs_pb2
from jupyter_ds_jobs.common.contract import status_name
from jupyter_ds_jobs.common.errors import DsJobsError
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.reads import follow_batches
from jupyter_ds_jobs.jupyter_ext.backend import JobsBackend
from jupyter_ds_jobs.jupyter_ext.wire import LogPosition

__all__ = ["LogBridge", "LogEnd", "LogEvents", "sse"]

#: Batches a log stream may hold for a slow browser before the follower waits.
QUEUE_BATCHES = 16


def sse(data: Any, *, event: str | None = None, id: str | None = None) -> str:
    """One event: ``event:``, ``id:`` and a one-line JSON ``data:``."""
    head = (f"event: {event}\n" if event else "") + (f"id: {id}\n" if id is not None else "")
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _stream_of(m: pjs_pb2.LogMessage) -> tuple[str, str]:
    if m.WhichOneof("source") == "file_path":
        return "system", m.file_path
    return ("stderr" if m.standard_stream == pjs_pb2.ERR else "stdout"), ""


@dataclass
class LogEvents:
    """Turns log batches into events; consecutive messages of one stream make one event.

    ``base`` is the offset the current message count starts from and ``skip`` the messages after
    it that the browser already has (a resumed ``N:K``)."""

    base: int
    skip: int = 0
    count: int = 0
    _decoders: dict[tuple[str, str], Any] = field(default_factory=dict)

    def batch(self, messages: list[pjs_pb2.LogMessage], end: int) -> str:
        groups: list[tuple[str, str, list[bytes], int]] = []  # stream, path, contents, count after
        for m in messages:
            self.count += 1
            if self.skip:
                self.skip -= 1
                continue
            stream, path = _stream_of(m)
            if groups and groups[-1][:2] == (stream, path):
                groups[-1][2].append(m.content)
                groups[-1] = (*groups[-1][:3], self.count)
            else:
                groups.append((stream, path, [m.content], self.count))
        out = []
        for i, (stream, path, contents, after) in enumerate(groups):
            dec = self._decoders.get((stream, path))
            if dec is None:
                dec = self._decoders[(stream, path)] = codecs.getincrementaldecoder("utf-8")("replace")
            data: dict[str, Any] = {"stream": stream, "text": dec.decode(b"".join(contents))}
            if path:
                data["path"] = path
            last = i == len(groups) - 1
            out.append(sse(data, id=str(end) if last else str(LogPosition(self.base, after))))
        self.base, self.count = end, 0
        return "".join(out)


@dataclass(frozen=True)
class LogEnd:
    """The job's log is complete: its final offset and the job's status."""

    offset: int
    status: str


class LogBridge:
    """:func:`follow_batches` in a daemon thread, feeding an asyncio queue of
    ``(messages, offset)``, then one :class:`LogEnd` or :class:`DsJobsError`."""

    def __init__(self, backend: JobsBackend, job_id: str, offset: int) -> None:
        self.backend = backend
        self.job_id = job_id
        self.offset = offset
        self.queue: asyncio.Queue[tuple[list[pjs_pb2.LogMessage], int] | LogEnd | DsJobsError] = (
            asyncio.Queue(QUEUE_BATCHES)
        )
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"ds-jobs-ext-logs-{job_id}", daemon=True)

    def start(self) -> LogBridge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _put(self, item: tuple[list[pjs_pb2.LogMessage], int] | LogEnd | DsJobsError) -> None:
        """Hand ``item`` to the loop, waiting while the queue is full (until stopped)."""
        try:
            fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self._loop)
        except RuntimeError:  # the loop is closed
            self._stop.set()
            return
        while not self._stop.is_set():
            try:
                fut.result(timeout=0.25)
                return
            except concurrent.futures.TimeoutError:
                continue
            except concurrent.futures.CancelledError:
                break
        fut.cancel()

    def _follow(self, client: JobsClient) -> LogEnd:
        end = follow_batches(
            client, self.job_id, lambda msgs, off: self._put((msgs, off)), offset=self.offset, stop=self._stop
        )
        return LogEnd(end, status_name(client.get(self.job_id).status))

    def _main(self) -> None:
        try:
            result: LogEnd | DsJobsError = self.backend.call(self._follow)
        except DsJobsError as e:
            result = e
        except Exception as e:  # a bug: said to the browser, not lost in a thread
            result = DsJobsError(f"log stream failed: {type(e).__name__}: {e}")
        if not self._stop.is_set():
            self._put(result)
