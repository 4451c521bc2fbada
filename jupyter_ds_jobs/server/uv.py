"""Running uv for environment builds: its binary, its environment, its output streamed by line.

:meth:`Uv.build_venv` makes a relocatable venv in a given directory and installs requirements into
it; the cache (:mod:`.environments`) decides where, and publishes it.

* The binary is the ``uv`` package's own (a dependency), else ``uv`` on PATH; found once.
* uv runs in the server's environment with its cache under the cache root (unless
  ``UV_CACHE_DIR`` is set), never downloading a Python, with no colour or progress bars, and
  without variables that would point it at another environment (``VIRTUAL_ENV``, ...).
* Every stdout and stderr line goes to the caller as it comes (an over-long line in pieces); the
  last lines of stderr are kept for the error message. Past its deadline uv's process group is
  killed and the build fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from jupyter_ds_jobs.common.errors import FailedPrecondition

__all__ = ["NETWORK_ERROR", "EnvironmentBuildError", "LogFn", "Uv", "find_uv", "tree_size"]

LogFn = Callable[[str], None]

_STDERR_KEEP = 200  # lines of uv's stderr kept for the error message
_LINE_MAX = 64 * 1024
_READ = 64 * 1024
_STRIPPED = ("VIRTUAL_ENV", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT", "UV_SYSTEM_PYTHON", "UV_OFFLINE")

#: uv's messages when the package index cannot be reached (then a build retries offline).
NETWORK_ERROR = re.compile(
    r"Failed to fetch|error sending request|tcp connect error|dns error|failed to lookup address"
    r"|Connection refused|Network is unreachable|Could not connect|operation timed out|Request failed after",
    re.IGNORECASE,
)


class EnvironmentBuildError(FailedPrecondition):
    """Building a job's environment failed; ``stderr`` holds uv's own error output."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


async def _pump(
    stream: asyncio.StreamReader | None, emit: LogFn, keep: collections.deque[str] | None
) -> None:
    # Not StreamReader.readline: that raises on a line over its limit; here such a line goes in pieces.
    if stream is None:
        return

    def line_out(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        emit(line)
        if keep is not None:
            keep.append(line)

    buf = b""
    while chunk := await stream.read(_READ):
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0 and len(buf) <= _LINE_MAX:
                break
            end = nl if nl >= 0 else len(buf)
            line_out(buf[:end])
            buf = buf[end + 1 :]
    if buf:
        line_out(buf)


def find_uv() -> str | None:
    """The ``uv`` package's own binary (a dependency), else ``uv`` on PATH; None without either."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


class Uv:
    """uv as the environment cache runs it (see the module docstring)."""

    def __init__(self, cwd: Path, env: Mapping[str, str], binary: str | None = None) -> None:
        self.cwd = cwd
        self._env = dict(env)
        self._binary = binary

    def binary(self) -> str:
        if self._binary is None:
            found = find_uv()
            if found is None:
                raise FailedPrecondition("uv is not installed on the server (pip install uv)")
            self._binary = found
        return self._binary

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in self._env.items() if k not in _STRIPPED}
        env.setdefault("UV_CACHE_DIR", str(self.cwd / "uv-cache"))
        env["NO_COLOR"] = "1"
        env["UV_NO_PROGRESS"] = "1"
        env["UV_PYTHON_DOWNLOADS"] = "never"
        return env

    async def run(self, args: list[str], emit: LogFn, deadline: float, limit_s: float) -> tuple[int, str]:
        """Run ``uv *args``, lines to ``emit``; (returncode, stderr tail). Past ``deadline`` (a
        ``time.monotonic()``) it is killed: ``EnvironmentBuildError`` naming ``limit_s``."""
        proc = await asyncio.create_subprocess_exec(
            self.binary(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(),
            cwd=self.cwd,
            start_new_session=True,
        )
        keep: collections.deque[str] = collections.deque(maxlen=_STDERR_KEEP)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.gather(_pump(proc.stdout, emit, None), _pump(proc.stderr, emit, keep))
                rc = await proc.wait()
        except TimeoutError:
            raise EnvironmentBuildError(
                f"building the python environment timed out after {limit_s:g} s "
                f"(uv {args[0]}); last output:\n" + "\n".join(keep),
                stderr="\n".join(keep),
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        return rc, "\n".join(keep)

    async def build_venv(
        self,
        target: Path,
        interpreter: Path,
        requirements: Sequence[str],
        options: Sequence[str],
        emit: LogFn,
        *,
        deadline: float,
        limit_s: float,
    ) -> None:
        """``uv venv --relocatable`` at ``target``, then ``uv pip install`` of ``requirements`` with
        ``options``, offline from uv's cache when the index cannot be reached. Either failing is
        ``EnvironmentBuildError`` with uv's message."""
        venv = ["venv", "--relocatable", "--no-project", "--quiet", "--python", str(interpreter), str(target)]
        rc, err = await self.run(venv, emit, deadline, limit_s)
        if rc != 0:
            raise EnvironmentBuildError(
                f"creating the virtual environment failed (uv venv, exit {rc}):\n{err}",
                stderr=err,
                returncode=rc,
            )
        install = [
            "pip",
            "install",
            "--python",
            str(target / "bin" / "python"),
            *options,
            "--",
            *requirements,
        ]
        rc, err = await self.run(install, emit, deadline, limit_s)
        if rc != 0 and NETWORK_ERROR.search(err):
            emit("the package index cannot be reached; retrying offline from uv's cache")
            rc2, err2 = await self.run([*install[:2], "--offline", *install[2:]], emit, deadline, limit_s)
            if rc2 == 0:
                rc, err = 0, ""
            else:
                err = f"{err}\n(offline retry from uv's cache also failed:)\n{err2}"
        if rc != 0:
            raise EnvironmentBuildError(
                f"installing the requirements failed (uv pip install, exit {rc}):\n{err}",
                stderr=err,
                returncode=rc,
            )


def tree_size(root: Path) -> int:
    """Bytes of the files under ``root`` (each inode once; symlinks not followed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
