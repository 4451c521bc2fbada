"""The server as its own process: restart keeps jobs, marks interrupted ones, kills leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from jupyter_ds_jobs._proto import jobs_pb2
from tests.jobhelpers import Api, execute_response, http


def _start(state: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    conn = state / "ds-jobs-server.json"
    conn.unlink(missing_ok=True)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_ds_jobs", "server", "--state-dir", str(state), "--token", "tok"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not conn.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return proc, json.loads(conn.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, OSError):
        return False


def test_restart_keeps_finished_jobs_and_marks_interrupted_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, info = _start(state)
    try:
        api = Api(grpc.insecure_channel(str(info["endpoint"])), "tok")
        done = api.create("echo kept; echo data > ${O}", outputs=[("o.txt", "O")])
        _, op = api.run(done)
        running = api.create("sleep 300 & echo $! > pid; echo up; wait")
        pidfile = state / "work" / running / "pid"  # a sandboxed job writes only its own dir
        api.execute(running)
        api.wait_status(running, {jobs_pb2.EXECUTING})
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no clean shutdown
        proc.wait()
    proc, info = _start(state)
    try:
        api = Api(grpc.insecure_channel(str(info["endpoint"])), "tok")
        job = api.get(done)
        assert job.status == jobs_pb2.SUCCESS
        assert b"".join(c for s, c in api.logs(done) if s == "OUT") == b"kept\n"
        url = execute_response(api.wait(api.execute(done))).output_files[0].url
        assert http("GET", url)[1] == b"data\n"
        interrupted = api.get(running)
        assert interrupted.status == jobs_pb2.ERROR
        assert "interrupted" in interrupted.status_details and "EXECUTING" in interrupted.status_details
        op = api.wait(api.execute(running))
        assert op.HasField("error")
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the interrupted job's process survived the restart"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (state / "ds-jobs-server.json").exists()  # removed on clean exit


def test_clean_stop_kills_running_jobs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, info = _start(state)
    try:
        api = Api(grpc.insecure_channel(str(info["endpoint"])), "tok")
        job_id = api.create("sleep 300 & echo $! > pid; wait")
        pidfile = state / "work" / job_id / "pid"  # a sandboxed job writes only its own dir
        api.execute(job_id)
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    proc, info = _start(state)
    try:
        api = Api(grpc.insecure_channel(str(info["endpoint"])), "tok")
        job = api.get(job_id)
        assert job.status == jobs_pb2.ERROR and "server stopped" in job.status_details
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
