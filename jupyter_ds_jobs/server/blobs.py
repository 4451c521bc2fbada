"""Content-addressed blob store (sha256) with HMAC-signed, expiring URLs.

A blob lives at ``root/ab/abcdef...``.  Writes go to ``root/tmp`` first and are
renamed into place only after their size and sha256 check out, so a reader
never sees a half-written blob. Running out of disk while writing (ENOSPC, EDQUOT, EFBIG)
raises ``ResourceExhausted`` naming what could not be written (:func:`disk_full`); the half
written temp file is removed, and nothing already stored is touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

from jupyter_ds_jobs.common.connection import blob_path
from jupyter_ds_jobs.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted

__all__ = ["SHA256_RE", "BlobStore", "BlobWriter", "disk_full"]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
#: What a write answers when the disk (or the process's file size limit) has no room.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def disk_full(what: str) -> Iterator[None]:
    """Turn running out of room while writing ``what`` into ``ResourceExhausted`` naming it."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL:
            raise
        raise ResourceExhausted(f"could not write {what}: {os.strerror(e.errno)}") from e


class BlobWriter:
    """Streams bytes into a temp file, hashing as it goes; :meth:`commit` checks and publishes."""

    def __init__(
        self,
        store: BlobStore,
        expect_sha: str | None = None,
        expect_size: int | None = None,
        what: str = "",
    ) -> None:
        self.store = store
        self.expect_sha = expect_sha
        self.expect_size = expect_size
        self.what = what or (f"blob {expect_sha}" if expect_sha else "a blob")
        # Known too large for the disk: refused at the first write, so that an HTTP upload is
        # answered (507) after its body, which a client sending it would not read before.
        self.refused: ResourceExhausted | None = None
        free = shutil.disk_usage(store.tmp).free
        if expect_size is not None and expect_size > free:
            msg = f"could not write {self.what} ({expect_size} bytes): {free} bytes free in the server's state dir"
            self.refused = ResourceExhausted(msg)
        self._hash = hashlib.sha256()
        self.size = 0
        with disk_full(self.what):
            fd, name = _mkstemp(store.tmp)
        self.tmp_path = Path(name)
        self._f: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        assert self._f is not None
        if self.refused is not None:
            raise self.refused
        self.size += len(data)
        if self.expect_size is not None and self.size > self.expect_size:
            raise InvalidArgument(f"body is larger than the declared {self.expect_size} bytes", field="size")
        self._hash.update(data)
        with disk_full(self.what):
            self._f.write(data)

    def commit(self) -> tuple[str, int]:
        assert self._f is not None
        sha = self._hash.hexdigest()
        try:
            if self.refused is not None:
                raise self.refused
            with disk_full(self.what):
                f, self._f = self._f, None
                f.close()
            if self.expect_size is not None and self.size != self.expect_size:
                raise InvalidArgument(f"got {self.size} bytes, expected {self.expect_size}", field="size")
            if self.expect_sha is not None and sha != self.expect_sha:
                raise InvalidArgument(f"content has sha256 {sha}, expected {self.expect_sha}", field="sha256")
            with disk_full(self.what):
                self.store.publish(self.tmp_path, sha)
        finally:
            self.tmp_path.unlink(missing_ok=True)
        return sha, self.size

    def abort(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):  # the flush of a full disk fails again: drop it
                self._f.close()
            self._f = None
        self.tmp_path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path, secret: bytes, base_url: str = "", url_ttl: float = 3600.0) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # half-written uploads of a previous run
            stale.unlink(missing_ok=True)
        self.secret = secret
        self.base_url = base_url
        self.url_ttl = url_ttl

    @staticmethod
    def load_secret(path: Path) -> bytes:
        """The server's signing key, made once and kept (mode 0600) so URLs survive a restart."""
        try:
            return bytes.fromhex(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            key = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex())
            return key

    def path(self, sha: str) -> Path:
        if not SHA256_RE.match(sha):
            raise InvalidArgument(f"{sha!r} is not a lowercase hex sha256", field="sha256")
        return blob_path(self.root, sha)

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def changed_at(self, sha: str) -> float:
        """When the blob was last published or linked (its inode change time); 0 if absent."""
        try:
            return self.path(sha).stat().st_ctime
        except FileNotFoundError:
            return 0.0

    def publish(self, tmp_file: Path, sha: str) -> None:
        dest = self.path(sha)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp_file, dest)

    def writer(self, expect_sha: str | None = None, expect_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, expect_sha, expect_size)

    def add_file(self, src: Path | BinaryIO, what: str = "") -> tuple[str, int]:
        """Copy a file (a path, or a file open for reading) into the store, streamed and hashed
        in one pass: the blob is a copy, never a link to ``src``. Return (sha256, size)."""
        with open(src, "rb") if isinstance(src, Path) else src as f:
            w = BlobWriter(self, what=what or str(src))
            try:
                while chunk := f.read(CHUNK):
                    w.write(chunk)
            except BaseException:
                w.abort()
                raise
            return w.commit()

    def copy_to(self, sha: str, dest: Path) -> None:
        with disk_full(str(dest)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path(sha), dest)

    def delete(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)

    def all(self) -> list[str]:
        return [p.name for p in self.root.glob("??/*") if SHA256_RE.match(p.name)]

    # -- signed URLs ----------------------------------------------------------
    def _sig(self, method: str, sha: str, exp: int, size: int | None) -> str:
        msg = f"{method}\n{sha}\n{exp}\n{'' if size is None else size}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def signed_url(self, method: str, sha: str, size: int | None = None, ttl: float | None = None) -> str:
        exp = int(time.time() + (self.url_ttl if ttl is None else ttl))
        q: dict[str, str | int] = {"exp": exp}
        if size is not None:
            q["size"] = size
        q["sig"] = self._sig(method, sha, exp, size)
        return f"{self.base_url}/blobs/{sha}?{urlencode(q)}"

    def verify(self, method: str, sha: str, exp: str | None, sig: str | None, size: str | None) -> int | None:
        """Check a signed request; return the signed size (PUT) or None. Raises PermissionDenied."""
        if not exp or not sig:
            raise PermissionDenied("URL is not signed")
        try:
            exp_i = int(exp)
            size_i = int(size) if size is not None else None
        except ValueError:
            raise PermissionDenied("malformed signed URL") from None
        want = self._sig(method, sha, exp_i, size_i)
        if not hmac.compare_digest(want, sig):
            raise PermissionDenied("bad URL signature")
        if exp_i < time.time():
            raise PermissionDenied("signed URL has expired")
        return size_i


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=directory, prefix="up-")
