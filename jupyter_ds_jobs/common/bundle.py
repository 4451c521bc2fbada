"""Deterministic ZIPs of local modules and input directories, file hashes, safe extraction.

* ``zip_path`` writes the same bytes for the same tree, whatever the files' timestamps, owners or
  permissions and whatever ``__pycache__`` / ``.git`` litter lies around, so that the sha256 of a
  ZIP identifies its content and an unchanged module is never uploaded twice.
* ``HashCache`` remembers sha256 digests by (absolute path, size, mtime_ns) so an unchanged large
  input file is hashed once.
* ``safe_extract`` unpacks an untrusted ZIP without letting any entry land outside the target:
  the whole ZIP is planned against the tree it would leave (symlink chains included) and nothing
  is written unless every entry passes.

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
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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
_LINK_ATTR = (stat.S_IFLNK | 0o777) << 16
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


#: An entry of a ZIP being written: a directory (None), a file, or a symlink (its target).
_Item = Path | None | str


def _walk_links(
    src: Path, skip: set[str], links: Callable[[Path, str], str | None]
) -> Iterator[tuple[str, _Item]]:
    """As :func:`_walk`, but no symlink under ``src`` is followed: each goes to ``links`` (path,
    arcname), whose answer is the target to store it with, or None to leave it out."""
    base = src.name
    yield base + "/", None
    for dirpath, dirnames, filenames in os.walk(src):
        rel = PurePosixPath(base, *Path(os.path.relpath(dirpath, src)).parts)
        names = [(d, True) for d in dirnames if not _excluded(d, True)] + [
            (f, False) for f in filenames if not _excluded(f, False)
        ]
        dirnames[:] = []
        for name, is_dir in names:
            full = Path(dirpath, name)
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = links(full, str(rel / name))
                if target is not None:
                    yield str(rel / name), target
            elif stat.S_ISDIR(st.st_mode) and is_dir:
                dirnames.append(name)
                yield f"{rel / name}/", None
            elif stat.S_ISREG(st.st_mode) and os.path.abspath(full) not in skip:
                yield str(rel / name), full


def _open_file(file: Path, follow: bool) -> tuple[BinaryIO, int]:
    """``file`` opened for reading, and its size; with ``follow`` False, never through a symlink
    and only a regular file (a FIFO swapped in would block)."""
    if follow:
        return open(file, "rb"), file.stat().st_size
    fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidArgument(f"{file} is no longer a regular file")
    return os.fdopen(fd, "rb"), st.st_size


def zip_path(
    src: Path, dest: Path, *, links: Callable[[Path, str], str | None] | None = None
) -> tuple[str, int]:
    """Write a deterministic ZIP of file or directory ``src`` to ``dest``; return (sha256, size).

    Entries are relative to ``src.parent`` (zipping ``/a/mypkg`` gives ``mypkg/``,
    ``mypkg/__init__.py``...), sorted, dated 1980-01-01 with modes 0o644 (files) / 0o755
    (directories); ``__pycache__``, ``.git``, ``.ipynb_checkpoints`` and ``*.pyc`` are left out, as
    is ``dest`` itself. The same tree always gives byte-identical ZIPs. ``dest`` is replaced
    atomically. Each ZipInfo is built by hand on purpose: zipfile's own writer (``ZipFile.write``)
    stamps each file's mtime and mode, and the sha256 must identify the content alone.

    Symlinks are followed (their content is zipped), unless ``links`` is given: then nothing is
    read through a symlink under ``src``. Each one is handed to ``links(path, arcname)``, which
    answers the target to store it with (a symlink entry, mode 0o777, as :func:`safe_extract`
    reads it) or None to leave it out; files are opened without following links and only
    regular files are zipped.
    """
    src = Path(src)
    dest = Path(dest)
    if not src.exists():
        raise NotFound(f"no such file or directory to zip: {src}")
    entries: list[tuple[str, _Item]]
    if not src.is_dir():
        entries = [(src.name, src)]
    elif links is None:
        entries = sorted(_walk(src, {os.path.realpath(dest)}), key=lambda e: e[0])
    else:
        entries = sorted(_walk_links(src, {os.path.abspath(dest)}, links), key=lambda e: e[0])
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
                if isinstance(file, str):
                    info.external_attr = _LINK_ATTR
                    zf.writestr(info, file.encode("utf-8", "surrogateescape"))
                    continue
                info.external_attr = _FILE_ATTR
                info.compress_type = zipfile.ZIP_DEFLATED
                fin, info.file_size = _open_file(file, links is None)  # the size decides zip64
                with fin, zf.open(info, "w") as fout:
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


_Key = tuple[str, ...]
#: Most symlinks followed while resolving one path (Linux's own limit is 40).
_MAX_LINK_HOPS = 40
#: Longest symlink target read from a ZIP.
_MAX_LINK_TARGET = 4096


def _entry_parts(name: str) -> list[str]:
    """Path components of a ZIP entry name; raises for absolute names and '..'."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":") or "\x00" in unified:
        raise InvalidArgument(f"absolute path in zip entry {name!r}")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"'..' in zip entry {name!r}")
    return parts


def _split(target: str) -> list[str]:
    return [p for p in target.split("/") if p not in ("", ".")]


@dataclass
class _Entry:
    index: int
    info: zipfile.ZipInfo
    parts: _Key
    kind: str  # "dir", "file" or "link"
    target: str = ""

    @property
    def name(self) -> str:
        return self.info.filename


@dataclass
class _Node:
    """One path of the final tree: planned by an entry, implied by one (a parent dir), or on disk."""

    kind: str  # "dir", "file", "link" or "other" (on disk: fifo, socket, device)
    target: str = ""
    entry: str | None = None  # the zip entry that plans it
    info: zipfile.ZipInfo | None = None


def _read_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    with zf.open(info) as fh:
        raw = fh.read(_MAX_LINK_TARGET + 1)
    target = raw.decode("utf-8", "surrogateescape")
    if not target or len(raw) > _MAX_LINK_TARGET or "\x00" in target or "\\" in target:
        raise InvalidArgument(f"symlink zip entry {info.filename!r} has an unusable target: {target[:200]!r}")
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise InvalidArgument(f"symlink zip entry {info.filename!r} points outside the target: {target}")
    return target


def _parse(zf: zipfile.ZipFile) -> list[_Entry]:
    """Every entry of the ZIP, names and symlink targets checked; raises on the first bad one."""
    entries: list[_Entry] = []
    seen: dict[_Key, str] = {}
    for index, info in enumerate(zf.infolist()):
        parts = tuple(_entry_parts(info.filename))
        if not parts:
            continue
        if parts in seen:
            raise InvalidArgument(f"zip entry {info.filename!r} conflicts with zip entry {seen[parts]!r}")
        seen[parts] = info.filename
        if info.is_dir():
            entries.append(_Entry(index, info, parts, "dir"))
        elif stat.S_ISLNK(info.external_attr >> 16):
            entries.append(_Entry(index, info, parts, "link", _read_link(zf, info)))
        else:
            entries.append(_Entry(index, info, parts, "file"))
    return entries


def _describe(key: _Key, node: _Node) -> str:
    what = {"dir": "directory", "link": "symlink"}.get(node.kind, "file")
    return f"{what} {'/'.join(key)!r}" + (f" (zip entry {node.entry!r})" if node.entry else "")


def _escape(entry: str, via: str | None) -> InvalidArgument:
    if via is None:
        return InvalidArgument(f"zip entry {entry!r} would be written outside the target through a symlink")
    through = f"; zip entry {entry!r} would be written through it" if entry != via else ""
    return InvalidArgument(f"symlink zip entry {via!r} points outside the target{through}")


class _Plan:
    """The tree a ZIP would leave under ``root``: its entries over what is already on disk.

    Keys are link-free paths relative to ``root`` (components). Entries are placed shallowest
    first; a missing directory on an entry's own path is planned, one that a symlink leads to is
    waited for (another entry may plan it), and an entry still waiting at the end is refused.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.root_parts = [p for p in root.split(os.sep) if p]
        self.planned: dict[_Key, _Node] = {}
        self.disk: dict[_Key, _Node | None] = {}
        self.followed: set[_Key] = set()  # symlinks on disk that entries are written through
        self.waiting: dict[_Key, list[_Entry]] = {}
        self.queue: deque[_Entry] = deque()

    def lookup(self, key: _Key) -> _Node | None:
        if key in self.planned:
            return self.planned[key]
        if key[:-1] in self.planned:  # a planned directory is not on disk yet: nothing under it
            return None
        if key not in self.disk:
            self.disk[key] = _disk_node(os.path.join(self.root, *key))
        return self.disk[key]

    def _add(self, key: _Key, node: _Node) -> None:
        self.planned[key] = node
        self.queue.extend(self.waiting.pop(key, []))

    def _target(
        self, cur: list[str], link: _Node, entry: str, via: str | None
    ) -> tuple[list[str], list[str]]:
        """(directory to go on from, components to walk) for following ``link`` found in ``cur``."""
        if not link.target.startswith("/"):
            return cur, _split(link.target)
        parts = _split(link.target)  # only links on disk can be absolute
        n = len(self.root_parts)
        if parts[:n] != self.root_parts:
            raise _escape(entry, via)
        return [], parts[n:]

    def walk_dirs(self, start: _Key, parts: _Key, entry: _Entry) -> _Key | None:
        """Link-free key of directory ``start``/``parts``, planning the missing directories of
        ``parts`` itself; None when a symlink leads to a path nothing has planned yet (``entry``
        then waits for it)."""
        pending = [(p, False) for p in reversed(parts)]  # (component, from a symlink's target)
        cur, hops = list(start), 0
        via: str | None = None  # the first symlink entry followed, to blame for an escape
        while pending:
            part, linked = pending.pop()
            if part == "..":
                if not cur:
                    raise _escape(entry.name, via)
                cur.pop()
                continue
            key = (*cur, part)
            node = self.lookup(key)
            if node is None and linked:
                self.waiting.setdefault(key, []).append(entry)
                return None
            if node is None:
                self._add(key, _Node("dir"))
            elif node.kind == "link":
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise InvalidArgument(f"zip entry {entry.name!r}: too many levels of symlinks")
                if node.entry is None:
                    self.followed.add(key)
                via = via or node.entry
                cur, more = self._target(cur, node, entry.name, via)
                pending.extend((p, True) for p in reversed(more))
                continue
            elif node.kind != "dir":
                raise InvalidArgument(f"zip entry {entry.name!r} conflicts with {_describe(key, node)}")
            cur.append(part)
        return tuple(cur)

    def place(self, e: _Entry) -> None:
        parent = self.walk_dirs((), e.parts[:-1], e)
        if parent is None:
            return
        key = (*parent, e.parts[-1])
        node = self.lookup(key)
        if e.kind == "dir":
            if node is None:
                self._add(key, _Node("dir", entry=e.name))
            elif node.kind == "link" and node.entry is None:  # as os.makedirs: follow it
                self.walk_dirs(parent, e.parts[-1:], e)
            elif node.kind != "dir":
                raise InvalidArgument(f"zip entry {e.name!r} conflicts with {_describe(key, node)}")
            return
        if node is not None:
            same_link = e.kind == node.kind == "link" and e.target == node.target and node.entry is None
            replaceable = node.kind != "dir" and node.entry is None and key not in self.followed
            if not same_link and not (replaceable and e.kind == "file"):
                raise InvalidArgument(f"zip entry {e.name!r} conflicts with {_describe(key, node)}")
        self._add(key, _Node(e.kind, e.target, e.name, e.info))

    def check_link(self, key: _Key, link: _Node) -> None:
        """Refuse planned symlink ``key`` unless its target, resolved in the final tree, stays inside."""
        name = link.entry or "/".join(key)
        pending = list(reversed(_split(link.target)))
        cur, hops, dead = list(key[:-1]), 0, False
        while pending:
            part = pending.pop()
            if part == ".." and dead:  # up from a path that will not be a directory: meaning unknown
                raise InvalidArgument(
                    f"symlink zip entry {name!r} goes up ('..') from a path that is not a directory: "
                    f"{link.target}"
                )
            if part == "..":
                if not cur:
                    raise _escape(name, name)
                cur.pop()
            elif not dead:
                node = self.lookup((*cur, part))
                if node is not None and node.kind == "link":
                    hops += 1
                    if hops > _MAX_LINK_HOPS:
                        raise InvalidArgument(f"symlink zip entry {name!r}: too many levels of symlinks")
                    cur, more = self._target(cur, node, name, name)
                    pending.extend(reversed(more))
                    continue
                dead = node is None or node.kind != "dir"
                cur.append(part)

    def build(self, entries: list[_Entry]) -> None:
        self.queue.extend(sorted(entries, key=lambda e: (len(e.parts), e.index)))
        while self.queue:
            self.place(self.queue.popleft())
        if self.waiting:
            first = min((e for es in self.waiting.values() for e in es), key=lambda e: e.index)
            raise InvalidArgument(
                f"zip entry {first.name!r} would be written through a symlink that leads to no directory"
            )
        for key, node in self.planned.items():
            if node.kind == "link":
                self.check_link(key, node)


def _disk_node(path: str) -> _Node | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return _Node("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return _Node("dir")
    return _Node("file" if stat.S_ISREG(st.st_mode) else "other")


def _clear(path: str) -> None:
    """Remove the file or symlink at ``path`` (never following it), if any."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{path} became a directory during extraction")
    os.unlink(path)


def _write(zf: zipfile.ZipFile, root: str, planned: dict[_Key, _Node]) -> None:
    """Create the planned tree: directories and files at link-free paths, symlinks last."""
    os.makedirs(root, exist_ok=True)
    links: list[tuple[str, str]] = []
    for key, node in planned.items():
        path = os.path.join(root, *key)
        if node.kind == "link":
            links.append((path, node.target))
        elif node.kind == "dir":
            try:
                os.mkdir(path)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise InvalidArgument(f"{path} is no longer a directory") from None
        elif node.info is not None:
            _clear(path)  # a replaced file is unlinked, never written through (symlink, hard link)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as fout, zf.open(node.info) as fin:
                shutil.copyfileobj(fin, fout, _CHUNK)
            if (node.info.external_attr >> 16) & 0o111:
                os.chmod(path, 0o755)
    for path, target in links:
        if os.path.islink(path) and os.readlink(path) == target:
            continue
        _clear(path)
        os.symlink(target, path)


def safe_extract(zip_file: Path, dest: Path) -> None:
    """Extract ``zip_file`` into ``dest``, refusing entries that would land outside it.

    The whole ZIP is planned before anything is written: every entry is placed in the final tree
    (its entries plus what is already under ``dest``, symlinks followed, ``..`` taken
    component by component) and every symlink entry's target is resolved in that tree. Raises
    ``InvalidArgument`` naming the entry for absolute names, ``..`` components, NUL, symlinks
    that lead outside ``dest`` (alone or as a chain), that loop or that go up (``..``) from a
    path that is not a directory, entries written through a symlink leading outside ``dest`` or
    to no directory, and duplicate or conflicting entries (a file and a directory of one name, a
    symlink replacing a different existing one); then nothing is written, ``dest`` included.
    Existing files are replaced (unlinked first), never written through. Files are streamed;
    Unix modes are kept for the executable bit only; symlinks are created last.
    """
    root = os.path.realpath(dest)
    with zipfile.ZipFile(zip_file) as zf:
        plan = _Plan(root)
        plan.build(_parse(zf))
        _write(zf, root, plan.planned)


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
    safe_extract(zip_file, target.parent if rooted else target)
