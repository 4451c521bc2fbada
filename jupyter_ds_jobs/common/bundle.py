"""Deterministic ZIPs of local modules and input directories, file hashes, safe extraction.

* ``zip_path`` writes the same bytes for the same tree, whatever the files' timestamps, owners or
  permissions and whatever ``__pycache__`` / ``.git`` litter lies around, so that the sha256 of a
  ZIP identifies its content and an unchanged module is never uploaded twice.
* ``HashCache`` remembers sha256 digests by (absolute path, size, mtime_ns) so an unchanged large
  input file is hashed once.
* ``safe_extract`` unpacks an untrusted ZIP without letting any entry land outside the target.

Everything streams: no file is ever read whole into memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from jupyter_ds_jobs.common.errors import InvalidArgument, NotFound

__all__ = [
    "EXCLUDED_DIRS",
    "EXCLUDED_SUFFIXES",
    "HashCache",
    "extract_as",
    "safe_extract",
    "sha256_file",
    "zip_path",
]

#: Directory names never put in a ZIP.
EXCLUDED_DIRS = frozenset({"__pycache__", ".git", ".ipynb_checkpoints"})
#: File suffixes never put in a ZIP.
EXCLUDED_SUFFIXES = (".pyc", ".pyo")

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FILE_ATTR = (stat.S_IFREG | 0o644) << 16
_DIR_ATTR = ((stat.S_IFDIR | 0o755) << 16) | 0x10  # 0x10: MS-DOS directory flag
_CHUNK = 1 << 20


def sha256_file(path: Path, chunk: int = _CHUNK) -> str:
    """Hex sha256 of a file, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _excluded(name: str, is_dir: bool) -> bool:
    return name in EXCLUDED_DIRS if is_dir else name.endswith(EXCLUDED_SUFFIXES)


def _walk(src: Path, skip: set[str]) -> Iterator[tuple[str, Path | None]]:
    """(arcname, file or None for a directory) of every entry under ``src``, symlinks followed."""
    base = src.name
    yield base + "/", None
    visited = {os.path.realpath(src)}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        keep = []
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if _excluded(d, True) or real in visited:  # excluded, or a symlink loop
                continue
            visited.add(real)
            keep.append(d)
        dirnames[:] = keep
        rel = PurePosixPath(base, *Path(os.path.relpath(dirpath, src)).parts)
        for d in dirnames:
            yield f"{rel / d}/", None
        for f in filenames:
            full = Path(dirpath, f)
            if _excluded(f, False) or os.path.realpath(full) in skip or not full.is_file():
                continue
            yield str(rel / f), full


def zip_path(src: Path, dest: Path) -> tuple[str, int]:
    """Write a deterministic ZIP of file or directory ``src`` to ``dest``; return (sha256, size).

    Entries are relative to ``src.parent`` (zipping ``/a/mypkg`` gives ``mypkg/``,
    ``mypkg/__init__.py``...), sorted, dated 1980-01-01 with modes 0o644 (files) / 0o755
    (directories); ``__pycache__``, ``.git``, ``.ipynb_checkpoints`` and ``*.pyc`` are left out, as
    is ``dest`` itself. The same tree always gives byte-identical ZIPs. ``dest`` is replaced
    atomically.
    """
    src = Path(src)
    dest = Path(dest)
    if not src.exists():
        raise NotFound(f"no such file or directory to zip: {src}")
    if src.is_dir():
        entries = sorted(_walk(src, {os.path.realpath(dest)}), key=lambda e: e[0])
    else:
        entries = [(src.name, src)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
            for arcname, file in entries:
                info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
                info.create_system = 3  # unix, so that the modes are read back
                if file is None:
                    info.external_attr = _DIR_ATTR
                    zf.writestr(info, b"")
                    continue
                info.external_attr = _FILE_ATTR
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = file.stat().st_size  # decides zip64 before streaming
                with open(file, "rb") as fin, zf.open(info, "w") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha256_file(dest), dest.stat().st_size


class HashCache:
    """sha256 digests cached in a JSON file, keyed by (absolute path, size, mtime_ns).

    A file whose mtime is within ``racy_window_s`` of the moment it was hashed is not cached: it
    could still change without its mtime moving (coarse timestamps), as git's "racy" entries.
    At most ``max_entries`` are kept (least recently used dropped first).
    """

    def __init__(self, path: Path, *, max_entries: int = 10000, racy_window_s: float = 2.0) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self.racy_window_ns = int(racy_window_s * 1e9)
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, list[object]] = self._load()

    def _load(self) -> dict[str, list[object]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return dict(entries) if isinstance(entries, dict) else {}

    def _save(self) -> None:
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "entries": self._entries}, fh)
            os.replace(tmp_name, self.path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def sha256(self, file: Path) -> str:
        """sha256 of ``file``; from the cache when its size and mtime_ns are unchanged."""
        key = os.path.abspath(file)
        st = os.stat(key)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"not a regular file: {key}")
        cached = self._entries.pop(key, None)
        if cached is not None and cached[:2] == [st.st_size, st.st_mtime_ns] and isinstance(cached[2], str):
            self._entries[key] = cached  # most recently used last
            self.hits += 1
            return cached[2]
        started_ns = time.time_ns()
        digest = sha256_file(Path(key))
        self.misses += 1
        after = os.stat(key)
        stable = (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        if stable and started_ns - st.st_mtime_ns > self.racy_window_ns:
            self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
            self._save()
        elif cached is not None:
            self._save()
        return digest


def _entry_parts(name: str) -> list[str]:
    """Path components of a ZIP entry name; raises for absolute names and '..'."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":") or "\x00" in unified:
        raise InvalidArgument(f"absolute path in zip entry {name!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"'..' in zip entry {name!r}")
    return parts


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def safe_extract(zip_file: Path, dest: Path) -> None:
    """Extract ``zip_file`` into ``dest``, refusing entries that would land outside it.

    Raises ``InvalidArgument`` naming the entry for absolute paths, ``..`` components, symlink
    entries pointing outside ``dest`` and entries written through an existing symlink leading
    outside ``dest``. Every name is checked before anything is written. Unix modes are kept for
    the executable bit only.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    with zipfile.ZipFile(zip_file) as zf:
        infos = zf.infolist()
        planned = [(info, _entry_parts(info.filename)) for info in infos]
        for info, parts in planned:
            if not parts:
                continue
            target = os.path.join(root, *parts)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", "surrogateescape")
                resolved = os.path.realpath(os.path.join(os.path.dirname(target), link))
                if os.path.isabs(link) or not _inside(resolved, root):
                    raise InvalidArgument(
                        f"symlink zip entry {info.filename!r} points outside the target: {link}"
                    )
            parent = os.path.realpath(os.path.dirname(target))
            if not _inside(parent, root):
                raise InvalidArgument(f"zip entry {info.filename!r} would be written outside the target")
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.islink(target):
                os.unlink(target)
            if stat.S_ISLNK(mode):
                os.symlink(zf.read(info).decode("utf-8", "surrogateescape"), target)
                continue
            with zf.open(info) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
            if mode & 0o111:
                os.chmod(target, 0o755)


def extract_as(zip_file: Path, target: Path) -> None:
    """Extract a ZIP of a file or directory so that it lands at ``target``.

    A ZIP made by :func:`zip_path` of a directory named like ``target`` has its entries rooted at
    that name (``data/``, ``data/a.csv``): they go into ``target``'s parent. Any other ZIP goes
    into ``target`` itself. Used by the client for ZIP outputs and by the server for ZIP inputs.
    """
    target = Path(target)
    with zipfile.ZipFile(zip_file) as zf:
        names = [n for n in zf.namelist() if n]
    prefix = target.name + "/"
    rooted = bool(names) and all(n.startswith(prefix) for n in names)
    dest = target.parent if rooted else target
    dest.mkdir(parents=True, exist_ok=True)
    safe_extract(zip_file, dest)
