"""Moving job files: hash and zip local files, upload them, download and check outputs.

* :func:`prepare_files` turns :class:`~jupyter_ds_jobs.packaging.jobspec.LocalFile` entries into
  ``jobs_pb2.File`` messages. A file's sha256 comes from a :class:`HashCache` keyed by (path,
  size, mtime), so an unchanged 1 GiB input is not hashed again; a directory is zipped
  deterministically (same tree, same bytes) and the ZIP is kept in the client cache under a
  fingerprint of the tree's names, sizes and mtimes, so an unchanged directory is not zipped again.
* :func:`upload_files` streams ``PUT`` bodies to signed URLs, a few at a time, each distinct
  sha256 once.
* :func:`download_url` streams a ``GET`` into a temporary name beside the destination, resumes a
  dropped transfer with ``Range``, checks size and sha256 and renames atomically: an interrupted
  download never leaves a partial file under the final name.

Everything streams; no file is read whole into memory. Imports nothing from IPython or the server.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import secrets
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.common.bundle import HashCache, zip_path
from jupyter_ds_jobs.common.contract import MAX_FILE_BYTES
from jupyter_ds_jobs.common.errors import (
    DsJobsError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_http,
)
from jupyter_ds_jobs.core.tls import ssl_context

__all__ = [
    "LocalFile",
    "PreparedFile",
    "ProgressTracker",
    "TransferProgress",
    "cache_dir",
    "download_url",
    "hash_cache",
    "prepare_files",
    "trust_ca_file",
    "upload_files",
]

CHUNK = 1 << 20
MAX_UPLOAD_BYTES = MAX_FILE_BYTES  # DataSphere refuses larger files
HTTP_TIMEOUT = 60.0
RETRIES = 3
MAX_CACHED_ZIP_BYTES = 4 * 2**30


#: Files transferred at once.
PARALLEL = 4


def cache_dir() -> Path:
    """The client cache (``DS_JOBS_CACHE_DIR``, else ``$XDG_CACHE_HOME/jupyter_ds_jobs``)."""
    env = os.environ.get("DS_JOBS_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jupyter_ds_jobs"


_hash_caches: dict[Path, HashCache] = {}
_hash_lock = threading.Lock()


def hash_cache(directory: Path | None = None) -> HashCache:
    """The process-wide sha256 cache of ``directory`` (default: the client cache)."""
    path = (directory or cache_dir()) / "sha256-cache.json"
    with _hash_lock:
        hc = _hash_caches.get(path)
        if hc is None:
            hc = _hash_caches[path] = HashCache(path)
        return hc


# --------------------------------------------------------------------------- progress


@dataclass
class TransferProgress:
    """A snapshot of one transfer phase, given to progress callbacks.

    ``phase`` is ``"hash"``, ``"zip"``, ``"upload"`` or ``"download"``; byte counts are of the
    whole phase; ``current`` names the file last worked on; ``finished`` is set once at the end.
    """

    phase: str
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int
    current: str = ""
    finished: bool = False
    elapsed: float = 0.0


ProgressCallback = Callable[[TransferProgress], None]


class ProgressTracker:
    """Thread-safe totals of one phase; calls ``callback`` at most every ``interval`` seconds."""

    def __init__(
        self,
        phase: str,
        total_bytes: int,
        files_total: int,
        callback: ProgressCallback | None,
        interval: float = 0.1,
    ) -> None:
        self.phase = phase
        self.total_bytes = total_bytes
        self.files_total = files_total
        self.callback = callback
        self.interval = interval
        self.done_bytes = 0
        self.files_done = 0
        self.current = ""
        self._t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def snapshot(self, finished: bool = False) -> TransferProgress:
        return TransferProgress(
            self.phase,
            self.done_bytes,
            self.total_bytes,
            self.files_done,
            self.files_total,
            self.current,
            finished,
            time.monotonic() - self._t0,
        )

    def add(self, n: int, current: str = "", file_done: bool = False) -> None:
        with self._lock:
            self.done_bytes += n
            if current:
                self.current = current
            if file_done:
                self.files_done += 1
            now = time.monotonic()
            if self.callback is None or (now - self._last < self.interval and not file_done):
                return
            self._last = now
            snap = self.snapshot()
        self.callback(snap)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.snapshot(finished=True))


# --------------------------------------------------------------------------- preparing


@dataclass
class LocalFile:
    """A file or directory on this machine that the client uploads.

    ``desc_path`` and ``var`` go into ``FileDesc``; ``zip`` means the client zips ``local_path`` (its
    entries relative to the path's parent) and sends compression ZIP.
    """

    local_path: Path
    desc_path: str
    var: str
    zip: bool


@dataclass
class PreparedFile:
    """A local file ready to upload: what to send (``upload_path``) and its ``File`` message."""

    local: LocalFile
    upload_path: Path
    file: jobs_pb2.File = field(default_factory=jobs_pb2.File)


def _tree_fingerprint(src: Path) -> str:
    """sha256 of the names, sizes and mtimes under ``src`` (stat only, no reading)."""
    h = hashlib.sha256(f"v1\0{src.resolve()}\0".encode())
    rows: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        rows.append(f"d\0{rel}")
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            rows.append(f"f\0{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode & 0o777}")
    for r in sorted(rows):
        h.update(r.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _zip_cached(src: Path, zips: Path) -> tuple[Path, str]:
    """A deterministic ZIP of ``src`` and its sha256, from the cache; made when the tree changed.

    ``<fingerprint>.zip`` sits beside ``<fingerprint>.sha256`` (written after the ZIP), so a
    cached ZIP is neither re-made nor re-hashed.
    """
    zips.mkdir(parents=True, exist_ok=True)
    key = _tree_fingerprint(src)
    dest = zips / f"{key}.zip"
    side = zips / f"{key}.sha256"
    try:
        sha, size = side.read_text().split()
        if dest.stat().st_size == int(size):
            with contextlib.suppress(OSError):
                os.utime(dest)  # most recently used
            return dest, sha
    except (OSError, ValueError):
        pass
    sha, n = zip_path(src, dest)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{sha} {n}\n")
    os.replace(tmp, side)
    _prune_zips(zips, keep=dest)
    return dest, sha


def _prune_zips(zips: Path, keep: Path, limit: int = MAX_CACHED_ZIP_BYTES) -> None:
    entries = []
    for p in zips.glob("*.zip"):
        with contextlib.suppress(OSError):
            st = p.stat()
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(e[1] for e in entries)
    for _mtime, size, p in sorted(entries):
        if total <= limit:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            p.with_suffix(".sha256").unlink(missing_ok=True)
            total -= size


def prepare_files(
    files: Sequence[LocalFile],
    *,
    cache: HashCache | None = None,
    zip_dir: Path | None = None,
    progress: ProgressCallback | None = None,
) -> list[PreparedFile]:
    """Hash (and zip) every local file; return them with their ``File`` messages, in order."""
    hc = cache or hash_cache()
    zips = zip_dir or cache_dir() / "zips"
    out: list[PreparedFile] = []
    sizes = []
    for f in files:
        if not f.local_path.exists():
            raise NotFound(f"no such file or directory: {f.local_path}")
        sizes.append(f.local_path.stat().st_size if f.local_path.is_file() and not f.zip else 0)
    tracker = ProgressTracker("hash", sum(sizes), len(files), progress)
    for f, size in zip(files, sizes, strict=True):
        src = f.local_path
        if f.zip:
            tracker.current = src.name
            upload, sha = _zip_cached(src, zips)
            compression = jobs_pb2.ZIP
        else:
            if not src.is_file():
                raise InvalidArgument(f"{src} is not a regular file (directories must be zipped)")
            upload = src
            compression = jobs_pb2.NONE
            sha = hc.sha256(upload)
        up_size = upload.stat().st_size
        if up_size > MAX_UPLOAD_BYTES:
            raise InvalidArgument(
                f"{src} is {up_size / 2**30:.1f} GiB; at most {MAX_UPLOAD_BYTES // 2**30} GiB per file"
            )
        msg = jobs_pb2.File(
            desc=jobs_pb2.FileDesc(path=f.desc_path, var=f.var),
            sha256=sha,
            size_bytes=up_size,
            compression_type=compression,
        )
        out.append(PreparedFile(f, upload, msg))
        tracker.add(size, src.name, file_done=True)
    tracker.finish()
    return out


# --------------------------------------------------------------------------- HTTP


_trusted_cas: list[Path] = []
_https: ssl.SSLContext | None = None
_https_lock = threading.Lock()


def trust_ca_file(ca_file: Path) -> None:
    """Trust ``ca_file`` (PEM) beside the system's roots for this process's HTTPS transfers
    (a job server behind a private CA signs its URLs with that server's certificate)."""
    global _https
    path = Path(ca_file).expanduser().resolve()
    with _https_lock:
        if path not in _trusted_cas:
            ssl_context(path)  # a clear error for a bad file, before it is kept
            _trusted_cas.append(path)
            _https = None


def _https_context() -> ssl.SSLContext:
    global _https
    with _https_lock:
        if _https is None:
            ctx = ssl_context(None)
            for ca in _trusted_cas:
                ctx.load_verify_locations(cafile=str(ca))
            _https = ctx
        return _https


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=_https_context()), target
    if parts.scheme == "http":
        return http.client.HTTPConnection(parts.netloc, timeout=timeout), target
    raise InvalidArgument(f"unsupported URL scheme {parts.scheme!r} in {url[:80]}")


def _put_once(url: str, path: Path, size: int, tracker: ProgressTracker, timeout: float) -> None:
    conn, target = _connection(url, timeout)
    sent = 0
    try:
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(size))
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("User-Agent", f"jupyter_ds_jobs/{__version__}")
        conn.endheaders()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                conn.send(chunk)
                sent += len(chunk)
                tracker.add(len(chunk), path.name)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status not in (200, 201, 204):
            raise from_http(resp.status, body, f"upload of {path.name}")
    except BaseException:
        tracker.add(-sent)
        raise
    finally:
        conn.close()


def _retrying(fn: Callable[[], None], what: str, retries: int = RETRIES) -> None:
    delay = 0.2
    for attempt in range(retries + 1):
        try:
            fn()
            return
        except (OSError, http.client.HTTPException) as e:
            if attempt == retries:
                raise Unavailable(f"{what} failed: {type(e).__name__}: {e}") from None
        except Unavailable:
            if attempt == retries:
                raise
        time.sleep(delay)
        delay *= 2


def upload_files(
    items: Iterable[tuple[str, PreparedFile]],
    *,
    parallel: int = PARALLEL,
    progress: ProgressCallback | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> int:
    """PUT each ``(url, prepared file)``; each distinct sha256 once. Returns the bytes sent."""
    todo: dict[str, tuple[str, PreparedFile]] = {}
    for url, pf in items:
        todo.setdefault(pf.file.sha256, (url, pf))
    total = sum(pf.file.size_bytes for _, pf in todo.values())
    tracker = ProgressTracker("upload", total, len(todo), progress)

    def one(url: str, pf: PreparedFile) -> None:
        size = pf.upload_path.stat().st_size
        if size != pf.file.size_bytes:
            raise FailedPrecondition(f"{pf.upload_path} changed while being uploaded")
        _retrying(
            lambda: _put_once(url, pf.upload_path, size, tracker, timeout),
            f"upload of {pf.local.local_path.name}",
        )
        tracker.add(0, pf.upload_path.name, file_done=True)

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(todo)))) as pool:
            futures = [pool.submit(one, url, pf) for url, pf in todo.values()]
            for fut in futures:
                fut.result()
    tracker.finish()
    return total


def _get_into(
    url: str,
    f: object,
    start: int,
    size: int | None,
    tracker: ProgressTracker,
    timeout: float,
    name: str,
    hasher: _Digest | None = None,
) -> int:
    """GET ``url`` from byte ``start`` appending to ``f`` (and to ``hasher``, when given);
    return the bytes now in ``f``."""
    assert hasattr(f, "write") and hasattr(f, "truncate") and hasattr(f, "seek")
    conn, target = _connection(url, timeout)
    try:
        headers = {"User-Agent": f"jupyter_ds_jobs/{__version__}"}
        if start:
            headers["Range"] = f"bytes={start}-"
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if resp.status == 200 and start:  # the server ignored Range: start over
            tracker.add(-start)
            f.seek(0)
            f.truncate()
            start = 0
            if hasher is not None:
                hasher.reset()
        elif resp.status not in (200, 206):
            raise from_http(resp.status, resp.read(), f"download of {name}")
        got = start
        while chunk := resp.read(CHUNK):
            f.write(chunk)
            if hasher is not None:
                hasher.update(chunk)
            got += len(chunk)
            tracker.add(len(chunk), name)
        length = resp.getheader("Content-Length")
        if length is not None and got - start < int(length):
            raise http.client.IncompleteRead(b"", int(length) - (got - start))
        return got
    finally:
        conn.close()


class _Digest:
    """A resettable sha256."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def rehash(self, f: BinaryIO, n: int) -> None:
        """Restart from the first ``n`` bytes of ``f``; leaves ``f`` positioned at ``n``."""
        self.reset()
        f.seek(0)
        left = n
        while left > 0 and (block := f.read(min(CHUNK, left))):
            self.update(block)
            left -= len(block)
        f.seek(n)


def copy_local(src: Path, dest: Path, *, tracker: ProgressTracker | None = None) -> Path:
    """Copy a blob of a job server on this machine to ``dest`` (kernel-side copy, temp + rename).

    A copy, not a link: changing the downloaded file must never change the server's store.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(dest)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if tracker is not None:
        tracker.add(dest.stat().st_size, dest.name)
    return dest


def download_url(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    tracker: ProgressTracker | None = None,
    timeout: float = HTTP_TIMEOUT,
    retries: int = RETRIES,
) -> Path:
    """Stream ``url`` to ``dest`` through a temporary file, resuming dropped transfers.

    The bytes are checked against ``size`` and ``sha256`` before ``dest`` is replaced atomically.
    On any failure the temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tr = tracker or ProgressTracker("download", size or 0, 1, None)
    fd, tmp = _temp_beside(dest)
    counted = 0
    try:
        # The sha256 is taken as the bytes arrive (no second read of the file); a resumed
        # transfer rehashes what it keeps.
        h = _Digest()
        with os.fdopen(fd, "w+b") as f:
            got = 0
            delay = 0.2
            for attempt in range(retries + 1):
                try:
                    before = tr.done_bytes
                    got = _get_into(url, f, got, size, tr, timeout, dest.name, h)
                    counted += tr.done_bytes - before
                    break
                except (OSError, http.client.HTTPException) as e:
                    counted += tr.done_bytes - before
                    f.flush()
                    got = f.tell()
                    h.rehash(f, got)
                    if attempt == retries:
                        raise Unavailable(
                            f"download of {dest.name} failed after {retries + 1} attempts "
                            f"({got} bytes received): {type(e).__name__}: {e}"
                        ) from None
                    time.sleep(delay)
                    delay *= 2
        if size is not None and got != size:
            raise DsJobsError(f"download of {dest.name}: got {got} bytes, expected {size}")
        if sha256 and h.hexdigest() != sha256:
            raise DsJobsError(
                f"download of {dest.name}: sha256 {h.hexdigest()} differs from the expected {sha256}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tr.add(-counted)
        raise
    return dest


def _temp_beside(dest: Path) -> tuple[int, Path]:
    """A new, empty ``.NAME.XXXXXXXX.part`` beside ``dest``, opened read-write.

    Created with mode 0644 that the kernel narrows by the process umask, like any file a program
    writes: reading the umask would mean setting it (``os.umask``), which changes it for every
    thread of the process at that moment (another download, the files a Jupyter kernel writes).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.part"
        try:
            return os.open(tmp, flags, 0o644), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(dest.parent))  # pragma: no cover
