"""Run a job's command as a local subprocess in its own process group, sandboxed.

With a :class:`~jupyter_ds_jobs.server.sandbox.Sandbox`, the command starts through the exec
wrapper ``python -I -S executors/_sandbox_apply.py POLICY COMMAND...`` (the server's Python; it
confines itself, then execs the command with the job's environment): one Python start (~20 ms)
more per plain start. Cell jobs forked by a warm interpreter confine themselves in the fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from jupyter_ds_jobs.server.executors.base import OutputSink
from jupyter_ds_jobs.server.sandbox import APPLY_SCRIPT, JobSandbox, Sandbox

__all__ = ["GroupProcess", "LocalExecutor", "LocalProcess", "pump"]

SHELL = shutil.which("bash") or "/bin/sh"
READ_CHUNK = 64 * 1024


async def pump(stream: asyncio.StreamReader, source: int, sink: OutputSink) -> None:
    """Hand what a job writes to ``stream`` to ``sink`` as it comes."""
    while chunk := await stream.read(READ_CHUNK):
        sink(source, chunk)


class GroupProcess:
    """A job that leads its own session: signals go to its whole process group, and when it
    ends, what it left running in that group ends too. Subclasses say how its exit is known."""

    def __init__(
        self,
        pid: int,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        sink: OutputSink,
        sandbox: JobSandbox | None = None,
    ) -> None:
        self.pid = pid
        self.pgid = pid
        self.sandbox = sandbox
        self.isolation = sandbox.description if sandbox is not None else "none"
        self._pumps = [
            asyncio.ensure_future(pump(stdout, 1, sink)),
            asyncio.ensure_future(pump(stderr, 2, sink)),
        ]

    async def _exit_code(self) -> int:
        raise NotImplementedError

    async def wait(self) -> int:
        code = await self._exit_code()
        # Children that keep the pipes open would hold the pumps forever: the job is over, end them.
        self.kill_all()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps), 5)
        if self.sandbox is not None:
            await asyncio.to_thread(self.sandbox.cleanup)  # its private tmp
        return code

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def kill_all(self) -> None:
        self.signal(signal.SIGKILL)


class LocalProcess(GroupProcess):
    """A job started as a subprocess of the server (``start_new_session``)."""

    def __init__(
        self, proc: asyncio.subprocess.Process, sink: OutputSink, sandbox: JobSandbox | None = None
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        super().__init__(proc.pid, proc.stdout, proc.stderr, sink, sandbox)
        self.proc = proc

    async def _exit_code(self) -> int:
        return await self.proc.wait()


_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\\"'*?\[\]#~=%{}!\n]")


def direct_argv(cmd: str, path: str) -> list[str] | None:
    """``cmd`` as an argv to exec without a shell, when it is a plain command (no shell syntax).

    Saves a shell's start on every job; anything a shell would interpret goes through bash.
    Words are split where bash splits them, on spaces and tabs only (``str.split`` would also
    split on other Unicode spaces, which bash keeps in the word). A ``${VAR}`` value that needs
    quoting arrives quoted (``server.substitute``), so such a command always goes through bash.
    """
    if _SHELL_SYNTAX.search(cmd):
        return None
    argv = [w for w in re.split(r"[ \t]+", cmd) if w]
    if not argv or "/" in argv[0]:  # a path is resolved against the job's dir: leave it to bash
        return None
    exe = shutil.which(argv[0], path=path)
    return [exe, *argv[1:]] if exe else None


def pin(job: JobSandbox, cores: Sequence[int]) -> JobSandbox:
    """The job's policy with its CPU affinity (applied in the child, before the sandbox; a job
    without a sandbox gets the ``affinity`` policy, which does only that)."""
    if cores:  # (the wrapper restores LC_CTYPE, which its Python's start may coerce)
        bare = {"mode": "affinity", "env": {"LC_CTYPE": job.env.get("LC_CTYPE")}}
        job.policy = {**(job.policy or bare), "cpus": sorted(set(cores))}
    return job


class LocalExecutor:
    """Runs ``cmd`` in ``cwd`` (with bash unless it is a plain command), confined by ``sandbox``;
    stdout and stderr go to ``sink`` as they come."""

    runs_here = True  # see executors.base.Executor
    builds_environments = False

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox

    async def prepare(self, cwd: Path, env: Mapping[str, str]) -> JobSandbox:
        """The job's sandbox: its policy, environment (TMPDIR) and private tmp."""
        if self.sandbox is None:
            return JobSandbox(None, dict(env), None, "none")
        return await asyncio.to_thread(self.sandbox.prepare, cwd, env)

    async def start(
        self, cmd: str, cwd: Path, env: Mapping[str, str], sink: OutputSink, cores: Sequence[int] = ()
    ) -> LocalProcess:
        """``cores``: the CPUs the job is pinned to (its instance type's, ``server.resources``)."""
        return await self.start_prepared(cmd, cwd, pin(await self.prepare(cwd, env), cores), sink)

    async def start_prepared(self, cmd: str, cwd: Path, job: JobSandbox, sink: OutputSink) -> LocalProcess:
        argv = direct_argv(cmd, job.env.get("PATH", "")) or [SHELL, "-c", cmd]
        if job.policy is not None:
            argv = [sys.executable, "-I", "-S", APPLY_SCRIPT, marshal.dumps(job.policy).hex(), *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=job.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            job.cleanup()
            raise
        return LocalProcess(proc, sink, job)
