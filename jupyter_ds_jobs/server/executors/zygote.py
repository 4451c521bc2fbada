"""Warm interpreters for cell jobs: fork a ready Python instead of starting one per job.

A ``%%ds_job`` cell runs as ``python _ds_runner.py``. Most of a small cell's time is that
Python's start and its ``import cloudpickle``. :class:`ZygoteExecutor` keeps one warm
interpreter (a "zygote", :mod:`._zygote_main`) per job interpreter, with those imports done,
and forks it for each such job; every other command goes to :class:`LocalExecutor`. A forked
job is a process of its own: its own session (so cancel and cleanup work by process group), the
job's cwd, environment, ``sys.path`` and stdout / stderr pipes, and a fresh ``random`` seed.
If a zygote cannot start or dies, jobs fall back to a plain start. A sandboxed job confines itself
in the fork, before it runs (``_sandbox_apply.apply``, see :mod:`jupyter_ds_jobs.server.sandbox`):
a few syscalls, no exec. The zygote's own environment carries none of the server's ``DS_JOBS_*``
variables (a forked job's ``/proc/self/environ`` shows the zygote's).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_ds_jobs.server.executors.base import OutputSink
from jupyter_ds_jobs.server.executors.local import (
    READ_CHUNK,
    GroupProcess,
    LocalExecutor,
    LocalProcess,
    direct_argv,
    pin,
)
from jupyter_ds_jobs.server.sandbox import JobSandbox, Sandbox

__all__ = ["ZygoteExecutor", "ZygoteProcess"]

log = logging.getLogger(__name__)

ZYGOTE_SCRIPT = str(Path(__file__).with_name("_zygote_main.py"))
#: The script a zygote runs; the cell runner the magic ships.
WARM_SCRIPTS = frozenset({"_ds_runner.py"})
_STRIPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT")
#: Startup variables the forked child applies itself.
_APPLIED_IN_CHILD = frozenset({"PYTHONPATH", "PYTHONUNBUFFERED"})


class ZygoteError(Exception):
    """The zygote could not fork the job (the caller falls back to a plain start)."""


class ZygoteProcess(GroupProcess):
    """A job forked by a zygote: the server reads its pipes; the zygote reports its exit."""

    def __init__(
        self,
        pid: int,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        sink: OutputSink,
        sandbox: JobSandbox | None = None,
    ) -> None:
        super().__init__(pid, stdout, stderr, sink, sandbox)  # the child called setsid()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def exited(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def _exit_code(self) -> int:
        return await self._exit


async def _reader(fd: int) -> asyncio.StreamReader:
    """An asyncio reader over the read end of a pipe (closed when the writer side ends)."""
    reader = asyncio.StreamReader(limit=READ_CHUNK * 4)
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader


class _Zygote:
    """One warm interpreter and the socket to it."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._procs: dict[int, ZygoteProcess] = {}
        self._early_exits: dict[int, int] = {}
        self.alive = False

    async def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV and not k.startswith("DS_JOBS_")}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.python,
                ZYGOTE_SCRIPT,
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)
        self.alive = True

    def _readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._dead("the warm interpreter exited")
                return
            msg = json.loads(data)
            if "exit" in msg:
                proc = self._procs.pop(msg["pid"], None)
                if proc is None:
                    self._early_exits[msg["pid"]] = int(msg["exit"])
                else:
                    proc.exited(int(msg["exit"]))
            else:
                fut = self._pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _dead(self, why: str, expected: bool = False) -> None:
        if not self.alive:
            return
        self.alive = False
        log.log(logging.DEBUG if expected else logging.WARNING, "zygote for %s: %s", self.python, why)
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ZygoteError(why))
        self._pending.clear()
        for proc in self._procs.values():  # their exit codes are lost with the zygote: end them
            proc.kill_all()
            proc.exited(-int(signal.SIGKILL))
        self._procs.clear()

    async def spawn(self, argv: list[str], cwd: Path, job: JobSandbox, sink: OutputSink) -> ZygoteProcess:
        if not self.alive or self.sock is None:
            raise ZygoteError("the warm interpreter is not running")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        req = {"id": req_id, "argv": argv, "cwd": str(cwd), "env": job.env, "sandbox": job.policy}
        request = json.dumps(req).encode()
        try:
            socket.send_fds(self.sock, [request], [out_w, err_w])
        except OSError as e:
            self._pending.pop(req_id, None)
            for fd in (out_r, err_r):
                os.close(fd)
            self._dead(f"cannot send a job: {e}")
            raise ZygoteError(str(e)) from None
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            msg = await asyncio.wait_for(fut, 10)
        except (ZygoteError, TimeoutError) as e:
            for fd in (out_r, err_r):
                os.close(fd)
            raise ZygoteError(str(e) or "no answer from the warm interpreter") from None
        if "error" in msg:
            for fd in (out_r, err_r):
                os.close(fd)
            raise ZygoteError(msg["error"])
        pid = int(msg["pid"])
        proc = ZygoteProcess(pid, await _reader(out_r), await _reader(err_r), sink, job)
        early = self._early_exits.pop(pid, None)
        if early is not None:
            proc.exited(early)
        else:
            self._procs[pid] = proc
        return proc

    async def close(self) -> None:
        self._dead("stopped", expected=True)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)


class ZygoteExecutor:
    """Cell jobs (``python _ds_runner.py``) fork a warm interpreter; other commands start plainly."""

    runs_here = True  # see executors.base.Executor
    builds_environments = False

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.plain = LocalExecutor(sandbox)
        self._zygotes: dict[str, _Zygote] = {}
        self._starting: dict[str, asyncio.Task[_Zygote]] = {}

    def _warm_argv(self, cmd: str, env: Mapping[str, str]) -> list[str] | None:
        argv = direct_argv(cmd, env.get("PATH", ""))
        if argv is None or len(argv) != 2 or argv[1] not in WARM_SCRIPTS:
            return None
        if not os.path.basename(argv[0]).startswith("python"):
            return None
        # Variables that act when an interpreter starts (PYTHONHASHSEED, PYTHONWARNINGS, LD_PRELOAD,
        # ...) would be silently ignored by a fork: such a job starts plainly.
        for key, value in env.items():
            startup = (key.startswith("PYTHON") and key not in _APPLIED_IN_CHILD) or key.startswith("LD_")
            if startup and os.environ.get(key) != value:
                return None
        return argv

    async def _zygote(self, python: str) -> _Zygote:
        z = self._zygotes.get(python)
        if z is not None and z.alive:
            return z
        task = self._starting.get(python)
        if task is None:
            task = asyncio.ensure_future(self._start(python))
            self._starting[python] = task
        try:
            return await asyncio.shield(task)
        finally:
            self._starting.pop(python, None)

    async def _start(self, python: str) -> _Zygote:
        z = _Zygote(python)
        await z.start()
        self._zygotes[python] = z
        return z

    async def start(
        self, cmd: str, cwd: Path, env: Mapping[str, str], sink: OutputSink, cores: Sequence[int] = ()
    ) -> ZygoteProcess | LocalProcess:
        argv = self._warm_argv(cmd, env)
        job = pin(await self.plain.prepare(cwd, env), cores)  # the fork applies the affinity
        if argv is not None:
            try:
                z = await self._zygote(argv[0])
                return await z.spawn(argv, cwd, job, sink)
            except (ZygoteError, OSError) as e:
                log.warning("warm start of %r failed (%s); starting it plainly", cmd, e)
        return await self.plain.start_prepared(cmd, cwd, job, sink)

    async def close(self) -> None:
        for z in list(self._zygotes.values()):
            await z.close()
        self._zygotes.clear()
