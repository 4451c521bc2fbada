"""Put the calling process into a job's sandbox (stdlib only, Linux; run by the job's own Python).

Used in two places: the warm interpreter (``_zygote_main``) calls :func:`apply` in each forked
child before the job runs, and plain starts run this file as an exec wrapper::

    python -I -S _sandbox_apply.py POLICY PROGRAM [ARG...]

which applies the policy (marshal, in hex: no json or signal import, a few ms less per start) and
execs ``PROGRAM`` with the environment it was given. Anything that
fails raises :class:`SandboxError`; the wrapper then prints it and exits 126: a job never runs
less confined than asked.

The policy (built by :mod:`jupyter_ds_jobs.server.sandbox`) is a JSON object: ``mode``
(``landlock`` | ``namespaces`` | ``permissions``), ``ro`` and ``rw`` (absolute paths the job may
read and execute / also write), ``cwd`` (the working dir to end in), ``uid``, ``gid`` and
``groups`` (the user it runs as; null: the server's) and ``env`` (variables the wrapper sets, or
unsets when null, before the exec: Python's start may have coerced ``LC_CTYPE``).

* ``landlock``: no capabilities, ``PR_SET_NO_NEW_PRIVS``, then a Landlock ruleset that handles
  every filesystem right the kernel knows and allows only ``ro``, ``rw``, ``/proc`` (read) and a
  few ``/dev`` nodes; from ABI 6 signals and abstract unix sockets are scoped to the job as well.
  The calling process stays the job.
* ``namespaces``: the calling process (A) enters new user, mount and pid namespaces and forks B,
  pid 1 there, which builds a new root on a tmpfs (``ro`` / ``rw`` bound at their own paths, a
  fresh ``/proc``, a minimal ``/dev``, an empty tmpfs on ``/tmp``), pivots into it, drops
  the old root and forks C. C returns from :func:`apply` as the job, in its own session, without
  capabilities. B forwards signals to C's group and exits with C (the kernel then ends whatever
  C left in the namespace); A relays C's exit status to whoever waits for A.
* ``permissions``: only the change of user.
* ``affinity``: nothing but the CPU affinity (a job without a sandbox that is pinned to cores).

Any mode first pins the process to ``cpus`` (a list of CPU ids, when the policy has it).
"""

from __future__ import annotations

import contextlib
import ctypes
import marshal
import os
import stat
import struct
import sys
from typing import Any

__all__ = ["SandboxError", "apply", "landlock_abi", "main", "probe"]


class SandboxError(Exception):
    """The sandbox could not be set up."""


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def _ok(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)} (errno {err})")
    return ret


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


# -- capabilities and user ------------------------------------------------------------------------
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


def _drop_capabilities() -> None:
    """Empty every capability set (the bounding set too, so a root job regains none at exec)."""
    libc = _libc()
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: nothing to drop
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    _ok(libc.capset(header, data), "capset")


def _no_new_privs() -> None:
    _ok(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _become(policy: dict[str, Any]) -> None:
    if policy.get("uid") is None:
        return
    uid, gid = int(policy["uid"]), int(policy["gid"])
    os.setgroups([int(g) for g in policy.get("groups") or [gid]])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SandboxError(f"could not become uid {uid}")
    _libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as after an exec: its /proc/self is its own again


# -- landlock -------------------------------------------------------------------------------------
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # x86_64 and aarch64 alike
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


def _devices() -> list[str]:
    """The /dev nodes a job may use: the basic ones and accelerators (NVIDIA's nodes and
    nvidia-caps, DRM render nodes, AMD's kfd)."""
    try:
        names = os.listdir("/dev")
    except OSError:
        names = []
    gpus = [f"/dev/{n}" for n in sorted(names) if n.startswith("nvidia") or n in ("dri", "kfd")]
    return [*DEV_NODES, *gpus]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    try:
        ret = int(
            _libc().syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        )
    except (OSError, AttributeError):
        return 0
    return max(ret, 0)


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute ... make_sym
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def _landlock(policy: dict[str, Any]) -> None:
    libc = _libc()
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("this kernel has no Landlock")
    fs = _handled_fs(abi)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", fs, 0, scoped)[: 24 if abi >= 6 else 16 if abi >= 4 else 8]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _ok(
        int(
            libc.syscall(
                ctypes.c_long(SYS_CREATE_RULESET), buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
            )
        ),
        "landlock_create_ruleset",
    )
    rules: list[tuple[str, int]] = [(p, READ) for p in policy.get("ro", ())]
    rules += [(p, fs) for p in policy.get("rw", ())]
    rules += [("/proc", READ), ("/dev/shm", fs)] + [(p, FILE_RIGHTS | READ_DIR) for p in _devices()]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this host lacks
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= FILE_RIGHTS
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access & fs, fd), 12)
                _ok(int(libc.syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0))), f"landlock_add_rule({path})")  # fmt: skip
            finally:
                os.close(fd)
        _no_new_privs()
        _ok(int(libc.syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0))), "landlock_restrict_self")  # fmt: skip
    finally:
        os.close(ruleset)


# -- namespaces -----------------------------------------------------------------------------------
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
# statvfs f_flag -> the mount flag a read-only remount must keep (a user namespace may not drop it)
_KEEP = ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    ret = _libc().mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _ok(ret, f"mount {src or fstype} on {target}")


def _unescape(field: bytes) -> str:
    """A mountinfo path: space, tab, newline and backslash come as octal escapes (``\\040``)."""
    parts = field.split(b"\\")
    out = parts[0]
    for part in parts[1:]:
        out += bytes([int(part[:3], 8)]) + part[3:]
    return os.fsdecode(out)


def _mount_points(prefix: str) -> list[str]:
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if _within(point, prefix):
                points.append(point)
    return points


def _remount_ro(points: list[str], binds: list[tuple[str, bool]]) -> None:
    """Make read-only every mount in ``points`` whose nearest bind (target, writable) above it is
    read-only, keeping the flags that are locked."""
    for point in points:
        owners = [b for b in binds if _within(point, b[0])]
        if not owners or max(owners, key=lambda b: len(b[0]))[1]:
            continue
        try:
            flags = os.statvfs(point).f_flag
        except OSError:
            continue
        keep = sum(ms for st, ms in _KEEP if flags & st)
        _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _enter_namespaces() -> None:
    uid, gid = os.geteuid(), os.getegid()
    _ok(_libc().unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID), "unshare(user, mount, pid)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _make_point(target: str, is_dir: bool) -> bool:
    """Create the mount point ``target`` (a dir, or an empty file); False when it cannot be."""
    try:
        if is_dir:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        return os.path.exists(target)
    return True


def _open_sources(binds: list[tuple[str, str, bool]]) -> dict[str, int]:
    """O_PATH descriptors of the real paths to bind (opened before anything covers them)."""
    fds = {}
    for _, real, _ in binds:
        if real not in fds:
            try:
                fds[real] = os.open(real, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this host (or this user) lacks
    return fds


def _bind_all(root: str, binds: list[tuple[str, str, bool]], fds: dict[str, int]) -> None:
    """Bind ``(path, real path, writable)`` into ``root`` at their real paths; the path itself
    becomes a symlink where it differs."""
    done: list[tuple[str, bool]] = []
    for _, real, writable in sorted(binds, key=lambda b: (b[1], b[2])):
        fd = fds.get(real)
        if fd is None or not _make_point(root + real, stat.S_ISDIR(os.fstat(fd).st_mode)):
            continue
        try:
            _mount(f"/proc/self/fd/{fd}", root + real, None, MS_BIND | MS_REC)
        except SandboxError:
            if real == "/sys":  # optional
                continue
            raise
        done.append((root + real, writable))
    _remount_ro(_mount_points(root), done)
    for path, real, _ in binds:
        link = root + path
        if path != real and real in fds and not os.path.lexists(link):
            try:
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(real, link)
            except OSError:
                pass


def _make_dev(root: str) -> None:
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for node in _devices():
        if os.path.exists(node) and _make_point(root + node, os.path.isdir(node)):
            _mount(node, root + node, None, MS_BIND | MS_REC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(dev + "/shm")
    _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _build_root(policy: dict[str, Any]) -> None:
    """In the new namespaces: a tmpfs root with only the policy's paths, then pivot into it."""
    binds = [(p, os.path.realpath(p), False) for p in [*policy.get("ro", ()), "/sys"]]
    binds += [(p, os.path.realpath(p), True) for p in policy.get("rw", ())]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The new root's tmpfs goes over /tmp (private to these namespaces): no path bound in lies
    # above it, so no recursive bind takes the new root along with itself.
    root = "/tmp"
    binds = [b for b in binds if not _within(root, b[1])]
    fds = _open_sources(binds)
    try:
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        os.mkdir(root + "/tmp")  # first: paths below /tmp get their mount points in it
        _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        _bind_all(root, binds, fds)
    finally:
        for fd in fds.values():
            os.close(fd)
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _make_dev(root)
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SandboxError(f"pivot_root: unknown on {os.uname().machine}")
    _ok(int(_libc().syscall(ctypes.c_long(number), b".", b".")), "pivot_root")
    _ok(_libc().umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _relay(pid: int, status_r: int) -> None:
    """A: wait for B, then end the way the job (C) ended."""
    import signal  # imported by apply(), while the stdlib was in reach

    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    data = os.read(status_r, 16)
    if data:
        status = int(data)
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
        os._exit(128 + killed_by)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _init(job: int, status_w: int) -> None:
    """B, pid 1: forward signals to the job's group, reap, end with the job."""
    import signal  # imported by apply(), while the stdlib was in reach

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(job, sig)

    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == job:
            os.write(status_w, str(status).encode())
            os._exit(0)


def _namespaces(policy: dict[str, Any]) -> None:
    _enter_namespaces()
    status_r, status_w = os.pipe()
    b = os.fork()
    if b:
        os.close(status_w)
        _relay(b, status_r)
    os.close(status_r)
    try:
        _build_root(policy)
        c = os.fork()
    except BaseException as e:  # B cannot report otherwise: its stderr is the job's
        print(f"ds-jobs sandbox: {e}", file=sys.stderr, flush=True)
        os._exit(126)
    if c:
        _init(c, status_w)
    os.close(status_w)
    os.setsid()
    _drop_capabilities()
    _no_new_privs()


# -- entry points ---------------------------------------------------------------------------------
def apply(policy: dict[str, Any]) -> None:
    """Confine the calling process (single-threaded) as ``policy`` says; it then runs the job."""
    mode = policy.get("mode")
    if mode not in ("landlock", "namespaces", "permissions", "affinity"):
        raise SandboxError(f"unknown isolation mode {mode!r}")
    try:
        if policy.get("cpus"):  # the job's cores (its instance type), inherited by all it starts
            os.sched_setaffinity(0, policy["cpus"])
        if mode == "namespaces":
            import signal  # noqa: F401 - for _relay and _init, while the stdlib is in reach

        _become(policy)
        if mode == "landlock":
            _drop_capabilities()
            _landlock(policy)
        elif mode == "namespaces":
            _namespaces(policy)
        if policy.get("cwd"):
            os.chdir(policy["cwd"])
    except OSError as e:
        raise SandboxError(str(e)) from None


def probe(tmp: str, identity: dict[str, Any]) -> dict[str, str]:
    """Try each mode in a child process with a small policy (as the user ``identity`` names, if
    any): ``{mode: "" or why not}``, and the Landlock ABI."""
    policy = {"ro": ["/usr", "/bin", "/lib", "/lib64", "/etc"], "rw": [tmp], "cwd": tmp}
    policy.update(identity)
    out = {}
    for mode in ("landlock", "namespaces"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                apply(dict(policy, mode=mode))
                os._exit(0)
            except BaseException as e:
                os.write(w, str(e).encode())
                os._exit(2)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        why = os.read(r, 4096).decode(errors="replace")
        os.close(r)
        out[mode] = "" if status == 0 else why or f"exit status {status}"
    out["landlock_abi"] = str(landlock_abi())
    return out


SIGPIPE, SIGXFSZ = 13, 25  # x86_64 and aarch64 alike


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--probe"]:
        import json

        print(json.dumps(probe(argv[2], json.loads(argv[3]) if len(argv) > 3 else {})))
        return 0
    try:
        policy = marshal.loads(bytes.fromhex(argv[1]))
        apply(policy)
        for key, value in (policy.get("env") or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for sig in (SIGPIPE, SIGXFSZ):  # Python ignores them; a plain exec would not
            _libc().signal(sig, None)  # SIG_DFL
    except (SandboxError, OSError, ValueError, IndexError) as e:
        print(f"ds-jobs sandbox: {e}", file=sys.stderr, flush=True)
        return 126
    try:
        os.execv(argv[2], argv[2:])
    except OSError as e:
        print(f"ds-jobs sandbox: cannot run {argv[2]}: {e.strerror}", file=sys.stderr, flush=True)
    return 126


if __name__ == "__main__":
    sys.exit(main(sys.argv))
