"""A job's files between the server and this machine, above :mod:`~jupyter_ds_jobs.core.transfer`'s
byte streams: the inputs the server asks for after Create (:func:`upload_requested`), and the
files of a job landing under a destination dir (:func:`download_storage_files`: where each lands,
:func:`local_target`; a few at once; ZIP outputs extracted; each checked and renamed into place).

A file that a job server on this machine holds whole in its blob store (``local_blobs``) is
copied from there instead of going through HTTP; the server checked its content when storing it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.bundle import extract_as
from jupyter_ds_jobs.common.connection import blob_path
from jupyter_ds_jobs.common.errors import FailedPrecondition
from jupyter_ds_jobs.core import transfer
from jupyter_ds_jobs.core.results import CreateStats
from jupyter_ds_jobs.core.transfer import PreparedFile, ProgressCallback, ProgressTracker

__all__ = ["download_storage_files", "local_blob", "local_target", "upload_requested"]


def upload_requested(
    wanted: Sequence[jobs_pb2.StorageFile],
    prepared: Sequence[PreparedFile],
    *,
    parallel: int,
    timeout: float,
    progress: ProgressCallback | None,
    started: float,
    prepared_at: float,
) -> CreateStats:
    """Upload the ``prepared`` files that the server asks for (``wanted``: those with a URL),
    matched by path, else by sha256. ``started`` / ``prepared_at`` (``time.monotonic()``) are
    when the create began and when hashing ended, for the returned numbers."""
    by_path = {pf.file.desc.path: pf for pf in prepared}
    by_sha = {pf.file.sha256: pf for pf in prepared}
    items: list[tuple[str, PreparedFile]] = []
    for sf in wanted:
        if not sf.url:
            continue
        pf = by_path.get(sf.file.desc.path) or by_sha.get(sf.file.sha256)
        if pf is None:
            raise FailedPrecondition(f"the server asks for {sf.file.desc.path!r}, which was not sent")
        items.append((sf.url, pf))
    t2 = time.monotonic()
    sent = transfer.upload_files(items, parallel=parallel, progress=progress, timeout=timeout)
    t3 = time.monotonic()
    return CreateStats(
        files=len(prepared),
        bytes_total=sum(pf.file.size_bytes for pf in prepared),
        files_uploaded=len({pf.file.sha256 for _, pf in items}),
        bytes_uploaded=sent,
        prepare_seconds=prepared_at - started,
        upload_seconds=t3 - t2,
        total_seconds=t3 - started,
    )


def local_target(dest: Path, desc_path: str) -> Path:
    """Where a job file lands under ``dest``: its relative path, or its base name when unsafe."""
    p = PurePosixPath(desc_path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return dest / (p.name or "file")
    return dest.joinpath(*p.parts)


def local_blob(local_blobs: Path | None, f: jobs_pb2.File) -> Path | None:
    """The blob of ``f`` in a same-machine server's store (``local_blobs``), when it is there whole."""
    if local_blobs is None or len(f.sha256) != 64:
        return None
    path = blob_path(local_blobs, f.sha256)
    try:
        return path if path.stat().st_size == f.size_bytes else None
    except OSError:
        return None


def _fetch(
    sf: jobs_pb2.StorageFile, target: Path, local_blobs: Path | None, tracker: ProgressTracker
) -> None:
    f = sf.file
    local = local_blob(local_blobs, f)
    if local is not None:
        transfer.copy_local(local, target, tracker=tracker)
    else:
        transfer.download_url(sf.url, target, size=f.size_bytes, sha256=f.sha256, tracker=tracker)


def download_storage_files(
    files: Sequence[jobs_pb2.StorageFile],
    dest: Path = Path("."),
    *,
    local_blobs: Path | None = None,
    extract: bool = True,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Stream each file to a temporary name, check size and sha256, rename atomically.

    A file goes to ``dest / desc.path`` (``dest / basename`` when the path is absolute or has
    ``..``). A ZIP output (a directory) is extracted there unless ``extract`` is False (then
    it is kept as ``<path>.zip``). Returns the paths written.
    """
    dest = Path(dest)
    total = sum(sf.file.size_bytes for sf in files)
    tracker = ProgressTracker("download", total, len(files), progress)

    def one(sf: jobs_pb2.StorageFile) -> Path:
        f = sf.file
        target = local_target(dest, f.desc.path or f.desc.var or f.sha256)
        zipped = f.compression_type == jobs_pb2.ZIP
        if zipped and extract:
            tmp = target.parent / f".{target.name}.download.zip"
            _fetch(sf, tmp, local_blobs, tracker)
            try:
                extract_as(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            if zipped:
                target = target.with_name(target.name + ".zip")
            _fetch(sf, target, local_blobs, tracker)
        tracker.add(0, target.name, file_done=True)
        return target

    if len(files) > 1:  # a few at once, like uploads
        with ThreadPoolExecutor(max_workers=min(transfer.PARALLEL, len(files))) as pool:
            out = list(pool.map(one, files))
    else:
        out = [one(sf) for sf in files]
    tracker.finish()
    return out
