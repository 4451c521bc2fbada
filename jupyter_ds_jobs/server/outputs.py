"""A finished job's declared outputs, into the blob store.

* Nothing outside the job's directory gets in. An output whose path resolves outside is refused
  before this module sees it (``runtime.place``). Inside an output directory no symlink is
  followed: one that resolves inside the job dir is stored as a symlink entry of the ZIP (its
  target made relative to where it lies), any other (outside, or a loop) is left out and
  reported (:class:`Skipped` -> a ``FileUploadError`` of the job); files are opened without
  following links, and only regular files are read.
* A blob is its own copy. An output's bytes are copied into the store as they are hashed, never
  hard-linked: the job may have hard-linked a file from outside (``ln /outside/f out``), and a
  later write to that file would change a blob whose name is the sha256 of its bytes.
* Running out of disk (ENOSPC, EDQUOT, EFBIG) raises ``ResourceExhausted`` naming the output;
  what was half written is removed, and no blob already stored is touched.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from jupyter_ds_jobs.common.bundle import zip_path
from jupyter_ds_jobs.common.errors import FailedPrecondition
from jupyter_ds_jobs.server.blobs import BlobStore, disk_full

__all__ = ["Skipped", "store_dir", "store_file"]


@dataclass(frozen=True)
class Skipped:
    """A symlink of an output directory that was left out, and why."""

    arcname: str  # its path in the output's ZIP: 'outdir/sub/link'
    reason: str

    def __str__(self) -> str:
        return f"{self.arcname}: {self.reason}"


def store_file(blobs: BlobStore, src: Path, name: str) -> tuple[str, int]:
    """Copy output file ``src`` (a regular file, links on its path already checked) into the
    store; return (sha256, size)."""
    try:
        fd = os.open(os.path.realpath(src), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:  # swapped for a link since it was checked
        raise FailedPrecondition(f"output file {name!r} cannot be read: {e.strerror}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise FailedPrecondition(f"output file {name!r} is not a regular file")
    return blobs.add_file(f, what=f"output file {name!r} into the server's state dir")


def store_dir(blobs: BlobStore, src: Path, workdir: Path, name: str) -> tuple[str, int, list[Skipped]]:
    """Zip output directory ``src`` (symlinks kept as links or left out, see above) into the
    store; return (sha256, size, the links left out)."""
    root = os.path.realpath(workdir)
    skipped: list[Skipped] = []

    def link_target(link: Path, arcname: str) -> str | None:
        target = os.readlink(link)
        try:
            real = os.path.realpath(link, strict=True)
        except FileNotFoundError:  # dangling: where it would lead
            real = os.path.realpath(link)
        except OSError as e:
            skipped.append(Skipped(arcname, f"symlink to {target!r} not stored: {e.strerror}"))
            return None
        if os.path.commonpath([root, real]) != root:
            skipped.append(Skipped(arcname, f"symlink to {target!r} leads outside the job directory"))
            return None
        return os.path.relpath(real, os.path.realpath(link.parent))

    tmp = blobs.tmp / f"outzip-{os.getpid()}-{secrets.token_hex(8)}.zip"
    try:
        with disk_full(f"output directory {name!r} (zipped) into the server's state dir"):
            sha, size = zip_path(src, tmp, links=link_target)
            if not blobs.exists(sha):
                blobs.publish(tmp, sha)
    finally:
        tmp.unlink(missing_ok=True)
    return sha, size, skipped
