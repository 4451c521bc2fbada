"""Job isolation: what a job may see of the machine, by the strongest means the host allows.

A job runs as a process of the server. Without isolation it could read everything the server
keeps (the connection file with the bearer token, ``secret.key``, ``jobs.sqlite``) and every
other job's directory. Modes, strongest first; ``auto`` (the default) picks the first the host
allows, found by trying each in a child process when the server starts:

``landlock``
    A Landlock ruleset (Linux 5.13+; ``ABI`` 6+ also scopes signals and abstract unix sockets):
    the job reads and executes only the system directories (``/usr``, ``/bin``, ``/lib*``,
    ``/etc``, ``/opt``, ``/sys``), the interpreters and Python environments, ``/proc``, a few
    ``/dev`` nodes, and writes only its working dir, its private tmp, ``/dev/shm`` and its
    project dir (``attach_project_disk``). Nothing else exists for it, however it asks (``..``,
    absolute paths, ``/proc/<pid>/root``: a sandboxed process cannot ptrace out of its domain).
    Its capabilities are dropped.
``namespaces``
    Unprivileged user, mount and pid namespaces: a new root with only the same paths bound in (read
    only but for the job's own), a fresh ``/proc`` with the job's processes alone, a minimal ``/dev``,
    an empty ``/tmp``; no capabilities.
``permissions``
    Nothing but the layout: the state dir 0700 (0711 with ``run_as``), secrets 0600, job working
    dirs in their own root. Against a job of the server's own user that protects nothing: use it
    with ``run_as`` (a server started as root runs its jobs as that unprivileged user).
``none``
    The explicit opt-out, for debugging: jobs run as before, with no private tmp either.

Every mode but ``none`` gives the job a private ``TMPDIR`` (``<tmp root>/<job>.*``, removed when
the job's process ends). The policy handed to the child (see ``executors/_sandbox_apply.py``) is
computed here per job; read-only paths that contain a protected dir (the state dir, the Jupyter
runtime dir) are replaced by their other children, so nothing above a secret is ever granted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from jupyter_ds_jobs.common.contract import PROJECT_HOME
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument

__all__ = ["APPLY_SCRIPT", "Isolation", "JobSandbox", "RunAs", "Sandbox", "probe"]

log = logging.getLogger(__name__)

APPLY_SCRIPT = str(Path(__file__).with_name("executors") / "_sandbox_apply.py")
SYSTEM_READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class Isolation(StrEnum):
    AUTO = "auto"
    LANDLOCK = "landlock"
    NAMESPACES = "namespaces"
    PERMISSIONS = "permissions"
    NONE = "none"


#: ``auto`` tries these in order; ``permissions`` always works.
STRONGEST_FIRST = (Isolation.LANDLOCK, Isolation.NAMESPACES, Isolation.PERMISSIONS)


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user a root server runs its jobs as."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, who: str) -> RunAs:
        try:
            entry = pwd.getpwuid(int(who)) if who.isdigit() else pwd.getpwnam(who)
        except KeyError:
            raise InvalidArgument(f"--run-as: no user {who!r} on this machine", field="run_as") from None
        if entry.pw_uid == 0:
            raise InvalidArgument("--run-as: the user must not be root", field="run_as")
        if os.geteuid() != 0:
            raise FailedPrecondition("--run-as needs a server started as root")
        groups = tuple(sorted({entry.pw_gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)}))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)

    def can_reach(self, path: Path) -> str | None:
        """The first ancestor of ``path`` (itself excluded) this user cannot search, or None."""
        for parent in reversed(path.parents):
            st = parent.stat()
            if st.st_uid == self.uid:
                ok = st.st_mode & 0o100
            elif st.st_gid in self.groups:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok:
                return str(parent)
        return None


_PROBED: dict[RunAs | None, dict[str, str]] = {}  # what the host allows does not change while we run


def probe(scratch: Path, run_as: RunAs | None = None) -> dict[str, str]:
    """Which modes work here: ``{"landlock": "" or why not, "namespaces": ..., "landlock_abi": N}``,
    each tried for real (in a child of a fresh interpreter) on ``scratch``; once per process."""
    if run_as not in _PROBED:
        _PROBED[run_as] = _probe(scratch, run_as)
    return dict(_PROBED[run_as])


def _probe(scratch: Path, run_as: RunAs | None) -> dict[str, str]:
    scratch.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        os.chown(scratch, run_as.uid, run_as.gid)
    probe_dir = tempfile.mkdtemp(prefix=".probe-", dir=scratch)
    if run_as is not None:
        os.chown(probe_dir, run_as.uid, run_as.gid)
    extra = json.dumps(_identity(run_as))
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", APPLY_SCRIPT, "--probe", probe_dir, extra],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        result: dict[str, str] = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        why = f"the probe failed: {e}"
        result = {"landlock": why, "namespaces": why, "landlock_abi": "0"}
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    return result


def _identity(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    return {"uid": run_as.uid, "gid": run_as.gid, "groups": list(run_as.groups)}


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _around(root: str, protected: Sequence[str]) -> list[str]:
    """The children of ``root`` that hold no protected dir, descending into those that lead to
    one (the protected dirs themselves left out)."""
    out: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        child = os.path.join(root, name)
        if any(_within(child, p) for p in protected):
            continue
        inside = [p for p in protected if _within(p, child)]
        out.extend(_around(child, inside) if inside and os.path.isdir(child) else [child])
    return out


def carve(paths: Iterable[str], protected: Sequence[str]) -> list[str]:
    """``paths`` (real) to grant, minus every protected dir: one inside a protected dir is left
    out, one above is replaced by its other children."""
    out: list[str] = []
    for path in dict.fromkeys(paths):
        if any(_within(path, p) for p in protected):
            continue
        inside = [p for p in protected if _within(p, path)]
        out.extend(_around(path, inside) if inside else [path])
    return out


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside another of them."""
    out: list[str] = []
    for path in sorted(set(paths)):
        if not (out and _within(path, out[-1])):
            out.append(path)
    return out


def _python_prefix(python: Path) -> list[str]:
    """The prefix a Python executable's real file lives in and, for a venv, the venv."""
    out: list[str] = []
    try:
        real = python.resolve(strict=True)
    except OSError:
        return out
    if real.parent.name == "bin" and (real.parent.parent / "lib").is_dir():
        out.append(str(real.parent.parent))
    cfg = python.parent.parent / "pyvenv.cfg"
    if cfg.is_file():
        out.append(str(python.parent.parent.resolve()))
    return out


@dataclass
class JobSandbox:
    """What one job gets: the policy for its child (None: nothing to apply), its environment,
    and the private tmp to remove when it ends."""

    policy: dict[str, Any] | None
    env: dict[str, str]
    tmp: Path | None
    description: str

    def cleanup(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Sandbox:
    """The server's isolation: one mode for every job, chosen once (see :meth:`create`)."""

    mode: Isolation
    tmp_root: Path
    protected: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    cache_dirs: tuple[str, ...] = ()
    run_as: RunAs | None = None
    landlock_abi: int = 0
    fallback_reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        requested: Isolation,
        *,
        tmp_root: Path,
        protected: Sequence[Path] = (),
        read_only: Sequence[Path] = (),
        cache_dirs: Sequence[Path] = (),
        run_as: RunAs | None = None,
    ) -> Sandbox:
        """The mode ``requested`` (the strongest that works for ``auto``), or FailedPrecondition
        saying why the host cannot give it. Jobs never read ``protected`` dirs, however the
        ``read_only`` paths (the operator's extras) reach them, except ``cache_dirs`` inside
        them (the environment cache)."""
        if requested is Isolation.NONE and run_as is not None:
            raise InvalidArgument("--run-as needs an isolation mode other than none", field="run_as")
        if run_as is not None and (blocked := run_as.can_reach(tmp_root)):
            raise FailedPrecondition(
                f"--run-as {run_as.user}: that user cannot reach the state dir ({blocked})"
            )
        abi, reasons = 0, {}
        if requested in (Isolation.AUTO, Isolation.LANDLOCK, Isolation.NAMESPACES):
            found = probe(tmp_root, run_as)
            abi = int(found.pop("landlock_abi", "0") or 0)
            reasons = {k: v for k, v in found.items() if v}
        if requested is Isolation.AUTO:
            mode = next(m for m in STRONGEST_FIRST if m.value not in reasons)
        elif requested.value in reasons:
            raise FailedPrecondition(
                f"isolation {requested.value} is not available here: {reasons[requested.value]}"
            )
        else:
            mode = requested
        real = tuple(os.path.realpath(p) for p in protected)
        extra, caches = tuple(map(str, read_only)), tuple(map(str, cache_dirs))
        return cls(mode, tmp_root, real, extra, caches, run_as, abi, reasons)

    def describe(self) -> str:
        """``landlock (ABI 7)``, ``namespaces``, ...; with ``, jobs run as USER``."""
        text = (
            f"{self.mode.value} (ABI {self.landlock_abi})"
            if self.mode is Isolation.LANDLOCK
            else self.mode.value
        )
        return text + (f", jobs run as {self.run_as.user}" if self.run_as is not None else "")

    @cached_property
    def _static_read_only(self) -> tuple[str, ...]:
        """System dirs, every interpreter the server knows, and the configured extras."""
        from jupyter_ds_jobs.server.interpreters import discover_pythons

        paths = list(SYSTEM_READ_ONLY)
        with contextlib.suppress(OSError):
            paths.append(str(Path("/etc/resolv.conf").resolve().parent))
        for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
            paths.append(prefix)
        for python in discover_pythons(os.environ).values():
            paths += _python_prefix(python)
        return (*paths, *self.read_only)

    def _read_only(self, env: Mapping[str, str]) -> list[str]:
        paths = list(self._static_read_only)
        for entry in env.get("PATH", "").split(os.pathsep):
            if os.path.isabs(entry) and os.path.isdir(entry):
                paths.append(entry)
                for name in ("python", "python3"):
                    if os.path.exists(os.path.join(entry, name)):
                        paths += _python_prefix(Path(entry) / name)
        if env.get("VIRTUAL_ENV"):
            paths.append(env["VIRTUAL_ENV"])
        real = {p: os.path.realpath(p) for p in paths if os.path.exists(p)}
        granted = carve(real.values(), self.protected)
        # the environment cache lies inside the state dir
        granted += [p for p in map(os.path.realpath, self.cache_dirs) if os.path.exists(p)]
        outermost = _outermost(granted)
        # a path that is a link (/bin -> usr/bin) is named too: the namespaces mode recreates it
        links = [p for p, r in real.items() if p != r and any(_within(r, g) for g in outermost)]
        return sorted(set(outermost + links))

    def prepare(self, cwd: Path, env: Mapping[str, str]) -> JobSandbox:
        """Make the job's private tmp (owned by ``run_as``), and its policy and environment.

        Blocking (a walk of the working dir with ``run_as``): call it in a thread.
        """
        env = dict(env)
        if self.mode is Isolation.NONE:
            return JobSandbox(None, env, None, self.describe())
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{cwd.name}.", dir=self.tmp_root))
        env["TMPDIR"] = str(tmp)
        rw = [str(cwd), str(tmp)]
        if env.get(PROJECT_HOME):
            rw.append(env[PROJECT_HOME])
        if self.run_as is not None:  # what the server put there (inputs, modules) becomes the job's
            os.chmod(cwd, 0o700)
            _chown_tree(cwd, self.run_as.uid, self.run_as.gid)
            for path in rw[1:]:
                os.chown(path, self.run_as.uid, self.run_as.gid)
        if self.mode is Isolation.PERMISSIONS and self.run_as is None:
            return JobSandbox(None, env, tmp, self.describe())
        policy: dict[str, Any] = {
            "mode": self.mode.value,
            "ro": self._read_only(env) if self.mode is not Isolation.PERMISSIONS else [],
            "rw": [os.path.realpath(p) for p in rw],
            "cwd": str(cwd),
            "env": {"LC_CTYPE": env.get("LC_CTYPE")},
            **_identity(self.run_as),
        }
        return JobSandbox(policy, env, tmp, self.describe())


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(dirpath, name), uid, gid)
