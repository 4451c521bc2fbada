"""What a script or a cell needs to run elsewhere: local modules to ship and pinned requirements.

Static and offline: source files are parsed (never imported or executed) and the import graph is
followed through *local* modules (files and packages found in the search directories). Every other
import is either the standard library (skipped), an installed distribution (pinned
``name==version`` from ``importlib.metadata``) or unresolved.

A top-level name is classified the way ``python script.py`` would find it, the script's directory
being first on ``sys.path``:

1. built-in modules (``sys``, ``builtins``...) are always the standard library;
2. a regular module or package in a search directory (``name.py``, ``name/__init__.py``, an
   extension module) is local, shadowing an installed or standard module of the same name;
3. then the standard library (``sys.stdlib_module_names``);
4. a plain directory ``name/`` in a search directory (namespace package) is local if nothing is
   installed under that name;
5. an installed module whose files live under a search directory (an editable install of the
   user's own project, outside any site-packages) is local too, its top-level package shipped;
6. otherwise the distributions providing it are pinned (``yaml`` -> ``PyYAML``, and for namespace
   packages shared by several distributions, ``google.protobuf`` -> ``protobuf``), or it is
   unresolved.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import site
import sys
import tokenize
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from jupyter_ds_jobs.common.errors import InvalidArgument, NotFound
from jupyter_ds_jobs.packaging.source import ImportRef, find_imports, parse_cell

__all__ = [
    "ImportRef",
    "ScriptAnalysis",
    "analyze_script",
    "analyze_source",
    "find_imports",
    "format_requirements",
    "invalidate_caches",
    "requirements_for_modules",
]


@dataclass
class ScriptAnalysis:
    """Result of ``analyze_script`` / ``analyze_source``."""

    local_modules: list[Path]
    """Top-level ``.py`` files and package directories to ship, sorted; never the entry script."""
    requirements: list[str]
    """Pinned ``name==version`` of the installed distributions used, sorted by name."""
    unresolved: list[str]
    """Top-level modules imported but neither local, standard nor installed, sorted."""


# --------------------------------------------------------------------------- installed distributions


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def _distributions() -> dict[str, importlib.metadata.Distribution]:
    """Installed distributions by canonical name; the first on ``sys.path`` wins, as for imports."""
    out: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist)
    return out


@functools.cache
def _dist_files(canonical: str) -> frozenset[str]:
    dist = _distributions().get(canonical)
    if dist is None:
        return frozenset()
    return frozenset(os.path.normpath(str(dist.locate_file(f))) for f in dist.files or ())


@functools.cache
def _site_dirs() -> tuple[Path, ...]:
    """Directories whose contents are installed, never the user's own code."""
    dirs: set[str] = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    with contextlib.suppress(AttributeError):  # old virtualenv site.py
        dirs.update(site.getsitepackages())
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        dirs.add(user_site)
    return tuple(Path(os.path.realpath(d)) for d in dirs if d)


def invalidate_caches() -> None:
    """Forget what is known of installed distributions (after a ``pip install`` in the kernel)."""
    for cached in (_packages_distributions, _distributions, _dist_files, _site_dirs, _pin):
        cached.cache_clear()
    importlib.invalidate_caches()


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """Spec of a top-level module without importing anything."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


def _spec_paths(spec: importlib.machinery.ModuleSpec) -> list[str]:
    if spec.origin and spec.has_location:
        return [os.path.normpath(spec.origin)]
    return [os.path.normpath(p) for p in spec.submodule_search_locations or ()]


def _submodule_paths(dotted: str) -> list[str]:
    """Files (or directories) of the deepest importable module of ``dotted``; never imports."""
    parts = dotted.split(".")
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    for i in range(1, len(parts)):
        locations = list(spec.submodule_search_locations or ())
        if not locations:
            break
        try:
            sub = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), locations)
        except (ImportError, ValueError):
            sub = None
        if sub is None:
            break
        spec = sub
    return _spec_paths(spec)


def _owners(candidates: Sequence[str], dotted: Iterable[str]) -> list[str]:
    """Which of several distributions sharing a top-level name provide the modules used."""
    found: dict[str, None] = {}
    for name in sorted(set(dotted), key=lambda d: -d.count(".")):
        if "." not in name:
            continue
        for path in _submodule_paths(name):
            for cand in candidates:
                files = _dist_files(cand)
                if path in files or any(f.startswith(path + os.sep) for f in files):
                    found.setdefault(cand)
    return list(found)


def _distributions_for(top: str, dotted: Iterable[str]) -> list[importlib.metadata.Distribution]:
    dists = _distributions()
    names = dict.fromkeys(canonicalize_name(n) for n in _packages_distributions().get(top, ()))
    candidates: list[str] = [c for c in names if c in dists]
    if len(candidates) > 1:
        candidates = _owners(candidates, dotted) or candidates
    if not candidates and _find_spec(top) is not None:
        # editable installs often record only a .pth file: match the project name instead
        canonical = canonicalize_name(top)
        if canonical in dists:
            candidates = [canonical]
    return [dists[c] for c in candidates]


@functools.cache
def _pin(dist: importlib.metadata.Distribution) -> str:
    """``Name==version`` (cached: reading METADATA parses an e-mail message every time)."""
    return f"{dist.metadata['Name']}=={dist.version}"


# --------------------------------------------------------------------------- local modules


@dataclass(frozen=True)
class _Local:
    path: Path  # what to ship: a file or a top-level package directory
    kind: str  # "module" | "package" | "namespace" | "extension"


def _abs_dirs(search_path: Iterable[Path | str]) -> list[Path]:
    out: dict[Path, None] = {}
    for d in search_path:
        p = Path(os.path.abspath(d))
        if p.is_dir():
            out.setdefault(p)
    return list(out)


def _is_under(path: str | Path, parent: Path) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(parent)]) == os.path.realpath(
            parent
        )
    except ValueError:
        return False


def _locate_regular(top: str, dirs: Sequence[Path]) -> _Local | None:
    """A regular module or package ``top`` in the first search directory having one."""
    for d in dirs:
        pkg = d / top
        if (pkg / "__init__.py").is_file():
            return _Local(pkg, "package")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            ext = d / f"{top}{suffix}"
            if ext.is_file():
                return _Local(ext, "extension")
        mod = d / f"{top}.py"
        if mod.is_file():
            return _Local(mod, "module")
    return None


def _locate_installed_local(top: str, dirs: Sequence[Path]) -> _Local | None:
    """An installed module ``top`` whose files are under a search directory (not site-packages)."""
    if not dirs:
        return None
    spec = _find_spec(top)
    if spec is None:
        return None
    paths = _spec_paths(spec)
    if not paths or any(_is_under(p, s) for p in paths for s in _site_dirs()):
        return None
    if not all(any(_is_under(p, d) for d in dirs) for p in paths):
        return None
    if spec.submodule_search_locations:
        first = Path(next(iter(spec.submodule_search_locations)))
        kind = "package" if (first / "__init__.py").is_file() else "namespace"
        return _Local(first, kind)
    path = Path(paths[0])
    return _Local(path, "module" if path.suffix == ".py" else "extension")


def _classify(top: str, dirs: Sequence[Path]) -> _Local | str:
    """A local module, or "stdlib" / "external" / "skip" (see the module docstring)."""
    if not top.isidentifier() or top == "__main__":
        return "skip"
    if top in sys.builtin_module_names:
        return "stdlib"
    local = _locate_regular(top, dirs)
    if local is not None:
        return local
    if top in sys.stdlib_module_names:
        return "stdlib"
    if top not in _packages_distributions() and _find_spec(top) is None:
        for d in dirs:
            if (d / top).is_dir():
                return _Local(d / top, "namespace")
    local = _locate_installed_local(top, dirs)
    return local if local is not None else "external"


def requirements_for_modules(
    modules: Iterable[str], *, search_path: Sequence[Path | str] = ()
) -> tuple[list[str], list[str]]:
    """Pin the installed distributions providing ``modules`` (import names, dotted allowed).

    Returns ``(["Dist==version", ...] sorted by name, [unresolved top-level names] sorted)``. The
    standard library is skipped; so are modules found locally in ``search_path`` (see the module
    docstring). Import and distribution names may differ (``yaml`` -> ``PyYAML``); for a namespace
    package shared by several distributions a dotted name picks the right one
    (``google.protobuf`` -> ``protobuf``). Nothing is imported.
    """
    dirs = _abs_dirs(search_path)
    by_top: dict[str, dict[str, None]] = {}
    for module in modules:
        top = module.partition(".")[0]
        by_top.setdefault(top, {})[module] = None
    pins: dict[str, str] = {}
    unresolved: set[str] = set()
    for top, dotted in by_top.items():
        kind = _classify(top, dirs)
        if kind != "external":
            continue
        found = _distributions_for(top, dotted)
        if not found:
            unresolved.add(top)
        for dist in found:
            pin = _pin(dist)
            pins.setdefault(canonicalize_name(pin.partition("==")[0]), pin)
    return [pins[k] for k in sorted(pins)], sorted(unresolved)


def format_requirements(reqs: list[str]) -> str:
    """``requirements.txt`` text: one requirement per line (empty string for none)."""
    return "".join(f"{r}\n" for r in reqs)


class _Graph:
    """Follows imports transitively through local modules."""

    def __init__(self, search_path: Sequence[Path | str], entry: Path | None = None) -> None:
        self.dirs = _abs_dirs(search_path)
        self.entry = Path(os.path.realpath(entry)) if entry is not None else None
        self.kinds: dict[str, _Local | str] = {}
        self.external: dict[str, None] = {}
        self.queue: list[tuple[Path, str | None, bool]] = []
        self.seen: set[Path] = set()

    def classify(self, top: str) -> _Local | str:
        if top not in self.kinds:
            self.kinds[top] = _classify(top, self.dirs)
        return self.kinds[top]

    def enqueue(self, file: Path, module: str | None, is_package: bool) -> None:
        real = Path(os.path.realpath(file))
        if real not in self.seen:
            self.seen.add(real)
            self.queue.append((file, module, is_package))

    def add(self, dotted: str) -> None:
        """One imported module (absolute dotted name)."""
        top, _, rest = dotted.partition(".")
        kind = self.classify(top)
        if kind == "external":
            self.external.setdefault(dotted)
            return
        if not isinstance(kind, _Local):
            return
        if kind.kind == "module":
            self.enqueue(kind.path, top, False)
        if kind.kind not in ("package", "namespace"):
            return
        directory, module = kind.path, top
        if (directory / "__init__.py").is_file():
            self.enqueue(directory / "__init__.py", module, True)
        for part in rest.split(".") if rest else ():
            if not part.isidentifier():
                break
            module = f"{module}.{part}"
            sub = directory / part
            if (sub / "__init__.py").is_file():
                self.enqueue(sub / "__init__.py", module, True)
                directory = sub
            elif (directory / f"{part}.py").is_file():
                self.enqueue(directory / f"{part}.py", module, False)
                break
            elif sub.is_dir():
                directory = sub
            else:
                break  # an attribute, not a module

    def add_tree(self, tree: ast.AST, module: str | None, is_package: bool) -> None:
        for ref in find_imports(tree):
            if ref.level == 0:
                base = ref.module
            else:
                if module is None:
                    continue  # relative import in a top-level script: fails at run time anyway
                parts = module.split(".") if is_package else module.split(".")[:-1]
                if ref.level - 1 >= len(parts):
                    continue
                parts = parts[: len(parts) - (ref.level - 1)]
                base = ".".join([*parts, ref.module] if ref.module else parts)
            if not base:
                continue
            self.add(base)
            for name in ref.names:
                if name != "*":
                    self.add(f"{base}.{name}")

    def add_file(self, file: Path, module: str | None, is_package: bool) -> None:
        try:
            with tokenize.open(file) as fh:
                source = fh.read()
            tree = ast.parse(source, filename=str(file))
        except SyntaxError as err:
            raise InvalidArgument(f"syntax error in {file}, line {err.lineno}: {err.msg}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidArgument(f"cannot read {file}: {err}") from None
        except RecursionError:
            raise InvalidArgument(f"{file}: too deeply nested to parse") from None
        self.add_tree(tree, module, is_package)

    def run(self) -> ScriptAnalysis:
        while self.queue:
            self.add_file(*self.queue.pop(0))
        local: set[Path] = set()
        for kind in self.kinds.values():
            if isinstance(kind, _Local) and (
                self.entry is None or Path(os.path.realpath(kind.path)) != self.entry
            ):
                local.add(kind.path)
        requirements, unresolved = requirements_for_modules(self.external)
        return ScriptAnalysis(sorted(local), requirements, unresolved)


def analyze_script(entry: Path, root: Path | None = None) -> ScriptAnalysis:
    """Local modules and pinned requirements of a script, following its imports transitively.

    ``root`` is the directory where local modules are searched (default: the script's directory;
    when both differ, the script's directory is searched after ``root``). Paths in the result are
    absolute. Raises ``NotFound`` for a missing script and ``InvalidArgument`` for a syntax error
    in it or in a local module it imports.
    """
    entry = Path(os.path.abspath(entry))
    if not entry.is_file():
        raise NotFound(f"entry script not found: {entry}")
    dirs = [Path(root) if root is not None else entry.parent, entry.parent]
    graph = _Graph(dirs, entry=entry)
    graph.seen.add(Path(os.path.realpath(entry)))
    graph.add_file(entry, None, False)
    return graph.run()


def analyze_source(
    source: str,
    search_path: Sequence[Path],
    filename: str = "<cell>",
    extra_modules: Iterable[str] = (),
) -> ScriptAnalysis:
    """Like ``analyze_script`` for a code string (a notebook cell, IPython syntax allowed).

    ``search_path`` holds the directories where local modules live (the notebook's directory, the
    kernel's working directory...); ``extra_modules`` are dotted module names known to be used
    (e.g. the modules of objects to be pickled; ``__main__`` is ignored).
    """
    tree, _ = parse_cell(source, filename)
    graph = _Graph(search_path)
    graph.add_tree(tree, None, False)
    for module in extra_modules:
        graph.add(module)
    return graph.run()
