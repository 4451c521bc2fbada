"""The Ray executor (experimental) against a real private Ray head and the real job server.

One head for the session and one job server with ``executor="ray"`` on it: the ``ray_head`` and
``ray_server`` fixtures of ``tests/conftest.py`` (``tests/rayhead.py``: 127.0.0.1, its own temp
dir and ports, 2 CPUs and 2 declared GPUs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from tests.conftest import RunningServer
from tests.jobhelpers import Api, execute_response, http
from tests.rayhead import RayHead

S = jobs_pb2


@pytest.fixture
def api(ray_server: RunningServer) -> Api:
    return Api(grpc.insecure_channel(ray_server.info.endpoint), ray_server.info.token)


def _workdir(ray_server: RunningServer, job_id: str) -> Path:
    return Path(ray_server.info.state_dir) / "work" / job_id


def _out(api: Api, job_id: str, source: str = "OUT") -> bytes:
    return b"".join(c for s, c in api.logs(job_id) if s == source)


def _wait_log(api: Api, job_id: str, needle: bytes, timeout: float = 60) -> None:
    """Follow the job's log (a live stream) until ``needle`` shows in its stdout."""
    seen = b""
    req = pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id)
    for resp in api.jobs.ReadLogs(req, metadata=api.md, timeout=timeout):
        seen += b"".join(m.content for m in resp.logs if m.WhichOneof("source") == "standard_stream")
        if needle in seen:
            return
    raise AssertionError(f"{needle!r} never logged")


def _itype(name: str) -> list[jobs_pb2.CloudInstanceType]:
    return [jobs_pb2.CloudInstanceType(name=name)]


def test_a_job_runs_as_a_ray_job_with_inputs_outputs_and_separate_streams(api: Api) -> None:
    job_id = api.create(
        "cat in.txt; echo to-err >&2; echo $GREETING ${N} > ${OUT}; echo progress 50 > .progress",
        inputs={"in.txt": (b"input!\n", "")},
        outputs=[("res/out.txt", "OUT")],
        arguments=[jobs_pb2.Argument(name="N", value="42")],
        env=jobs_pb2.Environment(vars={"GREETING": "hi"}),
    )
    job, op = api.run(job_id, timeout=120)
    assert job.status == S.SUCCESS, job.status_details
    [out] = execute_response(op).output_files
    assert http("GET", out.url)[1] == b"hi 42\n"
    assert _out(api, job_id) == b"input!\n"
    assert _out(api, job_id, "ERR") == b"to-err\n"
    assert b"isolation: Ray job dsjobs-" + job_id.encode() in _out(api, job_id, ".system.log")


def test_a_failing_job_is_error_with_its_return_code(api: Api) -> None:
    job, op = api.run(api.create("echo boom >&2; exit 3"), timeout=120)
    assert job.status == S.ERROR and "exited with code 3" in job.status_details
    assert execute_response(op).result.return_code == 3


def test_logs_stream_while_the_job_runs_and_resume_from_offsets(ray_server: RunningServer, api: Api) -> None:
    job_id = api.create("echo first; while [ ! -e go ]; do sleep 0.05; done; echo second")
    op = api.execute(job_id)
    _wait_log(api, job_id, b"first")
    assert api.get(job_id).status == S.EXECUTING  # streamed as written, not at the end
    (_workdir(ray_server, job_id) / "go").touch()
    api.wait(op, 120)
    call = api.jobs.ReadLogs(pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id, offset=0), metadata=api.md)
    first = next(call)
    call.cancel()
    pieces = b"".join(m.content for m in first.logs if m.WhichOneof("source") == "standard_stream")
    pieces += b"".join(c for s, c in api.logs(job_id, offset=first.offset) if s == "OUT")
    assert pieces == _out(api, job_id) == b"first\nsecond\n"


def test_graceful_cancel_sends_the_jobs_signal_through_ray(api: Api) -> None:
    script = "trap 'echo got-usr1; exit 0' USR1; echo started; while true; do sleep 0.05; done"
    gsp = jobs_pb2.GracefulShutdownParameters(signal=int(signal.SIGUSR1))
    job_id = api.create(script, graceful_shutdown_parameters=gsp)
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    api.jobs.Cancel(
        pjs_pb2.CancelProjectJobRequest(job_id=job_id, graceful=True, reason="t"), metadata=api.md
    )
    api.wait(op, 60)
    assert api.get(job_id).status == S.CANCELLED
    assert b"got-usr1\n" in _out(api, job_id)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_hard_cancel_stops_at_once_and_leaves_no_orphan(ray_server: RunningServer, api: Api) -> None:
    job_id = api.create("trap '' TERM; sleep 300 & echo $! > child.pid; echo started; wait")
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    child = int((_workdir(ray_server, job_id) / "child.pid").read_text())
    assert _alive(child)
    t0 = time.monotonic()
    api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=job_id), metadata=api.md)
    api.wait(op, 30)
    assert time.monotonic() - t0 < 10  # no wait for a timeout (a loaded machine: some slack)
    assert api.get(job_id).status == S.CANCELLED
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_a_lost_wrapper_ends_the_job_in_error(ray_server: RunningServer, api: Api) -> None:
    job_id = api.create("echo $PPID > wrapper.pid; echo $$ > job.pid; echo started; sleep 60")
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    wd = _workdir(ray_server, job_id)
    job_pid = int((wd / "job.pid").read_text())
    try:
        os.kill(int((wd / "wrapper.pid").read_text()), signal.SIGKILL)
        api.wait(op, 60)
        job = api.get(job_id)
        assert job.status == S.ERROR
        assert "without reporting an exit code" in job.status_details and "dsjobs-" in job.status_details
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job_pid, signal.SIGKILL)


def test_gpu_and_cpu_types_see_their_cuda_devices(api: Api) -> None:
    cmd = "python3 -c \"import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))\""
    gpu, _ = api.run(api.create(cmd, cloud_instance_types=_itype("g1.1")), timeout=120)
    assert gpu.status == S.SUCCESS, gpu.status_details
    [devices] = _out(api, gpu.id).decode().strip().strip("'").split(",")
    assert devices  # exactly one entry, from Ray's assignment
    cpu, _ = api.run(api.create(cmd, cloud_instance_types=_itype("c1.4")), timeout=120)
    assert cpu.status == S.SUCCESS, cpu.status_details
    assert _out(api, cpu.id) == b"''\n"  # set and empty: no GPU shows


def test_a_job_waits_for_room_instead_of_pending_in_ray(
    ray_head: RayHead, ray_server: RunningServer, api: Api
) -> None:
    from ray.job_submission import JobSubmissionClient

    hold = "echo started; while [ ! -e go ]; do sleep 0.05; done"  # until the test says go
    jobs = [api.create(hold, cloud_instance_types=_itype("c1.4")) for _ in range(2)]  # 2 CPUs each
    ops = [api.execute(j) for j in jobs]
    deadline = time.monotonic() + 90
    while all(api.get(j).status != S.EXECUTING for j in jobs):  # one of them takes the room first
        assert time.monotonic() < deadline, "neither job started"
        time.sleep(0.1)
    time.sleep(1.5)  # the executor polls the cluster twice a second: more room would show by now
    first, second = sorted(jobs, key=lambda j: api.get(j).status != S.EXECUTING)
    client = JobSubmissionClient(ray_head.address)
    assert not [j for j in client.list_jobs() if second in (j.submission_id or "")]  # not submitted yet
    assert api.get(second).status == S.PREPARING  # waiting here for room, not PENDING in Ray
    for j in jobs:
        (_workdir(ray_server, j) / "go").touch()
    assert all(api.wait(op, 120).done for op in ops)
    assert [api.get(j).status for j in jobs] == [S.SUCCESS, S.SUCCESS]
    assert api.get(first).finished_at.ToDatetime() <= api.get(second).started_at.ToDatetime()
