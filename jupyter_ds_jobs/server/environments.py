"""Job Python environments: virtual environments built with uv and cached by content.

A job's ``python_env`` (python version, pip requirements, pip options, or a conda YAML whose
``python`` and ``pip:`` parts are honoured, see :mod:`.conda`) becomes an :class:`EnvSpec`. The
:class:`EnvironmentCache` maps it to an :class:`Environment` — an interpreter reached by absolute
path (:mod:`.interpreters`), plus the venv's ``bin/`` — building the venv with uv (:mod:`.uv`)
on a miss.

Layout under the cache root::

    envs/<key>/                 a published venv (relocatable); <key> hashes interpreter + spec
    envs/<key>/.jds-env.json    written before publishing; its mtime is the last-used time
    tmp/<key>.<pid>.<rand>/     a build in progress; renamed onto envs/<key> when complete
    uv-cache/                   uv's cache (unless UV_CACHE_DIR is set in the environment)

* A hit is one ``utime`` on the marker: no subprocess, no index request. A ``python_env`` seen
  before (Create, then Execute, then the next job) is not parsed again.
* Requirements that are all exact pins already installed for the server's own interpreter need
  no venv at all (the embedded server runs on the kernel's interpreter).
* A miss builds into ``tmp/`` with ``uv venv --relocatable`` and ``uv pip install``, then publishes
  with one atomic ``rename``; a failed build removes its temp dir, so nothing is left behind.
  Identical concurrent misses in one event loop share one build; two processes racing on one root
  both build and the loser discards its copy.
* When the package index cannot be reached, the install is retried with ``--offline`` from uv's
  cache before the build fails.
* Past ``size_cap_bytes`` the least-recently-used environments that are not in use
  (:meth:`EnvironmentCache.acquire`) are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.connection import pid_alive
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument
from jupyter_ds_jobs.common.requirements import normalize_requirement
from jupyter_ds_jobs.server.conda import CONDA_FIELD, parse_conda_yaml
from jupyter_ds_jobs.server.interpreters import discover_pythons, own_base_interpreter, python_major_minor
from jupyter_ds_jobs.server.uv import EnvironmentBuildError, LogFn, Uv, tree_size

__all__ = [
    "EnvSpec",
    "Environment",
    "EnvironmentBuildError",
    "EnvironmentCache",
]

_KEY_FORMAT = 2  # 2: requirements in pypa packaging's normal form
_MARKER = ".jds-env.json"
_REQ_FIELD = "env.python_env.requirements"
_VERSION_FIELD = "env.python_env.python_version"


# --------------------------------------------------------------------------------------------------
# Specs and environments


@dataclass(frozen=True)
class EnvSpec:
    """What a job's environment is made of; equal specs share one cached environment."""

    python_version: str  # "" = the server's own
    requirements: tuple[str, ...]  # sorted, normalized
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    no_deps: bool = False
    find_links: tuple[str, ...] = ()  # server-side option (local wheels); not in the proto

    @classmethod
    def create(
        cls,
        python_version: str = "",
        requirements: Iterable[str] = (),
        *,
        index_url: str = "",
        extra_index_urls: Iterable[str] = (),
        trusted_hosts: Iterable[str] = (),
        no_deps: bool = False,
        find_links: Iterable[str] = (),
        field: str = _REQ_FIELD,
    ) -> EnvSpec:
        """Validate and normalize; a bad requirement is ``InvalidArgument`` naming the string."""
        normalized: set[str] = set()
        for req in requirements:
            try:
                normalized.add(normalize_requirement(req))
            except ValueError as exc:
                raise InvalidArgument(f"{req!r} is not a valid requirement: {exc}", field=field) from None
        version = python_major_minor(python_version, _VERSION_FIELD) if python_version.strip() else ""
        return cls(
            python_version=version,
            requirements=tuple(sorted(normalized)),
            index_url=index_url.strip(),
            extra_index_urls=tuple(dict.fromkeys(u.strip() for u in extra_index_urls if u.strip())),
            trusted_hosts=tuple(sorted({h.strip() for h in trusted_hosts if h.strip()})),
            no_deps=no_deps,
            find_links=tuple(dict.fromkeys(f for f in find_links if f)),
        )

    @classmethod
    def from_proto(cls, python_env: jobs_pb2.PythonEnv) -> EnvSpec:
        """Validate a job's ``PythonEnv``: requirements, pip options, python version, conda YAML.

        Memoized on those fields (not on ``local_modules``): a job's environment is checked on
        Create, on Execute and when it starts, and most jobs repeat an earlier one's.
        """
        opts = python_env.pip_options
        return _spec_of(
            python_env.python_version,
            tuple(python_env.requirements),
            python_env.conda_yaml,
            opts.index_url,
            tuple(opts.extra_index_urls),
            tuple(opts.trusted_hosts),
            bool(opts.no_deps),
        )

    def key(self, interpreter: Path) -> str:
        """Stable hash of (interpreter, sorted requirements, pip options)."""
        payload = json.dumps(
            [
                _KEY_FORMAT,
                str(interpreter),
                sorted(self.requirements),
                self.index_url,
                list(self.extra_index_urls),
                sorted(self.trusted_hosts),
                self.no_deps,
                list(self.find_links),
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def uv_install_args(self) -> list[str]:
        """The ``uv pip install`` options for this spec (requirements not included)."""
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for host in self.trusted_hosts:
            args += ["--allow-insecure-host", host]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_deps:
            args.append("--no-deps")
        return args


@functools.lru_cache(maxsize=1024)  # errors are not cached: a bad python_env is refused every time
def _spec_of(
    python_version: str,
    requirements: tuple[str, ...],
    conda_yaml: str,
    index_url: str,
    extra: tuple[str, ...],
    hosts: tuple[str, ...],
    no_deps: bool,
) -> EnvSpec:
    version = python_major_minor(python_version, _VERSION_FIELD) if python_version.strip() else ""
    reqs = list(requirements)
    extra_urls, trusted = list(extra), list(hosts)
    # Validate the proto's own requirements first so the error names the right field.
    EnvSpec.create("", reqs)
    if conda_yaml.strip():
        conda = parse_conda_yaml(conda_yaml)
        if conda.python_version:
            if version and version != conda.python_version:
                raise InvalidArgument(
                    f"python_version {version} disagrees with python={conda.python_version} in conda_yaml",
                    field=_VERSION_FIELD,
                )
            version = conda.python_version
        EnvSpec.create("", conda.requirements, field=CONDA_FIELD)
        reqs += conda.requirements
        index_url = index_url or conda.pip.index_url
        extra_urls += conda.pip.extra_index_urls
        trusted += conda.pip.trusted_hosts
        no_deps = no_deps or conda.pip.no_deps
    return EnvSpec.create(
        version,
        reqs,
        index_url=index_url,
        extra_index_urls=extra_urls,
        trusted_hosts=trusted,
        no_deps=no_deps,
    )


@dataclass(frozen=True)
class Environment:
    """Where a job's Python lives: an absolute interpreter, and the venv when there is one."""

    python: Path
    bin_dir: Path | None = None
    venv: Path | None = None

    def apply(self, env: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``env`` for the job's process: ``bin/`` first on PATH, VIRTUAL_ENV, unbuffered."""
        out = dict(env)
        first = str(self.bin_dir if self.bin_dir is not None else self.python.parent)
        path = out.get("PATH", "")
        out["PATH"] = first + os.pathsep + path if path else first
        if self.venv is not None:
            out["VIRTUAL_ENV"] = str(self.venv)
        else:
            out.pop("VIRTUAL_ENV", None)
        out.pop("PYTHONHOME", None)
        out["PYTHONUNBUFFERED"] = "1"
        return out


def _installed_here(requirement: str) -> bool:
    """Is ``requirement`` an exact pin (``name==version``; no extras, marker, URL or wildcard)
    that this process's environment has installed?"""
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return False
    pins = list(req.specifier)
    if req.extras or req.marker is not None or req.url or len(pins) != 1:
        return False
    pin = pins[0]
    if pin.operator != "==" or pin.version.endswith(".*"):
        return False
    try:
        return pin.contains(metadata.version(req.name), prereleases=True)
    except (metadata.PackageNotFoundError, InvalidVersion):
        return False


_FREE_SLOTS: dict[str, list[int]] = {}
_SLOT_NUMBERS = itertools.count(1)


# --------------------------------------------------------------------------------------------------
# The cache


class EnvironmentCache:
    """Content-addressed cache of job virtual environments under ``root``, built with uv."""

    def __init__(
        self,
        root: Path | str,
        *,
        size_cap_bytes: int | None = None,
        uv: str | None = None,
        find_links: Sequence[str] = (),
        build_timeout_s: float = 1800.0,
        env: Mapping[str, str] | None = None,
        link_mode: str | None = None,
        reuse_server_packages: bool = True,
    ) -> None:
        self.root = Path(root).absolute()
        self.envs_dir = self.root / "envs"
        self.tmp_dir = self.root / "tmp"
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.size_cap_bytes = size_cap_bytes
        self.build_timeout_s = build_timeout_s
        self.find_links = tuple(find_links)
        self.builds = 0  # uv builds started by this cache (for stats and tests)
        self._env = dict(os.environ if env is None else env)
        self._uv = Uv(self.root, self._env, uv)
        # "clone": reflink (copy-on-write) where the filesystem can, else a copy. Each venv owns its
        # files, so a job writing into its site-packages can't corrupt uv's cache or other venvs
        # (hardlinks would share them), and it is faster than uv's hardlink mode for small envs.
        self.link_mode = link_mode or self._env.get("UV_LINK_MODE") or "clone"
        self._pythons: dict[str, Path] | None = None
        self._resolved: dict[EnvSpec, tuple[Path, str, bool]] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._sinks: dict[str, list[LogFn]] = {}
        self._in_use: dict[Path, int] = {}
        # Pinned requirements that the server's own interpreter already satisfies need no venv:
        # the embedded server runs on the kernel's interpreter, so a cell's pins cost nothing.
        self.reuse_server_packages = reuse_server_packages
        self._satisfied: dict[EnvSpec, bool] = {}
        self._remove_stale_tmp()

    # -- interpreters -------------------------------------------------------------------------------

    def available_pythons(self) -> dict[str, Path]:
        """Installed interpreters by major.minor (``"3.11" -> path``); discovered once."""
        if self._pythons is None:
            self._pythons = discover_pythons(self._env)
        return dict(self._pythons)

    def interpreter_for(self, version: str) -> Path:
        """Absolute interpreter for ``major.minor`` ("" = the server's own); never downloads one."""
        if not version:
            return own_base_interpreter()
        pythons = self._pythons if self._pythons is not None else self.available_pythons()
        path = pythons.get(version)
        if path is None:
            raise FailedPrecondition(
                f"python {version} is not installed here; available: {', '.join(pythons) or 'none'}"
            )
        return path

    # -- lookup -------------------------------------------------------------------------------------

    def _resolve(self, spec: EnvSpec) -> tuple[Path, str, bool]:
        """(interpreter, key, own) for ``spec``; memoized, so a hit hashes nothing."""
        hit = self._resolved.get(spec)
        if hit is not None:
            return hit
        interpreter = self.interpreter_for(spec.python_version)
        own = not spec.python_version or interpreter == own_base_interpreter()
        resolved = (interpreter, self._effective(spec).key(interpreter), own)
        if len(self._resolved) > 4096:
            self._resolved.clear()
        self._resolved[spec] = resolved
        return resolved

    def _effective(self, spec: EnvSpec) -> EnvSpec:
        if self.find_links:
            return replace(spec, find_links=tuple(dict.fromkeys(spec.find_links + self.find_links)))
        return spec

    def _satisfied_here(self, spec: EnvSpec) -> bool:
        """Is every requirement an exact pin (``name==version``) already installed for this server?"""
        if not self.reuse_server_packages:
            return False
        hit = self._satisfied.get(spec)
        if hit is None:
            hit = all(_installed_here(req) for req in spec.requirements)
            if len(self._satisfied) > 4096:
                self._satisfied.clear()
            self._satisfied[spec] = hit
        return hit

    def path_for(self, spec: EnvSpec) -> Path:
        """Where the venv for ``spec`` lives (whether or not it is built)."""
        return self.envs_dir / self._resolve(spec)[1]

    def lookup(self, spec: EnvSpec) -> Environment | None:
        """The ready environment for ``spec``, or None; a hit is one ``utime`` (no subprocess).

        Raises ``FailedPrecondition`` when the python version is not installed.
        """
        interpreter, key, own = self._resolve(spec)
        if not spec.requirements or (own and self._satisfied_here(spec)):
            return Environment(python=Path(sys.executable).absolute() if own else interpreter)
        venv = self.envs_dir / key
        try:
            os.utime(venv / _MARKER)  # also the LRU clock
        except FileNotFoundError:
            return None
        bin_dir = venv / "bin"
        return Environment(python=bin_dir / "python", bin_dir=bin_dir, venv=venv)

    # -- build --------------------------------------------------------------------------------------

    async def ensure(self, spec: EnvSpec, log: LogFn | None = None, *, acquire: bool = False) -> Environment:
        """The environment for ``spec``, built on a miss (identical concurrent calls build once).

        ``log`` gets progress messages and uv's output lines while building. With ``acquire`` the
        environment is marked in use (see :meth:`release`) before this returns, so eviction can't
        race with the caller. Raises ``FailedPrecondition`` (python not installed) or
        ``EnvironmentBuildError`` (uv failed; carries uv's stderr).
        """
        for _ in range(3):
            env = self.lookup(spec)
            if env is not None:
                if acquire:
                    self.acquire(env)
                return env
            interpreter, key, _own = self._resolve(spec)
            sinks = self._sinks.setdefault(key, [])
            sink = log
            if sink is not None:
                sinks.append(sink)
            try:
                task = self._inflight.get(key)
                if task is None:
                    task = asyncio.get_running_loop().create_task(
                        self._build(self._effective(spec), interpreter, key), name=f"build-env-{key[:12]}"
                    )
                    self._inflight[key] = task
                    task.add_done_callback(self._build_done(key))
                elif sink is not None:
                    sink("waiting for the same python environment, already being built for another job")
                await asyncio.shield(task)
            finally:
                if sink is not None:
                    with contextlib.suppress(ValueError):
                        sinks.remove(sink)
        raise EnvironmentBuildError(
            "the python environment was evicted as soon as it was built; raise the size cap"
        )

    @contextlib.asynccontextmanager
    async def use(self, spec: EnvSpec, log: LogFn | None = None) -> AsyncIterator[Environment]:
        """``ensure`` + ``acquire``, released on exit."""
        env = await self.ensure(spec, log, acquire=True)
        try:
            yield env
        finally:
            self.release(env)

    def _build_done(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._inflight.pop(key, None)
            if not self._sinks.get(key):
                self._sinks.pop(key, None)
            if not task.cancelled():
                task.exception()  # retrieved here, so an unawaited failure doesn't warn

        return done

    def _emit(self, key: str, line: str) -> None:
        for sink in list(self._sinks.get(key, ())):
            with contextlib.suppress(Exception):
                sink(line)

    def _take_slot(self, interpreter: Path) -> tuple[Path, tuple[str, int]]:
        """A build dir under tmp/, reused by later builds for the same interpreter in this process.

        Reusing the path lets uv reuse its cached interpreter query for ``<slot>/bin/python`` (it
        keys that cache by path; a fresh path costs a Python start, about 50 ms, per build). A slot
        only ever hosts one base interpreter, so the cached answer stays right.
        """
        ident = hashlib.sha256(str(interpreter).encode()).hexdigest()[:12]
        free = _FREE_SLOTS.setdefault(ident, [])  # process-wide: caches sharing a root never collide
        number = free.pop() if free else next(_SLOT_NUMBERS)
        path = self.tmp_dir / f"{ident}.{os.getpid()}.s{number}"
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        return path, (ident, number)

    def _publish(
        self, spec: EnvSpec, interpreter: Path, key: str, tmp: Path, size: int, started: float
    ) -> bool:
        """Write the marker and rename ``tmp`` onto ``envs/<key>``; False if another process was first."""
        marker: dict[str, Any] = {
            "key": key,
            "python": str(interpreter),
            "requirements": list(spec.requirements),
            "uv_args": spec.uv_install_args(),
            "size": size,
            "built_at": time.time(),
            "build_seconds": round(time.monotonic() - started, 3),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1))
        try:
            os.rename(tmp, self.envs_dir / key)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return False
        return True

    async def _build(self, spec: EnvSpec, interpreter: Path, key: str) -> None:
        self.builds += 1
        started = time.monotonic()

        def emit(line: str) -> None:
            self._emit(key, line)

        emit(
            f"building python environment {key[:12]}: python {interpreter} with {', '.join(spec.requirements)}"
        )
        tmp, slot = self._take_slot(interpreter)
        try:
            await self._uv.build_venv(
                tmp,
                interpreter,
                spec.requirements,
                [*spec.uv_install_args(), "--link-mode", self.link_mode],
                emit,
                deadline=started + self.build_timeout_s,
                limit_s=self.build_timeout_s,
            )
            size = await asyncio.to_thread(tree_size, tmp)
            if not self._publish(spec, interpreter, key, tmp, size, started):
                emit("another process published the same environment first; using it")
            emit(
                f"python environment ready in {time.monotonic() - started:.2f} s ({size / 1e6:.1f} MB): "
                f"{self.envs_dir / key}"
            )
        finally:
            if tmp.exists():
                await asyncio.to_thread(shutil.rmtree, tmp, True)
            _FREE_SLOTS[slot[0]].append(slot[1])
        if self.size_cap_bytes is not None:
            removed = self.evict(keep=(key,))
            if removed:
                emit(f"evicted {len(removed)} least-recently-used environment(s) past the size cap")

    # -- in use and eviction ------------------------------------------------------------------------

    def acquire(self, env: Environment) -> None:
        """Mark ``env`` in use: eviction skips it until the matching :meth:`release`."""
        if env.venv is None:
            return
        self._in_use[env.venv] = self._in_use.get(env.venv, 0) + 1
        with contextlib.suppress(FileNotFoundError):
            os.utime(env.venv / _MARKER)

    def release(self, env: Environment) -> None:
        if env.venv is None:
            return
        count = self._in_use.get(env.venv, 0) - 1
        if count > 0:
            self._in_use[env.venv] = count
        else:
            self._in_use.pop(env.venv, None)
        with contextlib.suppress(FileNotFoundError):
            os.utime(env.venv / _MARKER)

    def entries(self) -> list[tuple[Path, float, int]]:
        """Published environments as (path, last used, size in bytes), least recently used first."""
        out: list[tuple[Path, float, int]] = []
        for entry in os.scandir(self.envs_dir):
            marker = Path(entry.path) / _MARKER
            try:
                last_used = marker.stat().st_mtime
                with marker.open() as fh:
                    size = int(json.load(fh).get("size", 0))
            except (OSError, ValueError):
                continue
            out.append((Path(entry.path), last_used, size))
        out.sort(key=lambda e: e[1])
        return out

    def evict(self, *, keep: Iterable[str] = ()) -> list[Path]:
        """Remove least-recently-used environments until under the size cap; never one in use."""
        if self.size_cap_bytes is None:
            return []
        keep_paths = {self.envs_dir / k for k in keep}
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        removed: list[Path] = []
        for path, _, size in entries:
            if total <= self.size_cap_bytes:
                break
            if self._in_use.get(path, 0) > 0 or path in keep_paths:
                continue
            trash = self.tmp_dir / f"evict.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, trash)  # unpublish atomically, then delete
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            total -= size
            removed.append(path)
        return removed

    def _remove_stale_tmp(self) -> None:
        """Remove temp dirs left by builds of processes that are gone."""
        for entry in os.scandir(self.tmp_dir):
            parts = entry.name.split(".")
            if len(parts) == 3 and parts[1].isdigit() and not pid_alive(int(parts[1])):
                shutil.rmtree(entry.path, ignore_errors=True)
