"""The files a cell (or a notebook's code) reads and writes by literal relative path, found statically.

Shared by ``%%ds_job`` (:mod:`.celljob`) and the notebook runner: what the code reads that exists
beside it goes into the job at the same relative path; what it writes comes back beside it. So a
cell that does ``pd.read_csv("data.csv")`` and ``open("out.txt", "w")`` behaves as if it ran
locally.

Invariants of :func:`find_file_refs`:

* **static only**: the source is parsed (:func:`~.source.parse_cell`, IPython syntax tolerated),
  never imported nor executed; the file system is only asked whether a path exists under
  ``base_dir`` (and, for a glob in ``base_dir`` itself, what it matches); nothing is created;
* **never raises**: a source that does not parse has no file references (its syntax error is for
  the caller's own parse to report);
* every path returned is a normalized relative POSIX path (no ``.``, ``..``, backslash, NUL or
  ``~``) that stays inside ``base_dir`` with its symlinks resolved; a URL, an absolute path or a
  path with ``..`` is ignored;
* ``reads`` are only paths that exist under ``base_dir`` (files or directories); ``writes`` need
  not exist (a written path with a directory creates nothing here); neither lists a path below
  another path of the same list.

A path is *literal* when it is built from string constants, ``Path(...)`` / ``os.path.join(...)``
/ ``/`` / ``+`` / f-strings of them, and names bound only to such values (in the source, a
``for`` over a literal list included, or in ``values``: e.g. the notebook's variables).
What counts as a read or a write (by the callee's name, so ``pd.read_csv`` and
``polars.read_csv`` alike):

* ``open(p)`` / ``io.open`` / ``gzip.open`` / ``tarfile.open`` / ``zipfile.ZipFile`` ...: a read,
  and with a mode holding ``w``, ``a``, ``x`` or ``+`` a write (``a`` and ``+`` modes read too);
* ``read_*`` (pandas, polars, pyarrow...), ``scan_*``, ``load``, ``loadtxt``, ``genfromtxt``,
  ``fromfile``, ``imread``, ``from_pretrained``, ``listdir``, ``walk``, ``glob`` ...: reads;
  ``Path(p).read_text()`` / ``.read_bytes()`` / ``.open()`` / ``.iterdir()`` / ``.glob()``,
  ``.exists()`` (so a cache check behaves as locally);
* ``to_csv`` / ``to_parquet`` / ... (pandas), ``write_csv`` / ... (polars), ``savefig``, ``save``
  and ``dump`` (``np.save(p, a)``, ``torch.save(m, p)``, ``joblib.dump(v, p)``), ``savez``,
  ``savetxt``, ``imwrite``, ``save_pretrained``, ``tofile``, ``os.makedirs`` / ``Path.mkdir`` (the
  directory comes back whole), ``Path(p).write_text()`` / ``.write_bytes()`` / ``.touch()``:
  writes; ``shutil.copy(src, dst)`` and the like read ``src`` and write ``dst``; ``sqlite3`` /
  ``duckdb`` ``connect(p)`` reads and writes.

``missing`` lists the *definite* reads (``open`` for reading, pandas' file readers,
``Path.read_text``, ``np.load``...) that do not exist under ``base_dir`` and that the source does
not write: a caller may refuse code that would fail on them (a heuristic, never exhaustive).
"""

from __future__ import annotations

import ast
import glob as _glob
import itertools
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath

from jupyter_ds_jobs.common.contract import is_safe_relpath
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging.source import parse_cell

__all__ = ["FileRefs", "find_file_refs"]


@dataclass
class FileRefs:
    """What a source reads and writes by literal relative path (see the module's docstring)."""

    reads: list[str] = field(default_factory=list)
    """Existing files or directories under ``base_dir`` the code reads, in source order."""
    writes: list[str] = field(default_factory=list)
    """Files or directories the code writes, in source order (they need not exist)."""
    missing: list[str] = field(default_factory=list)
    """Definite reads that do not exist under ``base_dir`` and that the code does not write."""
    lines: dict[str, int] = field(default_factory=dict)
    """The line (of ``source``, 1-based) where each path of the three lists is first named."""


# --------------------------------------------------------------------------- the tables

#: Callees that open a file with an optional mode (argument 1 or ``mode=``).
_OPENERS = frozenset({"open", "ZipFile", "TarFile", "File"})
#: Of those, the ones that certainly open a local file when called with a read mode.
_DEFINITE_OPENERS = frozenset({"open"})
_DEFINITE_OPENER_MODULES = frozenset({"io", "codecs", "gzip", "bz2", "lzma", "builtins"})
#: Readers of the path in argument 0 (besides ``read_*`` and ``scan_*``).
_READERS = frozenset(
    {
        "load", "loadtxt", "genfromtxt", "fromfile", "load_npz", "loadmat", "imread", "load_workbook",
        "load_from_disk", "from_pretrained", "open_dataset", "open_mfdataset", "open_zarr", "parse",
        "listdir", "scandir", "walk", "exists", "isfile", "isdir", "getsize", "safe_open",
        "load_img", "load_image", "Workbook", "load_dataset",
    }
)  # fmt: skip
#: ``read_*`` callees that take something other than a path (SQL, a string, the clipboard).
_NOT_PATH_READERS = frozenset({"read_sql", "read_sql_query", "read_sql_table", "read_gbq", "read_clipboard"})
#: Reads that certainly need the file (a missing one fails locally too).
_DEFINITE_READERS = frozenset(
    {
        "read_csv", "read_parquet", "read_excel", "read_table", "read_feather", "read_pickle",
        "read_fwf", "read_hdf", "read_orc", "read_stata", "read_sas", "read_spss", "read_ipc",
        "read_ndjson", "read_avro", "loadtxt", "genfromtxt", "fromfile", "load_npz",
    }
)  # fmt: skip
#: Writers of the path in argument 0.
_WRITERS = frozenset(
    {
        "to_csv", "to_parquet", "to_json", "to_excel", "to_pickle", "to_feather", "to_hdf",
        "to_html", "to_latex", "to_markdown", "to_stata", "to_orc", "to_xml", "to_netcdf",
        "to_zarr", "to_file", "to_filename", "write_csv", "write_parquet", "write_json",
        "write_ndjson", "write_ipc", "write_excel", "write_avro", "write_delta", "savefig",
        "savez", "savez_compressed", "savetxt", "imsave", "imwrite", "save_pretrained",
        "save_weights", "tofile", "makedirs", "mkdir", "ExcelWriter",
    }
)  # fmt: skip
#: Writers of the path in argument 0 if it is literal, else in argument 1 (``torch.save(m, p)``).
_SAVERS = frozenset({"save", "dump", "save_model"})
#: Argument 0 read, argument 1 written.
_COPIERS = frozenset({"copy", "copy2", "copyfile", "copytree", "move"})
#: ``module.connect(p)`` of a file database: read and written.
_DATABASES = frozenset({"sqlite3", "duckdb"})
#: Keywords that name the path a callee reads or writes.
_PATH_KEYWORDS = frozenset(
    {
        "path", "path_or_buf", "filepath_or_buffer", "filepath", "fname", "file", "filename", "f",
        "io", "excel_writer", "save_directory", "pretrained_model_name_or_path", "data_files",
        "data_dir", "name", "source", "uri",
    }
)  # fmt: skip
#: Methods of a literal ``Path``: what each does to it.
_PATH_READS = frozenset(
    {"read_text", "read_bytes", "iterdir", "glob", "rglob", "walk", "exists", "is_file", "is_dir", "stat"}
)
_PATH_DEFINITE_READS = frozenset({"read_text", "read_bytes"})
_PATH_WRITES = frozenset({"write_text", "write_bytes", "touch", "mkdir"})
#: Callables that build a path from their arguments.
_PATH_CTORS = frozenset(
    {"Path", "PurePath", "PosixPath", "PurePosixPath", "join", "joinpath", "str", "fspath"}
)
_GLOB_FUNCS = frozenset({"glob", "iglob"})
_GLOB_CHARS = frozenset("*?[")
#: At most this many values per expression (a loop over a long literal list, a product of names).
_MAX_VALUES = 64
_MAX_DEPTH = 24
_MAX_GLOB_MATCHES = 1000


# --------------------------------------------------------------------------- literal values


class _Env:
    """Names bound to literal paths: ``name -> values`` (``None``: bound to something else)."""

    def __init__(self, tree: ast.AST, values: Mapping[str, object] | None) -> None:
        self.bound: dict[str, list[str] | None] = {}
        self.outer = values or {}
        self._bind_all(tree)

    def get(self, name: str) -> list[str] | None:
        if name in self.bound:
            return self.bound[name]
        value = self.outer.get(name)
        if isinstance(value, str):
            return [value]
        if isinstance(value, PurePath):
            return [str(value)]
        return None

    def _set(self, name: str, values: list[str] | None) -> None:
        if name in self.bound:
            old = self.bound[name]
            values = None if old is None or values is None else _dedupe([*old, *values])[:_MAX_VALUES]
        self.bound[name] = values

    def _bind_all(self, tree: ast.AST) -> None:
        literal: list[tuple[int, int, str, ast.expr, bool]] = []  # (line, col, name, value, iterate)
        claimed: set[int] = set()  # the Name nodes bound by those
        other: set[str] = set()
        for node in ast.walk(tree):
            found: list[tuple[ast.Name, ast.expr, bool]] = []
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    found.extend((t, v, False) for t, v in _pairs(target, node.value))
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and isinstance(node.target, ast.Name):
                if node.value is not None:
                    found.append((node.target, node.value, False))
            elif isinstance(node, ast.For | ast.comprehension) and isinstance(node.target, ast.Name):
                found.append((node.target, node.iter, True))
            for target, value, each in found:
                claimed.add(id(target))
                literal.append((target.lineno, target.col_offset, target.id, value, each))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                continue  # judged below, once every literal binding is claimed
            other.update(_bound_names(node))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Store | ast.Del)
                and id(node) not in claimed
            ):
                other.add(node.id)
        for _line, _col, name, value, each in sorted(literal, key=lambda t: (t[0], t[1])):
            self._set(name, self._iterate(value) if each else self.eval(value))
        for name in other:
            self.bound[name] = None

    def _iterate(self, node: ast.expr) -> list[str] | None:
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            out: list[str] = []
            for elt in node.elts:
                vals = self.eval(elt)
                if vals is None:
                    return None
                out.extend(vals)
            return _dedupe(out)[:_MAX_VALUES]
        return None

    def eval(self, node: ast.expr, depth: int = 0) -> list[str] | None:
        """The literal values ``node`` may have (several through names), or None."""
        if depth > _MAX_DEPTH:
            return None
        if isinstance(node, ast.Constant):
            return [node.value] if isinstance(node.value, str) else None
        if isinstance(node, ast.Name):
            return self.get(node.id)
        if isinstance(node, ast.JoinedStr):
            return self._combine([self._fpart(v, depth) for v in node.values], "")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.Add):
            sep = "/" if isinstance(node.op, ast.Div) else ""
            return self._combine([self.eval(node.left, depth + 1), self.eval(node.right, depth + 1)], sep)
        if isinstance(node, ast.Call) and _callee(node)[1] in _PATH_CTORS and not node.keywords:
            name, func = _callee(node)[1], node.func
            if name == "join" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Constant):
                return None  # ", ".join(...): a string, not os.path.join
            parts = [self.eval(a, depth + 1) for a in node.args]
            if isinstance(func, ast.Attribute) and name == "joinpath":
                parts.insert(0, self.eval(func.value, depth + 1))
            if not parts:
                return ["."] if name != "join" else None
            return self._combine(parts, "/")
        return None

    def _fpart(self, node: ast.expr, depth: int) -> list[str] | None:
        if isinstance(node, ast.FormattedValue):
            if node.conversion not in (-1, 115) or node.format_spec is not None:  # 115: !s
                return None
            return self.eval(node.value, depth + 1)
        return self.eval(node, depth + 1)

    @staticmethod
    def _combine(parts: list[list[str] | None], sep: str) -> list[str] | None:
        if any(p is None for p in parts):
            return None
        out: list[str] = []
        for combo in itertools.product(*[p for p in parts if p is not None]):
            if sep == "/":
                out.append(posixpath.join(*combo) if combo else "")
            else:
                out.append("".join(combo))
            if len(out) >= _MAX_VALUES:
                break
        return out


def _pairs(target: ast.expr, value: ast.expr) -> list[tuple[ast.Name, ast.expr]]:
    """``(name, value)`` for each name that ``target = value`` binds to its own expression."""
    if isinstance(target, ast.Name):
        return [(target, value)]
    if (
        isinstance(target, ast.Tuple | ast.List)
        and isinstance(value, ast.Tuple | ast.List)
        and len(target.elts) == len(value.elts)
    ):
        return [p for t, v in zip(target.elts, value.elts, strict=True) for p in _pairs(t, v)]
    return []


def _bound_names(node: ast.AST) -> Iterable[str]:
    """Names ``node`` binds other than through a ``Name`` (parameters, imports, defs, handlers...)."""
    if isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, ast.alias):
        yield (node.asname or node.name).split(".")[0]
    elif isinstance(node, ast.MatchMapping):
        if node.rest:
            yield node.rest
    elif isinstance(
        node,
        ast.FunctionDef
        | ast.AsyncFunctionDef
        | ast.ClassDef
        | ast.ExceptHandler
        | ast.MatchAs
        | ast.MatchStar,
    ):
        name = node.name
        if name:
            yield name


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _callee(call: ast.Call) -> tuple[str, str]:
    """``(receiver name or "", callee name)``: ``pd.read_csv`` -> ``("pd", "read_csv")``."""
    func = call.func
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute):
        recv = func.value
        while isinstance(recv, ast.Attribute):
            recv = recv.value
        return (recv.id if isinstance(recv, ast.Name) else ""), func.attr
    return "", ""


# --------------------------------------------------------------------------- reads and writes


@dataclass
class _Found:
    """Raw (unchecked) paths in source order, with their line."""

    reads: list[tuple[str, int]] = field(default_factory=list)
    writes: list[tuple[str, int]] = field(default_factory=list)
    definite: list[tuple[str, int]] = field(default_factory=list)
    globs: list[tuple[str, int]] = field(default_factory=list)


def _argument(call: ast.Call, index: int) -> ast.expr | None:
    """Positional argument ``index``, else the first keyword that names a path (for index 0)."""
    if len(call.args) > index and not any(isinstance(a, ast.Starred) for a in call.args[: index + 1]):
        return call.args[index]
    if index == 0:
        for kw in call.keywords:
            if kw.arg in _PATH_KEYWORDS:
                return kw.value
    return None


def _mode(call: ast.Call, index: int = 1) -> str | None:
    """The literal mode of an opener (``""``: none given; None: not literal)."""
    node = call.args[index] if len(call.args) > index else None
    for kw in call.keywords:
        if kw.arg == "mode":
            node = kw.value
    if node is None:
        return ""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _open_kind(mode: str | None) -> tuple[bool, bool]:
    """(reads, writes) of a file opened with ``mode`` (a non-literal mode: reads only)."""
    if mode is None:
        return True, False
    mode = mode.split(":")[0]  # tarfile's "w:gz"
    writes = any(c in mode for c in "wax+")
    reads = not any(c in mode for c in "wx") or ("+" in mode and "w" not in mode)
    return reads, writes


class _Collector:
    def __init__(self, env: _Env) -> None:
        self.env = env
        self.found = _Found()

    def _values(self, node: ast.expr | None) -> list[str]:
        if node is None:
            return []
        if isinstance(node, ast.List | ast.Tuple | ast.Set):  # data_files=["a.csv", "b.csv"]
            return [v for elt in node.elts for v in self._values(elt)]
        if isinstance(node, ast.Dict):  # data_files={"train": "a.csv"}
            return [v for elt in node.values for v in self._values(elt)]
        return self.env.eval(node) or []

    def _add(self, bucket: list[tuple[str, int]], node: ast.expr | None, line: int) -> None:
        bucket.extend((v, line) for v in self._values(node))

    def visit(self, call: ast.Call) -> None:
        recv, name = _callee(call)
        line = call.lineno
        f = self.found
        if isinstance(call.func, ast.Attribute) and self._path_method(call, call.func, name, line):
            return
        if name in _OPENERS:
            reads, writes = _open_kind(_mode(call))
            path = _argument(call, 0)
            if reads:
                self._add(f.reads, path, line)
                if (
                    not writes
                    and name in _DEFINITE_OPENERS
                    and (not recv or recv in _DEFINITE_OPENER_MODULES)
                ):
                    self._add(f.definite, path, line)
            if writes:
                self._add(f.writes, path, line)
        elif name in _GLOB_FUNCS and recv in ("", "glob"):
            self._add(f.globs, _argument(call, 0), line)
        elif name in _COPIERS and recv in ("", "shutil"):
            self._add(f.reads, _argument(call, 0), line)
            self._add(f.writes, call.args[1] if len(call.args) > 1 else None, line)
        elif name == "connect" and recv in _DATABASES:
            self._add(f.reads, _argument(call, 0), line)
            self._add(f.writes, _argument(call, 0), line)
        elif name in _SAVERS:
            first = _argument(call, 0)
            target = first if first is not None and self._values(first) else _argument(call, 1)
            self._add(f.writes, target, line)
        elif name in _WRITERS:
            self._add(f.writes, _argument(call, 0), line)
        elif name in _READERS or (name.startswith(("read_", "scan_")) and name not in _NOT_PATH_READERS):
            self._add(f.reads, _argument(call, 0), line)
            for kw in call.keywords:  # load_dataset("csv", data_files=...): every path keyword
                if kw.arg in _PATH_KEYWORDS and call.args:
                    self._add(f.reads, kw.value, line)
            if name in _DEFINITE_READERS or (name == "load" and recv in ("np", "numpy")):
                self._add(f.definite, _argument(call, 0), line)

    def _path_method(self, call: ast.Call, func: ast.Attribute, name: str, line: int) -> bool:
        """``Path(p).read_text()`` and the like, on a receiver with a literal value."""
        if name not in _PATH_READS | _PATH_WRITES | {"open"}:
            return False
        receiver = self.env.eval(func.value)
        if not receiver:
            return False
        f = self.found
        if name == "open":
            reads, writes = _open_kind(_mode(call, 0))
            if reads:
                f.reads.extend((v, line) for v in receiver)
                if not writes:
                    f.definite.extend((v, line) for v in receiver)
            if writes:
                f.writes.extend((v, line) for v in receiver)
        elif name in ("glob", "rglob"):
            f.reads.extend((v, line) for v in receiver)  # the directory, whatever the pattern
        elif name in _PATH_READS:
            f.reads.extend((v, line) for v in receiver)
            if name in _PATH_DEFINITE_READS:
                f.definite.extend((v, line) for v in receiver)
        else:
            f.writes.extend((v, line) for v in receiver)
        return True


# --------------------------------------------------------------------------- checking paths


def _clean(raw: str) -> str | None:
    """``raw`` as a normalized relative POSIX path, or None (absolute, ``..``, URL, odd)."""
    if not raw or len(raw) > 4096 or "://" in raw or any(c in raw for c in "\n\r\t"):
        return None
    if not is_safe_relpath(raw):
        return None
    path = str(PurePosixPath(raw))
    first = path.split("/", 1)[0]
    if not is_safe_relpath(path) or first.startswith("~") or first.endswith(":"):  # ~user/x, C:/x
        return None
    return path


class _Base:
    """``base_dir``, asked only whether a path stays inside it and exists."""

    def __init__(self, base_dir: Path) -> None:
        self.dir = Path(base_dir)
        try:
            self.real: Path | None = self.dir.resolve()
        except (OSError, RuntimeError, ValueError):
            self.real = None

    def inside(self, rel: str) -> bool:
        if self.real is None:
            return False
        try:
            return (self.dir / rel).resolve().is_relative_to(self.real)
        except (OSError, RuntimeError, ValueError):
            return False

    def exists(self, rel: str) -> bool:
        try:
            return (self.dir / rel).exists()
        except (OSError, ValueError):
            return False

    def glob(self, pattern: str) -> list[str]:
        """What a glob pattern in ``base_dir`` itself matches (not recursive, bounded)."""
        if "**" in pattern:
            return []
        try:
            matches = itertools.islice(_glob.iglob(pattern, root_dir=self.dir), _MAX_GLOB_MATCHES)
            return sorted(m.replace("\\", "/") for m in matches)
        except (OSError, ValueError, RecursionError):
            return []


def _glob_reads(base: _Base, patterns: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """A glob reads the directory before its first wildcard (``data/*.csv`` -> ``data``), or, in
    ``base_dir`` itself, what it matches there."""
    out: list[tuple[str, int]] = []
    for pattern, line in patterns:
        parts = pattern.split("/")
        fixed = list(itertools.takewhile(lambda p: not (_GLOB_CHARS & set(p)), parts))
        if len(fixed) == len(parts):
            out.append((pattern, line))
        elif fixed and any(fixed):
            out.append(("/".join(fixed), line))
        elif _clean(pattern) is not None:
            out.extend((m, line) for m in base.glob(pattern))
    return out


def _checked(
    base: _Base, items: Iterable[tuple[str, int]], *, must_exist: bool, lines: dict[str, int]
) -> list[str]:
    """Clean, inside, (existing), deduplicated paths, none below another of the list."""
    out: dict[str, None] = {}
    for raw, line in items:
        path = _clean(raw)
        if path is None or path in out or not base.inside(path) or (must_exist and not base.exists(path)):
            continue
        out[path] = None
        lines.setdefault(path, line)
    return [p for p in out if not any(_below(p, q) for q in out if q != p)]


def _below(path: str, parent: str) -> bool:
    return path.startswith(parent + "/")


def find_file_refs(
    source: str,
    base_dir: Path,
    *,
    filename: str = "<cell>",
    values: Mapping[str, object] | None = None,
) -> FileRefs:
    """The files ``source`` reads and writes by literal relative path (see the module docstring).

    ``base_dir`` is the directory the code runs in (the notebook's); ``values`` maps names the
    source uses without binding them to their values (only ``str`` and ``PurePath`` ones count),
    e.g. a kernel's variables. Never raises: code that does not parse has no file references.
    """
    try:
        tree, _ = parse_cell(source, filename)
        env = _Env(tree, values)
        collector = _Collector(env)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                collector.visit(node)
    except (InvalidArgument, RecursionError, MemoryError):
        return FileRefs()
    found = collector.found
    base = _Base(base_dir)
    refs = FileRefs()
    order = sorted(found.reads + _glob_reads(base, found.globs), key=lambda t: t[1])
    refs.reads = _checked(base, order, must_exist=True, lines=refs.lines)
    refs.writes = _checked(base, sorted(found.writes, key=lambda t: t[1]), must_exist=False, lines=refs.lines)
    written = set(refs.writes)
    maybe = _checked(base, sorted(found.definite, key=lambda t: t[1]), must_exist=False, lines={})
    for path in maybe:
        if path in written or any(_below(path, w) for w in written) or base.exists(path):
            continue
        refs.missing.append(path)
        refs.lines.setdefault(path, next(line for raw, line in found.definite if _clean(raw) == path))
    return refs
