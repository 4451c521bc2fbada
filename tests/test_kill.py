"""Killed mid-``%%ds_job``: a real kernel (jupyter_client) and the real detached job server the
magic starts, each in a private state dir and runtime dir, killed with SIGKILL by PID.

* The kernel dies: the job runs on to its end, and a new kernel's ``%ds_job_attach`` loads its
  variables.
* The job server dies: the cell raises a clear error naming the job; the restarted server
  reports the job ERROR and leaves none of its processes running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.common.connection import ConnectionInfo
from tests.jobhelpers import Api

pytestmark = pytest.mark.timeout(180)

S = jobs_pb2


class Lab:
    """Kernels and the job server they start, all sharing one private state and runtime dir."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.work = tmp / "nb"
        self.work.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DS_JOBS_")}
        self.env.update(
            DS_JOBS_STATE_DIR=str(self.state),
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
            DS_JOBS_CONFIG=str(tmp / "ds_jobs.json"),
        )
        self.kernels: list[tuple[KernelManager, BlockingKernelClient]] = []
        self.server_pids: set[int] = set()

    def kernel(self) -> BlockingKernelClient:
        km, kc = start_new_kernel(kernel_name="python3", cwd=str(self.work), env=self.env)
        self.kernels.append((km, kc))
        run(kc, "%load_ext jupyter_ds_jobs")
        return kc

    def server(self) -> tuple[ConnectionInfo, Api]:
        info = ConnectionInfo.read(self.state / "ds-jobs-server.json")
        self.server_pids.add(info.pid)
        return info, Api(grpc.insecure_channel(info.endpoint), info.token)

    def close(self) -> None:
        for km, kc in self.kernels:
            kc.stop_channels()
            with contextlib.suppress(Exception):
                km.shutdown_kernel(now=True)
        for pid in self.server_pids:  # the detached job servers, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in self.server_pids:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(30)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def run(kc: BlockingKernelClient, code: str, timeout: float = 90) -> tuple[dict[str, Any], str]:
    """Execute ``code``; (the reply's content, everything it printed and raised)."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        c = msg["content"]
        if msg["msg_type"] == "stream":
            out.append(c["text"])
        elif msg["msg_type"] == "error":
            out.append(f"{c['ename']}: {c['evalue']}\n")
        elif msg["msg_type"] in ("execute_result", "display_data"):
            out.append(c["data"].get("text/plain", "") + "\n")

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(out)


def wait_executing(api: Api, timeout: float = 60) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        jobs = api.jobs.List(
            pjs_pb2.ListProjectJobRequest(filter="status IN (EXECUTING)"), metadata=api.md
        ).jobs
        if jobs:
            return jobs[0]
        assert time.monotonic() < deadline, "the job never started executing"
        time.sleep(0.1)


def wait_for_server(lab: Lab, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (lab.state / "ds-jobs-server.json").exists():
        assert time.monotonic() < deadline, "the magic did not start a job server"
        time.sleep(0.05)


def test_a_killed_kernels_job_finishes_and_a_new_kernel_attaches_to_it(lab: Lab) -> None:
    kc = lab.kernel()
    run(kc, "base = 40")
    kc.execute(
        "%%ds_job --name survivor\nimport time\nprint('working', flush=True)\ntime.sleep(3)\nanswer = base + 2\n"
    )
    wait_for_server(lab)
    info, api = lab.server()
    job = wait_executing(api)
    kernel_pid = lab.kernels[0][0].provisioner.pid  # type: ignore[union-attr]
    os.kill(kernel_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lab.kernels[0][0].is_alive():
        assert time.monotonic() < deadline, "the kernel survived SIGKILL"
        time.sleep(0.05)

    done = api.wait_status(job.id, {S.SUCCESS, S.ERROR, S.CANCELLED}, timeout=60)
    assert done.status == S.SUCCESS, done.status_details
    assert psutil.pid_exists(info.pid)  # the job server outlived the kernel that started it

    fresh = lab.kernel()
    content, out = run(fresh, f"%ds_job_attach {job.id} -o again")
    assert content["status"] == "ok", out
    assert "working" in out and "answer" in out
    content, out = run(fresh, "print(answer, again.status)")
    assert out.strip() == "42 SUCCESS"


def test_a_killed_job_server_fails_the_cell_naming_the_job_and_comes_back_with_it_error(lab: Lab) -> None:
    kc = lab.kernel()
    msg_id = kc.execute(
        "%%ds_job --name orphan\nimport time\nprint('working', flush=True)\ntime.sleep(300)\nx = 1\n"
    )
    wait_for_server(lab)
    info, api = lab.server()
    job = wait_executing(api)
    leftover = [p.pid for p in psutil.Process(info.pid).children(recursive=True)]
    os.kill(info.pid, signal.SIGKILL)  # a crash: nothing cleans up

    t0 = time.monotonic()
    reply = kc.get_shell_msg(timeout=90)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=90)
    assert time.monotonic() - t0 < 60
    content = reply["content"]
    assert content["status"] == "error"
    message = f"{content['ename']}: {content['evalue']}"
    assert job.id in content["evalue"] and "orphan" in content["evalue"], message
    assert "job server" in content["evalue"] and "ds_job_attach" in content["evalue"], message

    # a new kernel's attach starts the job server again (the dead one's connection files are
    # still there, its pid a zombie of the first kernel): that server says what became of the job
    content, out = run(lab.kernel(), f"%ds_job_attach {job.id}")
    assert content["status"] == "error" and "interrupted" in out, out
    info2, api2 = lab.server()
    assert info2.pid != info.pid and psutil.pid_exists(info2.pid)
    after = api2.get(job.id)
    assert after.status == S.ERROR
    assert "interrupted" in after.status_details and "EXECUTING" in after.status_details
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in leftover) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in leftover if _running(pid)], "the job's processes survived the restart"

    # the first kernel goes on too: its client of the dead server is dropped, the live one found
    content, out = run(kc, "%%ds_job --quiet\ny = 40 + 2\nprint(y)\n")
    assert content["status"] == "ok" and "42" in out, out
    assert lab.server()[0].pid == info2.pid


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
