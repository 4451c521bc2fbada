"""Following a job's log stream (``ReadLogs``) across dropped connections.

The server sends ``ReadProjectJobLogsResponse`` batches, each with the byte ``offset`` after its
last message, and ends the stream when the job is final. :func:`follow` keeps that offset and,
when the stream breaks (UNAVAILABLE, a deadline, a reset connection), reconnects from it after a
short backoff, so nothing is lost or repeated. A normal end of the stream ends it.
:class:`LogFollower` runs it in a daemon thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from jupyter_ds_jobs._proto import pjs_pb2
from jupyter_ds_jobs.common.errors import DsJobsError, Unavailable, from_rpc_error

__all__ = ["RETRYABLE", "LogFollower", "OnMessage", "OpenStream", "follow"]

#: Codes after which the stream is reopened from the last offset.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)

OnMessage = Callable[[pjs_pb2.LogMessage], None]


#: ``open_stream(offset)`` starts a ``ReadLogs`` call from ``offset``: a gRPC stream call, iterated
#: for ``ReadProjectJobLogsResponse`` batches and ``cancel()``-ed (Any: grpc ships no type stubs).
OpenStream = Callable[[int], Any]


def follow(
    open_stream: OpenStream,
    on_message: OnMessage,
    *,
    offset: int = 0,
    stop: threading.Event | None = None,
    give_up_after: float = 300.0,
    on_reconnect: Callable[[int, BaseException], None] | None = None,
    on_offset: Callable[[int], None] | None = None,
) -> int:
    """Deliver every log message from ``offset`` on until the stream ends; return the final offset.

    ``on_offset(offset)`` is called after each batch's messages with the offset after them (a
    position to resume from exactly; the messages of one batch share it).

    ``stop`` ends it early (the current call is cancelled). Errors that are not transient (NOT_FOUND,
    UNAUTHENTICATED, INVALID_ARGUMENT...) raise their :mod:`errors` class at once; transient ones
    are retried with backoff (0.1 s doubling to 2 s) for up to ``give_up_after`` seconds without
    progress, then :class:`Unavailable` is raised.
    """
    stop = stop or threading.Event()
    current: list[Any] = []
    lock = threading.Lock()
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            if stop.wait(0.05):
                with lock:
                    for c in current:
                        c.cancel()
                return

    watcher = threading.Thread(target=watch, name="ds-jobs-logs-stop", daemon=True)
    watcher.start()
    delay = 0.1
    failing_since: float | None = None
    try:
        while not stop.is_set():
            call = open_stream(offset)
            with lock:
                current[:] = [call]
            if stop.is_set():
                call.cancel()
            try:
                for resp in call:
                    for m in resp.logs:
                        on_message(m)
                    if resp.offset:
                        offset = resp.offset
                    if on_offset is not None:
                        on_offset(offset)
                    delay, failing_since = 0.1, None
                return offset
            except grpc.RpcError as e:
                if stop.is_set():
                    return offset
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                if code not in RETRYABLE:
                    raise from_rpc_error(e) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > give_up_after:
                    raise Unavailable(
                        f"log stream lost for {give_up_after:g}s: {e.details() if hasattr(e, 'details') else e}"
                    ) from None
                if on_reconnect is not None:
                    on_reconnect(offset, e)
                if stop.wait(delay):
                    return offset
                delay = min(delay * 2, 2.0)
            finally:
                with lock:
                    current.clear()
        return offset
    finally:
        finished.set()


class LogFollower:
    """:func:`follow` in a daemon thread.

    ``offset`` is the last offset seen, ``error`` what ended it badly, ``done`` is set when it ends
    (the job is final, ``stop()`` was called, or an error).
    """

    def __init__(self, open_stream: OpenStream, on_message: OnMessage, offset: int = 0) -> None:
        self._open = open_stream
        self._on_message = on_message
        self.offset = offset
        self.error: DsJobsError | None = None
        self.done = threading.Event()
        self.last_message_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ds-jobs-logs", daemon=True)

    def start(self) -> LogFollower:
        self._thread.start()
        return self

    def _deliver(self, m: pjs_pb2.LogMessage) -> None:
        self.last_message_at = time.monotonic()
        self._on_message(m)

    def _open_tracking(self, offset: int) -> Any:
        self.offset = offset
        return self._open(offset)

    def _main(self) -> None:
        try:
            self.offset = follow(self._open_tracking, self._deliver, offset=self.offset, stop=self._stop)
        except DsJobsError as e:
            self.error = e
        except Exception as e:  # a callback's bug must not kill the process silently
            self.error = DsJobsError(f"log follower failed: {type(e).__name__}: {e}")
        finally:
            self.done.set()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end; True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()
