"""A private Ray head for tests: its own temp dir, ports and declared CPUs / GPUs, on 127.0.0.1.

Stopped by the processes it started (never ``ray stop``): those whose command line names its
temp dir or its GCS port, and their descendants; SIGTERM, a wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["RayHead", "start_head"]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while picked: one picked after another closes
    may be the same port again, and Ray refuses two components on one port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@dataclass
class RayHead:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int

    @property
    def address(self) -> str:
        """The Jobs API address (what ``ray job submit --address`` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def processes(self) -> list[psutil.Process]:
        marks = (str(self.temp_dir), f":{self.gcs_port}")
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if any(m in cmd for m in marks) and p.pid != os.getpid():
                found[p.pid] = p
                with contextlib.suppress(psutil.NoSuchProcess):
                    found.update((c.pid, c) for c in p.children(recursive=True))
        return list(found.values())

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)


def start_head(
    num_cpus: int = 2, num_gpus: int = 2, tries: int = 2, resources: dict[str, float] | None = None
) -> RayHead:
    """A new head (``resources``: custom ones, as ``ray start --resources``); ``ray start`` waits
    30 s at most for its raylet, which a loaded machine can miss: one more try then."""
    for left in range(tries - 1, -1, -1):
        try:
            return _start_head(num_cpus, num_gpus, resources or {})
        except RuntimeError:
            if not left:
                raise
    raise AssertionError("unreachable")


def _start_head(num_cpus: int, num_gpus: int, resources: dict[str, float]) -> RayHead:
    # A short temp dir: Ray's unix socket paths must stay under 107 bytes.
    ports = iter(_free_ports(9))
    head = RayHead(Path(tempfile.mkdtemp(prefix="ray", dir="/tmp")), next(ports), next(ports))
    ray = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(head.gcs_port),
        "--temp-dir", str(head.temp_dir), "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(head.dashboard_port),
        "--ray-client-server-port", str(next(ports)), "--disable-usage-stats",
        # Every port of its own: Ray's fixed defaults (the job agent's 52365, ...) may be taken
        # by another head on a shared machine, and a head whose job agent cannot bind takes no job.
        "--dashboard-agent-listen-port", str(next(ports)),
        "--dashboard-agent-grpc-port", str(next(ports)),
        "--runtime-env-agent-port", str(next(ports)),
        "--metrics-export-port", str(next(ports)),
        "--node-manager-port", str(next(ports)),
        "--object-manager-port", str(next(ports)),
    ]  # fmt: skip
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    # where the job wrapper keeps the environments it builds on this node (its own, not ~/.cache)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "DS_JOBS_RAY_ENV_DIR": str(head.temp_dir / "envs")}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except BaseException:
        head.stop()
        raise
    if done.returncode:
        head.stop()
        raise RuntimeError(
            f"ray start failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    try:
        _wait_for_job_agent(head)
    except BaseException:
        head.stop()
        raise
    return head


def _wait_for_job_agent(head: RayHead, timeout: float = 180.0) -> None:
    """Until the head takes a job: ``ray start`` returns before its job agent is up, and on a
    loaded machine that agent may need a minute. A trivial job, submitted until one is taken and
    waited for; a head that never takes one fails here, with the end of its agent's log."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    client = JobSubmissionClient(head.address)
    while True:
        try:
            sid = client.submit_job(entrypoint="true")
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head takes no job: {e}\n{_agent_log(head)}") from e
            time.sleep(0.5)
    while not client.get_job_status(sid).is_terminal():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head's first job did not end\n{_agent_log(head)}")
        time.sleep(0.2)


def _agent_log(head: RayHead) -> str:
    logs = sorted(head.temp_dir.glob("session_*/logs/dashboard_agent.log"))
    return logs[-1].read_text(errors="replace")[-3000:] if logs else "(no dashboard_agent.log)"


if __name__ == "__main__":  # a head for trying things by hand: prints its address, stops on Enter
    h = start_head()
    print(h.address, h.temp_dir, flush=True)
    try:
        input()
    finally:
        h.stop()
        time.sleep(0)
