"""Instance types as resource profiles: what a job gets of this machine, and who waits.

Each instance type is a :class:`Profile` (cpus, memory, gpus): the contract's table
(``common.contract.INSTANCE_TYPES``, shared with the client) unless a file overrides or adds
types (:func:`load_profiles`). The server's :class:`Capacity` is the machine's CPUs (its
affinity mask) and memory, and the GPUs ``nvidia-smi -L`` lists; each can be declared instead.

Invariants:

* A profile's cpus and memory larger than the whole machine are clamped to it (a laptop still
  runs a ``c1.4`` job, on all its cores); GPUs are never clamped, so a GPU type on a server
  without GPUs never fits. ``strict`` turns clamping off.
* From a job's ``cloud_instance_types`` the first type that can ever fit here is chosen
  (:meth:`Resources.choose`); none fitting is FAILED_PRECONDITION naming what the server has.
* :meth:`Resources.take` hands out whole cores, whole GPUs and bytes of memory until they run
  out; a job that does not fit waits (``runtime``), first come first served. A clamped part is
  shared, not held: the job runs on all the cores (or within all the memory) beside the others,
  since holding the whole machine would make every job of a small machine wait for the last.
* Memory is enforced by watching the job's processes' resident memory (:func:`watch_memory`,
  /proc): a cgroup needs a delegated cgroup v2 tree, which a server run by a user (or in a
  container) rarely has, and ``RLIMIT_AS`` counts address space, not memory (CUDA and JAX reserve
  far more than they use), per process rather than per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from jupyter_ds_jobs.common.contract import INSTANCE_TYPES
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "THREAD_VARS",
    "Allotment",
    "Capacity",
    "Profile",
    "Resources",
    "default_profiles",
    "detect_gpus",
    "load_profiles",
    "watch_memory",
]

GIB = 1 << 30
#: Thread-pool sizes of the numeric libraries: set to the job's cpus unless the job set them.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)
#: How often a job's resident memory is measured.
MEMORY_POLL_S = 0.1
#: How memory limits are enforced (for the job's system log and the docs).
MEMORY_ENFORCEMENT = (
    f"resident memory of its processes watched every {MEMORY_POLL_S:g}s (/proc), not a cgroup "
    "(needs a delegated cgroup v2 tree) nor RLIMIT_AS (address space, per process)"
)
#: Where a container's memory limit is (cgroup v2, then v1).
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def gib(n: float) -> str:
    """``32 GiB``, ``0.25 GiB``, ``23.4 GiB``."""
    return f"{round(n, 2):g} GiB"


@dataclass(frozen=True)
class Profile:
    """What one instance type is made of."""

    name: str
    cpus: int
    memory_gib: float
    gpus: int
    #: Ray custom resources a job of this type asks for (``entrypoint_resources``; Ray only).
    ray_resources: tuple[tuple[str, float], ...] = ()

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    def describe(self) -> str:
        return f"{self.name} ({self.cpus} cpus, {gib(self.memory_gib)}, {self.gpus} GPUs)"


def default_profiles() -> dict[str, Profile]:
    """The contract's table: DataSphere's instance types."""
    return {n: Profile(n, t.cpus, float(t.memory_gib), t.gpus) for n, t in INSTANCE_TYPES.items()}


def load_profiles(path: Path) -> dict[str, Profile]:
    """The default table with the types of a JSON file (``{"c1.4": {"cpus": 4, "memory_gib": 32,
    "gpus": 0}, ...}``) added or replaced; a type the file names only in part keeps the rest."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as e:
        raise InvalidArgument(f"--instance-types-file: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise InvalidArgument(f"--instance-types-file {path}: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"--instance-types-file {path}: expected an object of instance types")
    profiles = default_profiles()
    for name, spec in data.items():
        profiles[name] = _profile(name, spec, profiles.get(name), str(path))
    return profiles


def _profile(name: str, spec: Any, base: Profile | None, where: str) -> Profile:
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where}: {name!r} must be an object with cpus, memory_gib, gpus")
    unknown = set(spec) - {"cpus", "memory_gib", "gpus", "ray_resources"}
    if unknown:
        raise InvalidArgument(
            f"{where}: {name}.{sorted(unknown)[0]}: unknown key (cpus, memory_gib, gpus, ray_resources)"
        )
    custom = spec.get("ray_resources", dict(base.ray_resources) if base is not None else {})
    if not isinstance(custom, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int | float) and not isinstance(v, bool)
        and math.isfinite(v) and v > 0
        for k, v in custom.items()
    ):  # fmt: skip
        raise InvalidArgument(
            f"{where}: {name}.ray_resources must map resource names to positive numbers, got {custom!r}"
        )
    values: dict[str, float] = {}
    for key in ("cpus", "memory_gib", "gpus"):
        value = spec.get(key, getattr(base, key) if base is not None else None)
        if value is None:
            raise InvalidArgument(f"{where}: {name}.{key} is missing")
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (key != "memory_gib" and value != int(value)):
            raise InvalidArgument(f"{where}: {name}.{key} must be a non-negative number, got {value!r}")
        values[key] = value
    if values["cpus"] < 1 or values["memory_gib"] <= 0:
        raise InvalidArgument(f"{where}: {name} needs at least 1 cpu and some memory")
    return Profile(
        name, int(values["cpus"]), float(values["memory_gib"]), int(values["gpus"]),
        tuple(sorted((k, float(v)) for k, v in custom.items())),
    )  # fmt: skip


def detect_gpus() -> tuple[str, ...]:
    """The indices of the NVIDIA GPUs ``nvidia-smi -L`` lists; none without it (or a driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(
        line.split(":", 1)[0].split()[1]
        for line in out.splitlines()
        if line.startswith("GPU ") and ":" in line
    )


def machine_memory() -> int:
    """The machine's memory, or the container's limit when that is lower."""
    total = int(psutil.virtual_memory().total)
    for path in CGROUP_MEMORY_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            return min(total, int(Path(path).read_text().strip()))  # "max": no limit, ValueError
    return total


@dataclass(frozen=True)
class Capacity:
    """What this server's jobs share: cores (ids to pin to), memory and GPUs (CUDA indices)."""

    cores: tuple[int, ...]
    memory_bytes: int
    gpus: tuple[str, ...]

    @classmethod
    def detect(
        cls, cpus: int | None = None, memory_gib: float | None = None, gpus: int | None = None
    ) -> Capacity:
        """The machine's, each part overridden when declared (declared GPUs need not exist)."""
        real = sorted(os.sched_getaffinity(0))
        n = cpus if cpus is not None else len(real)
        if n < 1:
            raise InvalidArgument("--cpus must be at least 1")
        cores = tuple(real[i % len(real)] for i in range(n))  # more declared than real: shared
        mem = int(memory_gib * GIB) if memory_gib is not None else machine_memory()
        if mem <= 0:
            raise InvalidArgument("--memory-gib must be positive")
        if gpus is not None and gpus < 0:
            raise InvalidArgument("--gpus must not be negative")
        found = tuple(str(i) for i in range(gpus)) if gpus is not None else detect_gpus()
        return cls(cores, mem, found)

    def describe(self) -> str:
        g = f"{len(self.gpus)} GPUs" if self.gpus else "no GPU"
        return f"{len(self.cores)} cpus, {gib(self.memory_bytes / GIB)} memory, {g}"


@dataclass
class Allotment:
    """What one job holds while it runs."""

    type_name: str
    profile: Profile  # as asked
    cpus: int
    slots: tuple[int, ...]  # indices into Capacity.cores it holds (none when its cpus are shared)
    cores: tuple[int, ...]  # the CPU ids it is pinned to
    memory_bytes: int  # its limit
    held_memory: int  # what it holds of the free memory (0 when shared)
    gpus: tuple[str, ...]
    clamped: bool = False

    @property
    def memory_limit(self) -> str:
        return f"{self.type_name}: {gib(self.memory_bytes / GIB)}"

    def apply_env(self, env: Mapping[str, str], job_vars: Iterable[str]) -> dict[str, str]:
        """``env`` with the thread variables (unless the job set them) and its GPUs."""
        out = dict(env)
        own = set(job_vars)
        for key in THREAD_VARS:
            if key not in own:
                out[key] = str(self.cpus)
        out["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return out

    def describe(self) -> str:
        fit = " (clamped to this machine, shared with other jobs)" if self.clamped else ""
        cores = ",".join(map(str, sorted(set(self.cores))))
        gpus = ",".join(self.gpus) or "none"
        return (
            f"resources: {self.type_name}{fit}: {self.cpus} cpus on cores {cores}, "
            f"GPUs {gpus}, memory limit {gib(self.memory_bytes / GIB)} ({MEMORY_ENFORCEMENT})"
        )


@dataclass
class Resources:
    """The profiles this server accepts, its capacity and what running jobs hold."""

    profiles: dict[str, Profile]
    capacity: Capacity
    strict: bool = False
    _free_slots: set[int] = field(init=False)
    _free_gpus: list[str] = field(init=False)
    _free_memory: int = field(init=False)

    def __post_init__(self) -> None:
        self._free_slots = set(range(len(self.capacity.cores)))
        self._free_gpus = list(self.capacity.gpus)
        self._free_memory = self.capacity.memory_bytes

    def fitted(self, name: str) -> tuple[int, int, bool] | None:
        """(cpus, memory bytes, clamped) of ``name`` on this machine; None if it never fits."""
        p = self.profiles.get(name)
        if p is None:  # a job created before the server was restarted with other types
            return None
        cap = self.capacity
        if p.gpus > len(cap.gpus):
            return None
        cpus, mem = min(p.cpus, len(cap.cores)), min(p.memory_bytes, cap.memory_bytes)
        clamped = (cpus, mem) != (p.cpus, p.memory_bytes)
        if clamped and self.strict:
            return None
        return cpus, mem, clamped

    def choose(self, names: Iterable[str]) -> str:
        """The first of ``names`` that can ever fit here; FAILED_PRECONDITION if none can."""
        names = list(names)
        for name in names:
            if self.fitted(name) is not None:
                return name
        fit = [n for n in self.profiles if self.fitted(n) is not None]
        asked = ", ".join(self.profiles[n].describe() for n in names)
        raise FailedPrecondition(
            f"no instance type of the job fits this server: {asked}; this server has "
            f"{self.capacity.describe()}{' (strict resources: no clamping)' if self.strict else ''}"
            f"; types that fit: {', '.join(fit) or 'none'}"
        )

    def take(self, name: str) -> Allotment | None:
        """Hold what ``name`` needs if it is free now; None when the job must wait."""
        fitted = self.fitted(name)
        if fitted is None:  # it did when the job was created: the server was restarted since
            raise FailedPrecondition(
                f"instance type {name} does not fit this server any more: it has {self.capacity.describe()}"
            )
        cpus, mem, clamped = fitted
        p = self.profiles[name]
        n_slots = cpus if cpus == p.cpus else 0  # clamped: shared, not held
        held = mem if mem == p.memory_bytes else 0
        if len(self._free_slots) < n_slots or len(self._free_gpus) < p.gpus or self._free_memory < held:
            return None
        slots = tuple(sorted(self._free_slots)[:n_slots])
        self._free_slots.difference_update(slots)
        gpus = tuple(self._free_gpus[: p.gpus])
        del self._free_gpus[: p.gpus]
        self._free_memory -= held
        cores = tuple(self.capacity.cores[s] for s in slots) if n_slots else self.capacity.cores
        return Allotment(name, p, cpus, slots, cores, mem, held, gpus, clamped)

    def release(self, a: Allotment) -> None:
        self._free_slots.update(a.slots)
        self._free_gpus = sorted({*self._free_gpus, *a.gpus}, key=self.capacity.gpus.index)
        self._free_memory += a.held_memory

    def free(self) -> str:
        return (
            f"{len(self._free_slots)} cpus, {gib(self._free_memory / GIB)}, {len(self._free_gpus)} GPUs free"
        )


_PAGE = os.sysconf("SC_PAGE_SIZE")
#: Linux lists each thread's children here (CONFIG_PROC_CHILDREN); psutil's walk reads all of /proc.
_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (empty when it is gone)."""
    if not _CHILDREN:
        try:
            root = psutil.Process(pid)
            return [pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.Error:
            return []
    if not os.path.exists(f"/proc/{pid}"):
        return []
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return pids


def _rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{p}/statm") as f:
            total += int(f.read().split()[1]) * _PAGE
    return total


async def watch_memory(pid: int, limit_bytes: int, kill: Any) -> bool:
    """Until ``pid``'s tree ends: sum its resident memory; over ``limit_bytes``, SIGKILL every
    process of it (and ``kill()``, the job's group) and return True. Runs until cancelled.

    A child that leaves the tree (a daemon reparented to init) is no longer counted; memory
    allocated between two polls can go over the limit for up to ``MEMORY_POLL_S``. A poll reads
    ``/proc`` for the job's own processes only (well under a millisecond for a small job)."""
    while True:
        pids = await asyncio.to_thread(_tree, pid)
        if not pids:
            return False
        if await asyncio.to_thread(_rss, pids) > limit_bytes:
            kill()
            for p in pids:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            return True
        await asyncio.sleep(MEMORY_POLL_S)
