"""Find the embedded local job server, or start one detached.

:func:`find_server` reads the connection file (Jupyter runtime dir, then the state dir) and
checks the pid. :func:`ensure_server` starts ``python -m jupyter_ds_jobs server --state-dir DIR``
in its own session (it outlives the kernel or shell that started it), with stdout and stderr
in ``DIR/server.log``, and waits a few seconds at most for its connection file. A file lock
in the state dir keeps two kernels from starting two servers on one state dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from jupyter_ds_jobs.common.connection import (
    CONNECTION_FILE_NAME,
    ConnectionInfo,
    default_state_dir,
    pid_alive,
    runtime_dir,
)
from jupyter_ds_jobs.common.errors import FailedPrecondition, Unavailable

__all__ = ["LOG_FILE_NAME", "ensure_server", "find_server", "start_server", "stop_server"]

LOG_FILE_NAME = "server.log"
START_TIMEOUT = 8.0


def find_server(state_dir: Path | None = None) -> ConnectionInfo | None:
    """The live server of ``state_dir`` (default: the runtime dir's, then the default state dir's)."""
    if state_dir is not None:
        return ConnectionInfo.find(Path(state_dir))
    info = ConnectionInfo.find(None)
    if info is not None:
        return info
    return ConnectionInfo.find(default_state_dir())


@contextlib.contextmanager
def _start_lock(state_dir: Path, timeout: float) -> Iterator[None]:
    """Hold ``state_dir/.start.lock`` (one starter per state dir, across processes), waiting up
    to ``timeout`` seconds for another starter."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(state_dir / ".start.lock", timeout=timeout, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        raise Unavailable(f"another process is starting the job server in {state_dir}; try again") from None
    try:
        yield
    finally:
        lock.release()


def start_server(
    state_dir: Path | None = None,
    *,
    timeout: float = START_TIMEOUT,
    extra_args: tuple[str, ...] = (),
) -> ConnectionInfo:
    """Start a detached server on ``state_dir`` and wait for its connection file.

    Raises :class:`Unavailable` naming the log file when it does not come up in ``timeout``
    seconds (the process is left running if it is still starting).
    """
    sd = Path(state_dir or default_state_dir()).expanduser().resolve()
    sd.mkdir(parents=True, exist_ok=True)
    log_path = sd / LOG_FILE_NAME
    conn = sd / CONNECTION_FILE_NAME
    cmd = [sys.executable, "-m", "jupyter_ds_jobs", "server", "--state-dir", str(sd), *extra_args]
    env = dict(os.environ)
    env.pop("DS_JOBS_TOKEN", None)  # the server makes its own token unless told otherwise
    with open(log_path, "ab") as log:
        log.write(f"\n--- starting: {' '.join(cmd)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        code = proc.poll()
        with contextlib.suppress(FailedPrecondition):
            info = ConnectionInfo.read(conn)
            if info.pid == proc.pid:
                return info
        if code is not None:
            raise Unavailable(f"the local job server exited with code {code} while starting; see {log_path}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise Unavailable(f"the local job server did not start within {timeout:g}s; see {log_path}")


def ensure_server(state_dir: Path | None = None, *, timeout: float = START_TIMEOUT) -> ConnectionInfo:
    """A live server's connection: found, or started (detached) when none runs."""
    info = find_server(state_dir)
    if info is not None:
        return info
    sd = Path(state_dir or default_state_dir()).expanduser().resolve()
    with _start_lock(sd, timeout):
        info = ConnectionInfo.find(sd)  # someone else may have started it meanwhile
        if info is not None:
            return info
        return start_server(sd, timeout=timeout)


def stop_server(info: ConnectionInfo, *, timeout: float = 30.0) -> bool:
    """SIGTERM the server (it cancels running jobs and removes its connection file); wait for it.

    Returns True when it is gone, False when it still runs after ``timeout`` seconds.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(info.pid) or _is_zombie(info.pid):
            _cleanup_files(info)
            return True
        time.sleep(0.05)
    return False


def _is_zombie(pid: int) -> bool:
    """An exited process not yet reaped by its parent: gone for our purposes."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _cleanup_files(info: ConnectionInfo) -> None:
    for d in (Path(info.state_dir), runtime_dir()):
        info.remove_from(d / CONNECTION_FILE_NAME)
