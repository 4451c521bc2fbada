"""Job changes for ``GET /ds-jobs/events``: one poller per Jupyter server, shared by every listener.

While someone listens (and for :data:`LINGER` seconds after the last one left), a task polls
``List`` every ``interval`` seconds: the newest page of jobs plus every job that may still change
(:data:`~.wire.ACTIVE_STATUSES`, whatever its age). A job that is new, or whose ``Job`` message
changed, is one event; a job that left both sets is asked for by id: changed, or deleted. The
first poll is the baseline and says nothing.

Events carry ``id`` ``EPOCH-SEQ``; the last :data:`HISTORY` are kept, so a reconnect with
``Last-Event-ID`` gets what it missed. A reconnect the history cannot serve (another epoch: the
poller was restarted, or too old) gets ``event: reset``: reload the list.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import status_name
from jupyter_ds_jobs.common.errors import DsJobsError, NotFound
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.reads import list_page
from jupyter_ds_jobs.jupyter_ext.backend import JobsBackend
from jupyter_ds_jobs.jupyter_ext.wire import ACTIVE_STATUSES, job_json

__all__ = ["Event", "JobWatcher", "Subscriber"]

NEWEST = 100  # the newest jobs polled every time
MAX_ACTIVE = 2000  # jobs that may still change, polled every time at most
MAX_LOOKUPS = 50  # jobs that left the polled sets, asked for by id per poll at most
HISTORY = 1000  # events kept for reconnects
MEMORY = 20_000  # jobs whose last state is remembered
LINGER = 30.0  # seconds the poller keeps going after the last listener left
QUEUE = 1000  # events a listener may be behind before it is told to reset


@dataclass(frozen=True)
class Event:
    id: str  # EPOCH-SEQ
    seq: int
    name: str  # "" is the default event ("message")
    data: dict[str, Any]


@dataclass(eq=False)  # hashed by identity: a set of listeners
class Subscriber:
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    lost: bool = False  # fell QUEUE events behind: told to reset


def _digest(job: jobs_pb2.Job) -> bytes:
    return hashlib.blake2b(job.SerializeToString(deterministic=True), digest_size=16).digest()


class _State:
    """What the poller knows (touched only in its pool thread)."""

    def __init__(self) -> None:
        self.seen: collections.OrderedDict[str, tuple[bytes, str]] = collections.OrderedDict()
        self.polled: set[str] = set()
        self.baseline = False

    def remember(self, job: jobs_pb2.Job) -> tuple[bool, str | None]:
        """(changed, previous status name or None when new)."""
        digest = _digest(job)
        old = self.seen.pop(job.id, None)
        self.seen[job.id] = (digest, status_name(job.status))
        while len(self.seen) > MEMORY:
            self.seen.popitem(last=False)
        return (old is None or old[0] != digest), (old[1] if old else None)


def poll(client: JobsClient, state: _State) -> list[tuple[str, dict[str, Any]]]:
    """One poll: the (event name, data) of what changed since the last (blocking)."""
    jobs = {j.id: j for j in list_page(client, page_size=NEWEST).jobs}
    for j in client.list_jobs(statuses=ACTIVE_STATUSES, page_size=200, limit=MAX_ACTIVE):
        jobs[j.id] = j
    changes: list[tuple[str, dict[str, Any]]] = []
    for j in sorted(jobs.values(), key=lambda j: (j.created_at.seconds, j.created_at.nanos)):
        changed, previous = state.remember(j)
        if changed and state.baseline:
            changes.append(("", _data(j, previous)))
    for job_id in list(state.polled - jobs.keys())[:MAX_LOOKUPS]:
        try:
            j = client.get(job_id)
        except NotFound:
            previous = state.seen.pop(job_id, (b"", None))[1]
            changes.append(("", {"id": job_id, "status": previous, "previous_status": previous,
                                 "deleted": True, "job": None}))  # fmt: skip
            continue
        changed, previous = state.remember(j)
        if changed:
            changes.append(("", _data(j, previous)))
    state.polled = set(jobs)
    state.baseline = True
    return changes


def _data(job: jobs_pb2.Job, previous: str | None) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": status_name(job.status),
        "previous_status": previous,
        "deleted": False,
        "job": job_json(job),
    }


class JobWatcher:
    """The poller and its listeners (on the event loop)."""

    def __init__(self, backend: JobsBackend, interval: float) -> None:
        self.backend = backend
        self.interval = interval
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()
        self.reachable: dict[str, Any] = {"reachable": True, "message": ""}
        self._task: asyncio.Task[None] | None = None
        self._epoch = ""
        self._seq = 0
        self._history: collections.deque[Event] = collections.deque(maxlen=HISTORY)

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            self._epoch = secrets.token_hex(4)
            self._seq = 0
            self._history.clear()
            self.ready = asyncio.Event()
            self._task = asyncio.ensure_future(self._main())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def missed(self, last_event_id: str) -> list[Event] | None:
        """The events after ``last_event_id``; None when the history cannot say (reset)."""
        epoch, _, seq = last_event_id.partition("-")
        if epoch != self._epoch or not seq.isdigit():
            return None
        n = int(seq)
        if n > self._seq or (self._history and n < self._history[0].seq - 1):
            return None
        return [e for e in self._history if e.seq > n]

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        self._seq += 1
        event = Event(f"{self._epoch}-{self._seq}", self._seq, name, data)
        self._history.append(event)
        for sub in list(self.subscribers):
            if sub.lost:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.lost = True

    async def _main(self) -> None:
        state = _State()
        idle_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                changes = await self.backend.run(poll, state)
                status = {"reachable": True, "message": ""}
            except DsJobsError as e:
                changes, status = [], {"reachable": False, "message": str(e)}
            except RuntimeError:  # the pool is shut down: the extension stops
                return
            except Exception as e:  # a bug must not end the events of every listener
                logging.getLogger(__name__).exception("ds-jobs: events poll failed")
                changes, status = [], {"reachable": False, "message": f"{type(e).__name__}: {e}"}
            if status != self.reachable:
                self.reachable = status
                self._emit("server", status)
            for name, data in changes:
                self._emit(name, data)
            self.ready.set()
            if self.subscribers:
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since > LINGER:
                return
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
