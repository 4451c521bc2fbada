"""The executor interface the job manager drives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["PROGRESS_FILE", "Executor", "OutputSink", "RunningProcess"]

OutputSink = Callable[[int, bytes], None]  # (source: 1 stdout | 2 stderr, chunk)

#: The file in its working dir where a job appends its progress (JSON lines); the job manager
#: reads it. The self-contained runners keep copies, pinned by tests.
PROGRESS_FILE = "job_progress.jsonl"


class RunningProcess(Protocol):
    """A started job command."""

    pid: int
    isolation: str  # how the job is confined (``Sandbox.describe()``), for its system log

    async def wait(self) -> int:
        """Wait until the command and its output streams end; return its exit code (-N for signal N)."""
        ...

    def signal(self, signum: int) -> None:
        """Send a signal to the job's whole process group."""
        ...

    def kill_all(self) -> None:
        """SIGKILL everything the job started (its process group)."""
        ...


class Executor(Protocol):
    @property
    def runs_here(self) -> bool:
        """Its jobs run on this machine: they hold its cores, memory and GPUs (``start`` then also
        takes ``cores``). False for one that places and limits its jobs itself (Ray)."""
        ...

    @property
    def builds_environments(self) -> bool:
        """It builds each job's Python environment where the job runs; the server builds none."""
        ...

    def start(
        self, cmd: str, cwd: Path, env: Mapping[str, str], sink: OutputSink
    ) -> Awaitable[RunningProcess]: ...
