"""What the command line prints: job output and its own messages (:class:`Console`), progress
bars, and the formatting of sizes, times and tables.

Job stdout goes to stdout and job stderr to stderr, byte for byte; everything else goes to stderr.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, TextIO

from jupyter_ds_jobs.common.errors import InvalidArgument

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
    from jupyter_ds_jobs.core.transfer import TransferProgress

__all__ = ["Console", "format_duration", "format_time", "human_bytes", "parse_size", "table"]

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def parse_size(text: str) -> int:
    """``20G``, ``512 MiB``, ``1.5t``, ``100`` (bytes) -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * _SIZE_UNITS[unit])
    except ValueError:
        raise InvalidArgument(f"bad size {text!r}: use a number with K, M, G or T") from None


def format_time(ts: Timestamp) -> str:
    """Local time of ``ts``; empty for an unset (zero) timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_duration(job: jobs_pb2.Job) -> str:
    """How long the job ran (runs, while it has not finished), to the second; empty before it started."""
    if not job.HasField("started_at"):
        return ""
    end_ns = job.finished_at.ToNanoseconds() if job.HasField("finished_at") else time.time_ns()
    ns = max(0, end_ns - job.started_at.ToNanoseconds())
    return str(timedelta(seconds=round(ns / 1e9)))


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Console:
    """Job output and the CLI's own messages.

    Job stdout goes to stdout and job stderr to stderr, byte for byte. The CLI's messages,
    progress bars and the status line go to stderr; on a terminal the status line and bars are
    redrawn in place, elsewhere only changes and summaries are printed.
    """

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, *, system_logs: bool = False
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = self.err.isatty()
        self.system_logs = system_logs
        self._status = ""
        self._plain_last = ""
        self._lock = threading.RLock()

    # low level
    def _clear(self) -> None:
        if self.tty and self._status:
            self.err.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.tty and self._status:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.err.write(self._status[: max(cols - 1, 10)])
        self.err.flush()

    def info(self, message: str) -> None:
        with self._lock:
            self._clear()
            self.err.write(message + "\n")
            self._redraw()

    def status(self, text: str, *, plain_key: str | None = None) -> None:
        """The status line (terminal), or one line per change of ``plain_key`` (elsewhere)."""
        with self._lock:
            if self.tty:
                self._clear()
                self._status = text
                self._redraw()
            else:
                key = text if plain_key is None else plain_key
                if key and key != self._plain_last:
                    self._plain_last = key
                    self.err.write(text + "\n")
                    self.err.flush()

    def end_status(self) -> None:
        with self._lock:
            self._clear()
            self._status = ""
            self.err.flush()

    # job logs
    def on_log(self, m: pjs_pb2.LogMessage) -> None:
        with self._lock:
            self._clear()
            if m.WhichOneof("source") == "file_path":
                if self.system_logs:
                    text = m.content.decode("utf-8", "replace")
                    for line in text.splitlines():
                        self.err.write(f"[{m.file_path}] {line}\n")
            else:
                from jupyter_ds_jobs._proto import pjs_pb2 as p

                stream = self.err if m.standard_stream == p.ERR else self.out
                self.out.flush()
                buf = getattr(stream, "buffer", None)
                if buf is not None:
                    buf.write(m.content)
                    buf.flush()
                else:
                    stream.write(m.content.decode("utf-8", "replace"))
                stream.flush()
            self._redraw()

    # transfers and job progress
    def transfer(self, p: TransferProgress) -> None:
        verb = {"hash": "hashing", "zip": "zipping", "upload": "uploading", "download": "downloading"}.get(
            p.phase, p.phase
        )
        if p.finished:
            self.end_status()
            if p.phase in ("upload", "download") and p.files_total:
                rate = p.done_bytes / p.elapsed if p.elapsed > 0 else 0.0
                past = "uploaded" if p.phase == "upload" else "downloaded"
                self.info(
                    f"{past} {p.files_total} file(s), {human_bytes(p.done_bytes)} in {p.elapsed:.1f}s"
                    + (f" ({human_bytes(rate)}/s)" if p.elapsed > 0.5 else "")
                )
            elif p.phase == "hash" and p.elapsed > 1.0:
                self.info(f"hashed {p.files_total} file(s), {human_bytes(p.total_bytes)} in {p.elapsed:.1f}s")
            return
        if not self.tty:
            return
        frac = p.done_bytes / p.total_bytes if p.total_bytes else 0.0
        rate = p.done_bytes / p.elapsed if p.elapsed > 0 else 0.0
        self.status(
            f"{verb} {p.files_done}/{p.files_total} {_bar(frac)} {frac * 100:3.0f}% "
            f"{human_bytes(p.done_bytes)}/{human_bytes(p.total_bytes)} {human_bytes(rate)}/s {p.current}"
        )

    def job_progress(self, job: jobs_pb2.Job, progress: jobs_pb2.JobProgress | None, t0: float) -> None:
        from jupyter_ds_jobs.common.contract import status_name

        st = status_name(job.status)
        msg = progress.message if progress is not None else ""
        pct = int(progress.progress) if progress is not None else 0
        elapsed = time.monotonic() - t0
        if self.tty:
            bar = f" {_bar(pct / 100, 16)} {pct:3d}%" if st == "PREPARING" or (0 < pct < 100) else ""
            self.status(f"job {job.id}: {st}{bar} {msg} ({elapsed:.0f}s)")
        else:
            self.status(f"job {job.id}: {st}{': ' + msg if msg else ''}", plain_key=f"{st}|{msg}")
