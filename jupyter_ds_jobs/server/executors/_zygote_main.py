"""A warm interpreter that forks cell jobs (run by the job's own Python; stdlib only).

Started by :mod:`jupyter_ds_jobs.server.executors.zygote` with a Unix socket (its fd in argv). It imports
what a cell job needs up front (cloudpickle and the runner's modules) once, then, for every
request, forks a child that becomes the job: its own session, the job's cwd, environment, stdout
and stderr (two file descriptors passed with the request), ``sys.argv`` and ``sys.path``; the
child runs the script as ``__main__`` and exits with its exit code. Python's start and those
imports (most of a small job's time) are paid once instead of per job.

Protocol, one JSON object per packet (a SOCK_SEQPACKET socket keeps message boundaries):

* server -> zygote: ``{"id": N, "argv": [...], "cwd": ..., "env": {...}, "sandbox": POLICY}`` with
  2 fds (``sandbox``: null, or the policy the child applies to itself first, see
  ``_sandbox_apply.py``; a child that cannot apply it exits 126 and runs nothing)
* zygote -> server: ``{"id": N, "pid": P}`` once forked (``{"id": N, "error": ...}`` if not),
  then ``{"pid": P, "exit": CODE}`` when the child ends (CODE < 0: killed by signal -CODE).
"""

import contextlib
import json
import os
import select
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

SANDBOX_ERROR = ""
if TYPE_CHECKING:
    from jupyter_ds_jobs.server.executors import _sandbox_apply as sandbox
else:  # run as a script: this file's directory is sys.path[0]
    try:
        import _sandbox_apply as sandbox
    except Exception as e:  # the job's Python lacks ctypes, say: sandboxed jobs start plainly
        sandbox = None
        SANDBOX_ERROR = f"this interpreter cannot sandbox a job: {e!r}"

# The runner's imports, then what every forked child uses itself, cloudpickle (absent from some job
# venvs) or not: runpy, ast (compile() builds the AST types on its first call) and threading.
PRELOAD: tuple[str, ...] = ("cloudpickle", "json", "linecache", "contextlib", "importlib", "types", "typing")
PRELOAD += ("base64", "runpy", "pkgutil", "ast", "threading")


def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            __import__(name)


def _close_from_3() -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)


def _child(req: dict[str, Any], fds: list[int], base_path: list[str]) -> None:
    """In the forked child: become the job, run it, never return."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        _close_from_3()  # the zygote's socket, pipes and the passed fds
        os.chdir(req["cwd"])
        if req.get("sandbox"):
            try:
                sandbox.apply(req["sandbox"])
            except Exception as e:
                print(f"ds-jobs sandbox: {e}", file=sys.stderr, flush=True)
                os._exit(126)
        env = req["env"]
        os.environ.clear()
        os.environ.update(env)
        if "random" in sys.modules:  # never share the zygote's random state between jobs
            sys.modules["random"].seed()
        argv = req["argv"][1:]
        script = os.path.abspath(argv[0])
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.dirname(script), *extra, *base_path]
        sys.argv[:] = argv
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=env.get("PYTHONUNBUFFERED") == "1" or None)  # type: ignore[union-attr]
        import runpy

        try:
            runpy.run_path(argv[0], run_name="__main__")  # argv[0] as given, like python does
            code = 0
        except SystemExit as e:
            c = e.code
            code = 0 if c is None else c if isinstance(c, int) else 1
            if not isinstance(c, (int, type(None))):
                print(c, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        try:
            import threading

            threading._shutdown()  # type: ignore[attr-defined]
        except Exception:
            pass
        try:
            import atexit

            atexit._run_exitfuncs()
        except Exception:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF if code >= 0 else 1)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.setblocking(True)
    base_path = [p for p in sys.path[1:]]  # without this script's own dir
    _preload()
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    children: set[int] = set()

    def send(obj: dict[str, Any]) -> None:
        sock.send(json.dumps(obj).encode())

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            send({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})

    while True:
        try:
            ready, _, _ = select.select([sock.fileno(), rfd], [], [])
        except InterruptedError:
            continue
        if rfd in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(rfd, 512)
            reap()
        if sock.fileno() not in ready:
            continue
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 22, 2)
        if not data:  # the server went away: end, and let the children finish on their own
            return
        req = json.loads(data)
        try:
            if req.get("sandbox") and sandbox is None:
                raise OSError(SANDBOX_ERROR)
            if len(fds) != 2:
                raise OSError(f"expected 2 file descriptors, got {len(fds)}")
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            send({"id": req["id"], "error": str(e)})
            continue
        if pid == 0:
            _child(req, fds, base_path)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        send({"id": req["id"], "pid": pid})
        reap()


if __name__ == "__main__":
    main()
