"""Job logs: one append-only record file per job, read by byte offset.

``stream.bin`` holds framed records in the order they were produced::

    MAGIC(2) | source(1) | created_at(float64) | content_len(uint32) | path_len(uint16) | path | content

``source`` is 1 (stdout), 2 (stderr) or 3 (a system file, ``path`` names it,
e.g. ``.system.log``).  A reader's offset is a byte position at a record
boundary; ``ReadLogs`` sends ``offset`` = the position after the last record it
sent, so a reconnect from that offset loses and repeats nothing.  Plain
``stdout.log`` and ``stderr.log`` are written beside it (the job's log files).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jupyter_ds_jobs.common.errors import InvalidArgument

__all__ = ["SOURCE_ERR", "SOURCE_FILE", "SOURCE_OUT", "JobLog", "LogRecord", "LogStore"]

# Framing by hand on purpose: ReadLogs' offset is a byte position in this file, which a fixed
# struct header gives directly and a container format (sqlite, a msgpack stream) would hide.
MAGIC = b"\xd5\x4a"
HEADER = struct.Struct("<2sBdIH")
SOURCE_OUT, SOURCE_ERR, SOURCE_FILE = 1, 2, 3
SYSTEM_LOG = ".system.log"
MAX_BATCH = 256 * 1024


@dataclass(frozen=True)
class LogRecord:
    source: int
    created_at: float
    path: str
    content: bytes


class JobLog:
    """The writer side of one job's log, plus the event readers wait on."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.stream_path = directory / "stream.bin"
        # Unbuffered: a record is written in one call, so a failed write leaves nothing queued.
        self._stream: BinaryIO = open(self.stream_path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._plain: dict[int, BinaryIO] = {}
        self._changed = asyncio.Event()
        self.finished = False
        #: Why the log could not be written (the disk is full...); later writes are dropped, so the
        #: job's output pipes are still drained and the job runs to its end.
        self.failed: str | None = None
        self._good = self._stream.seek(0, os.SEEK_END)  # the end of the last whole record

    def write(self, source: int, content: bytes, path: str = "") -> None:
        if not content or self._stream.closed or self.failed is not None:
            return
        p = path.encode()
        record = HEADER.pack(MAGIC, source, time.time(), len(content), len(p)) + p + content
        try:
            _write_all(self._stream, record)
            self._good += len(record)
            if source in (SOURCE_OUT, SOURCE_ERR):
                f = self._plain.get(source)
                if f is None:
                    name = "stdout.log" if source == SOURCE_OUT else "stderr.log"
                    f = self._plain[source] = open(self.dir / name, "ab", buffering=0)  # noqa: SIM115
                _write_all(f, content)
        except OSError as e:
            self._fail(e)
        self._wake()

    def _fail(self, e: OSError) -> None:
        """Stop writing: cut the record stream back to its last whole record (readers never see
        half a record), drop the plain ``stdout.log`` / ``stderr.log`` copies (the stream holds the
        same bytes; removing them gives the server room to record the job's end) and say why."""
        self.failed = f"could not write the job's log into the server's state dir: {e.strerror or e}"
        with contextlib.suppress(OSError):
            os.ftruncate(self._stream.fileno(), self._good)
        for source, f in list(self._plain.items()):
            f.close()
            del self._plain[source]
        for name in ("stdout.log", "stderr.log"):
            with contextlib.suppress(OSError):
                (self.dir / name).unlink()

    def system(self, message: str) -> None:
        """A line of the ``.system.log`` stream."""
        self.write(SOURCE_FILE, (message.rstrip("\n") + "\n").encode(), SYSTEM_LOG)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> None:
        ev = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)

    def finish(self) -> None:
        self.finished = True
        self.close()
        self._wake()

    def close(self) -> None:
        self._stream.close()
        for f in self._plain.values():
            f.close()
        self._plain.clear()


def _write_all(f: BinaryIO, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file; a short write (a full disk) is an OSError."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


class LogStore:
    """Every job's log under ``root/<job_id>/logs``; live writers are kept in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._live: dict[str, JobLog] = {}
        self._opened = asyncio.Event()  # set (and replaced) whenever a job's log opens

    def dir(self, job_id: str) -> Path:
        return self.root / job_id / "logs"

    def open(self, job_id: str) -> JobLog:
        log = self._live.get(job_id)
        if log is None:
            log = self._live[job_id] = JobLog(self.dir(job_id))
            self._opened.set()
            self._opened = asyncio.Event()
        return log

    async def _wait_opened(self, timeout: float) -> None:
        ev = self._opened
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)

    def finish(self, job_id: str) -> None:
        log = self._live.pop(job_id, None)
        if log is not None:
            log.finish()

    def plain_files(self, job_id: str) -> list[Path]:
        d = self.dir(job_id)
        return [p for p in (d / "stdout.log", d / "stderr.log") if p.exists()]

    def size(self, job_id: str) -> int:
        try:
            return (self.dir(job_id) / "stream.bin").stat().st_size
        except FileNotFoundError:
            return 0

    async def follow(
        self, job_id: str, offset: int, is_final: Callable[[], bool], poll: float = 1.0
    ) -> AsyncIterator[tuple[list[LogRecord], int]]:
        """Batches of records from ``offset`` (-1: from now), live until the job is final."""
        path = self.dir(job_id) / "stream.bin"
        if offset < -1:
            raise InvalidArgument(f"must be >= -1, got {offset}", field="offset")
        if offset == -1:
            offset = self.size(job_id)
        size = self.size(job_id)
        if offset > size:
            raise InvalidArgument(f"{offset} is past the end of the log ({size} bytes)", field="offset")
        f: BinaryIO | None = None
        try:
            while True:
                live = self._live.get(job_id)
                final = is_final()
                if f is None and path.exists():
                    f = open(path, "rb")  # noqa: SIM115
                    f.seek(offset)
                    head = f.read(2)
                    if len(head) == 2 and head != MAGIC:
                        raise InvalidArgument(
                            f"{offset} is not a record boundary of this job's log", field="offset"
                        )
                    f.seek(offset)
                batch: list[LogRecord] = []
                if f is not None:
                    batch, offset = _read_batch(f, offset)
                if batch:
                    yield batch, offset
                    continue
                if final and (live is None or live.finished):
                    return
                if live is not None:
                    await live.changed(poll)
                else:  # not started yet: wake as soon as any job's log opens
                    await self._wait_opened(poll)
        finally:
            if f is not None:
                f.close()


def _read_batch(f: BinaryIO, offset: int) -> tuple[list[LogRecord], int]:
    out: list[LogRecord] = []
    total = 0
    while total < MAX_BATCH:
        head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            break
        magic, source, created, clen, plen = HEADER.unpack(head)
        if magic != MAGIC:
            raise InvalidArgument(f"corrupt log record at {offset}", field="offset")
        body = f.read(plen + clen)
        if len(body) < plen + clen:
            break  # a record still being written
        out.append(LogRecord(source, created, body[:plen].decode(), body[plen:]))
        offset += HEADER.size + plen + clen
        total += clen
    f.seek(offset)
    return out, offset
