"""SQLite (WAL) state of the job server: jobs, operations and file references.

Jobs and operations are stored as their serialized protos plus the few columns
that queries need.  Times are REAL seconds since the epoch (:func:`seconds` and
:func:`set_seconds` convert).  An operation's ``kind`` is an :class:`OpKind` value.
Blob references are rows of ``job_files``; a blob whose sha256 no row names is
garbage (the sweeper drops it, see :meth:`Store.referenced`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import NotFound
from jupyter_ds_jobs.server.validation import shown

__all__ = ["FileRef", "OpKind", "OperationRow", "Store", "seconds", "set_seconds"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    created_at REAL NOT NULL,
    data_expires_at REAL,
    data_cleared INTEGER NOT NULL DEFAULT 0,
    execute_op TEXT,
    pgid INTEGER,
    progress BLOB,
    job BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project_id, created_at DESC);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    job_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    error_code INTEGER,
    error_message TEXT,
    response BLOB
);
CREATE INDEX IF NOT EXISTS operations_job ON operations (job_id);
CREATE TABLE IF NOT EXISTS job_files (
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    var TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    compression INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS job_files_job ON job_files (job_id);
CREATE INDEX IF NOT EXISTS job_files_sha ON job_files (sha256);
"""


class OpKind(StrEnum):
    """What an operation does; the value is what ``operations.kind`` stores."""

    CREATE = "create"
    CLONE = "clone"
    EXECUTE = "execute"
    DELETE = "delete"
    DELETE_DATA = "delete_data"
    DELETE_ALL_DATA = "delete_all_data"


@dataclass(frozen=True)
class FileRef:
    kind: str  # input | module | output | log
    path: str
    var: str
    sha256: str
    size: int
    compression: int

    def to_proto(self) -> jobs_pb2.File:
        return jobs_pb2.File(
            desc=jobs_pb2.FileDesc(path=self.path, var=self.var),
            sha256=self.sha256,
            size_bytes=self.size,
            compression_type=self.compression,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class OperationRow:
    id: str
    kind: OpKind
    job_id: str
    project_id: str
    created_at: float
    modified_at: float
    done: bool
    error_code: int | None
    error_message: str | None
    response: bytes | None


class Store:
    """Synchronous SQLite access; called from the server's event loop thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- jobs ---------------------------------------------------------------
    def insert_job(self, job: jobs_pb2.Job, files: Iterable[FileRef]) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO jobs (id, project_id, status, created_at, data_expires_at, job)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.project_id,
                    job.status,
                    seconds(job.created_at),
                    seconds(job.data_expires_at) if job.HasField("data_expires_at") else None,
                    job.SerializeToString(),
                ),
            )
            self._insert_files(job.id, files)

    def save_job(self, job: jobs_pb2.Job) -> None:
        cur = self._db.execute(
            "UPDATE jobs SET status = ?, data_expires_at = ?, data_cleared = ?, job = ? WHERE id = ?",
            (
                job.status,
                seconds(job.data_expires_at) if job.HasField("data_expires_at") else None,
                int(job.data_cleared),
                job.SerializeToString(),
                job.id,
            ),
        )
        if cur.rowcount == 0:
            raise NotFound(f"job {job.id!r} not found")

    def get_job(self, job_id: str) -> jobs_pb2.Job:
        row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {shown(job_id)} not found")
        return jobs_pb2.Job.FromString(row[0])

    def delete_job(self, job_id: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._db.execute("DELETE FROM job_files WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM operations WHERE job_id = ?", (job_id,))

    def list_jobs(
        self,
        project_id: str,
        statuses: Iterable[int] | None,
        limit: int,
        after: tuple[float, str] | None,
    ) -> list[jobs_pb2.Job]:
        """Newest first; ``after``: (created_at seconds, id) of the last job of the previous page."""
        return list(self.iter_jobs(project_id, statuses, limit, after))

    def iter_jobs(
        self,
        project_id: str,
        statuses: Iterable[int] | None,
        limit: int,
        after: tuple[float, str] | None,
    ) -> Iterator[jobs_pb2.Job]:
        """:meth:`list_jobs`, one job at a time (a page stops reading when it is full)."""
        sql = "SELECT job FROM jobs WHERE 1 = 1"
        args: list[object] = []
        if project_id:
            sql += " AND project_id = ?"
            args.append(project_id)
        if statuses is not None:
            st = list(statuses)
            sql += f" AND status IN ({', '.join('?' * len(st))})"
            args.extend(st)
        if after is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            args.extend([after[0], after[0], after[1]])
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        cur = self._db.execute(sql, args)
        try:
            for r in cur:
                yield jobs_pb2.Job.FromString(r[0])
        finally:
            cur.close()  # a page that stops early ends the statement now, not at garbage collection

    def jobs_with_status(self, statuses: Iterable[int]) -> list[jobs_pb2.Job]:
        st = list(statuses)
        q = f"SELECT job FROM jobs WHERE status IN ({', '.join('?' * len(st))})"
        return [jobs_pb2.Job.FromString(r[0]) for r in self._db.execute(q, st)]

    def expired_jobs(self, now: float, final: Iterable[int]) -> list[str]:
        st = list(final)
        q = (
            "SELECT id FROM jobs WHERE data_cleared = 0 AND data_expires_at IS NOT NULL AND data_expires_at <= ?"
            f" AND status IN ({', '.join('?' * len(st))})"
        )
        return [r[0] for r in self._db.execute(q, [now, *st])]

    def project_first_seen(self, project_id: str) -> float | None:
        """When the project's first job was created (projects are implicit on this server)."""
        row = self._db.execute(
            "SELECT MIN(created_at) FROM jobs WHERE project_id = ?", (project_id,)
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def set_execute_op(self, job_id: str, op_id: str | None) -> None:
        self._db.execute("UPDATE jobs SET execute_op = ? WHERE id = ?", (op_id, job_id))

    def execute_op(self, job_id: str) -> str | None:
        row = self._db.execute("SELECT execute_op FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def set_pgid(self, job_id: str, pgid: int | None) -> None:
        self._db.execute("UPDATE jobs SET pgid = ? WHERE id = ?", (pgid, job_id))

    def pgid(self, job_id: str) -> int | None:
        row = self._db.execute("SELECT pgid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def set_progress(self, job_id: str, progress: jobs_pb2.JobProgress) -> None:
        self._db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (progress.SerializeToString(), job_id))

    def progress(self, job_id: str) -> jobs_pb2.JobProgress | None:
        row = self._db.execute("SELECT progress FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return jobs_pb2.JobProgress.FromString(row[0]) if row and row[0] else None

    # -- files --------------------------------------------------------------
    def _insert_files(self, job_id: str, files: Iterable[FileRef]) -> None:
        self._db.executemany(
            "INSERT INTO job_files (job_id, kind, path, var, sha256, size, compression) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(job_id, f.kind, f.path, f.var, f.sha256, f.size, f.compression) for f in files],
        )

    def add_files(self, job_id: str, files: Iterable[FileRef]) -> None:
        with self.transaction():
            self._insert_files(job_id, files)

    def files(self, job_id: str) -> list[FileRef]:
        q = "SELECT kind, path, var, sha256, size, compression FROM job_files WHERE job_id = ? ORDER BY rowid"
        return [FileRef(*r) for r in self._db.execute(q, (job_id,))]

    def drop_files(self, job_id: str) -> list[str]:
        """Forget every file of a job; return the sha256s it referenced."""
        with self.transaction():
            shas = [
                r[0]
                for r in self._db.execute("SELECT DISTINCT sha256 FROM job_files WHERE job_id = ?", (job_id,))
            ]
            self._db.execute("DELETE FROM job_files WHERE job_id = ?", (job_id,))
        return shas

    def is_referenced(self, sha256: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM job_files WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone()
            is not None
        )

    def referenced(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT DISTINCT sha256 FROM job_files")}

    # -- operations ---------------------------------------------------------
    def insert_operation(self, op_id: str, kind: OpKind, job_id: str, project_id: str) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO operations (id, kind, job_id, project_id, created_at, modified_at) VALUES (?, ?, ?, ?, ?, ?)",
            (op_id, kind.value, job_id, project_id, now, now),
        )

    def finish_operation(
        self, op_id: str, *, response: bytes | None = None, error: tuple[int, str] | None = None
    ) -> None:
        self._db.execute(
            "UPDATE operations SET done = 1, modified_at = ?, response = ?, error_code = ?, error_message = ?"
            " WHERE id = ?",
            (time.time(), response, error[0] if error else None, error[1] if error else None, op_id),
        )

    def touch_operation(self, op_id: str) -> None:
        self._db.execute("UPDATE operations SET modified_at = ? WHERE id = ?", (time.time(), op_id))

    def get_operation(self, op_id: str) -> OperationRow:
        row = self._db.execute(
            "SELECT id, kind, job_id, project_id, created_at, modified_at, done, error_code, error_message, response"
            " FROM operations WHERE id = ?",
            (op_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"operation {shown(op_id)} not found")
        return OperationRow(
            row[0],
            OpKind(row[1]),
            row[2],
            row[3],
            row[4],
            row[5],
            bool(row[6]),
            row[7],
            row[8],
            row[9],
        )


def seconds(ts: Timestamp) -> float:
    """A Timestamp as the REAL seconds of a time column."""
    return ts.ToNanoseconds() / 1e9


def set_seconds(ts: Timestamp, t: float) -> None:
    """Set a Timestamp field to the REAL seconds of a time column (or of a log record).

    In place: the messages' Timestamp class is that of the package's private descriptor pool
    (jupyter_ds_jobs._proto._pool), not google.protobuf's, so a Timestamp made here could not be
    copied into them."""
    ts.FromNanoseconds(round(t * 1e9))
