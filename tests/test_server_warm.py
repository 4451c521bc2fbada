"""Cell jobs forked from a warm interpreter: the same job, without a Python start per job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.packaging.cellio import read_outputs, write_job_dir
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.jobhelpers import Api, execute_response, http

S = jobs_pb2


def cell_job(api: Api, tmp: Path, source: str, outputs: list[str], **params: object) -> str:
    """Create a job the way %%ds_job does: the runner, the cell and its manifest as inputs."""
    d = tmp / f"job{len(list(tmp.iterdir()))}"
    write_job_dir(d, source, [], outputs, {}, zip_outputs=False)
    inputs = {
        name: ((d / name).read_bytes(), "") for name in ("_ds_runner.py", "_ds_cell.py", "_ds_manifest.json")
    }
    outs = [(f"_ds_outputs/{n}.pkl", "") for n in outputs] + [("_ds_outputs/_manifest.json", "")]
    return api.create("python _ds_runner.py", inputs, outs, **params)  # type: ignore[arg-type]


def outputs_of(api: Api, op: object, dest: Path) -> dict[str, object]:
    resp = execute_response(op)  # type: ignore[arg-type]
    (dest / "_ds_outputs").mkdir(parents=True)
    for sf in resp.output_files:
        (dest / sf.file.desc.path).write_bytes(http("GET", sf.url)[1])
    values, unpicklable = read_outputs(dest / "_ds_outputs")
    assert unpicklable == {}
    return values


@pytest.fixture(params=[True, False], ids=["warm", "plain"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    opts = ServerOptions(
        state_dir=tmp_path / "state", token="t", write_runtime_file=False, warm_start=request.param
    )
    thread = ServerThread(opts)
    info = thread.start()
    try:
        a = Api(grpc.insecure_channel(info.endpoint), "t")
        a.warm = request.param  # type: ignore[attr-defined]
        yield a
    finally:
        thread.stop()


SOURCE = """
import os, sys, random
here = os.getcwd()
parent = os.getppid()
session_leader = os.getsid(0) == os.getpid()
argv = list(sys.argv)
path0 = sys.path[0]
env_value = os.environ.get("MY_VAR")
in_path = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
r = random.random()
print("to stdout"); print("to stderr", file=sys.stderr)
"""


def test_a_cell_job_is_the_same_forked_or_started(api: Api, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    names = ["here", "parent", "session_leader", "argv", "path0", "env_value", "in_path", "r"]
    job_id = cell_job(api, work, SOURCE, names, env=jobs_pb2.Environment(vars={"MY_VAR": "v1"}))
    job, op = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    v = outputs_of(api, op, tmp_path / "out1")
    assert v["here"].endswith(f"/work/{job_id}")  # type: ignore[union-attr]
    assert v["path0"] == v["here"] == v["in_path"]
    assert v["argv"] == ["_ds_runner.py"] and v["env_value"] == "v1" and v["session_leader"] is True
    # forked by the warm interpreter, not started by the server (this process)
    assert (v["parent"] != os.getpid()) is api.warm  # type: ignore[attr-defined]
    logs = api.logs(job_id)  # a byte stream: a line may come in several pieces
    assert b"".join(c for s, c in logs if s == "OUT") == b"to stdout\n"
    assert b"".join(c for s, c in logs if s == "ERR") == b"to stderr\n"
    # a second job gets its own random state
    again = cell_job(api, work, SOURCE, names)
    _, op2 = api.run(again)
    assert outputs_of(api, op2, tmp_path / "out2")["r"] != v["r"]


def test_exit_codes_and_errors(api: Api, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    job, op = api.run(cell_job(api, work, "import sys\nsys.exit(3)\n", []))
    assert job.status == S.ERROR and execute_response(op).result.return_code == 3
    job_id = cell_job(api, work, "x = 1\nraise ValueError('boom')\n", ["x"])
    job, op = api.run(job_id)
    assert execute_response(op).result.return_code == 1
    assert b"ValueError: boom" in b"".join(c for s, c in api.logs(job_id) if s == "ERR")


def test_cancel_kills_the_forked_job_and_what_it_started(api: Api, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    source = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300']); open('child.pid', 'w').write(str(p.pid))\n"
        "print('started', flush=True)\ntime.sleep(300)\n"
    )
    job_id = cell_job(api, work, source, [])
    pidfile = tmp_path / "state" / "work" / job_id / "child.pid"  # a sandboxed job writes its own dir
    op = api.execute(job_id)
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = int(pidfile.read_text())
    api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=job_id, graceful=True), metadata=api.md)
    api.wait(op)
    assert api.get(job_id).status == S.CANCELLED
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"


def test_a_dead_warm_interpreter_falls_back_to_a_plain_start(tmp_path: Path) -> None:
    opts = ServerOptions(state_dir=tmp_path / "state", token="t", write_runtime_file=False)
    with ServerThread(opts) as info:
        api = Api(grpc.insecure_channel(info.endpoint), "t")
        work = tmp_path / "w"
        work.mkdir()
        job, op = api.run(cell_job(api, work, "import os\np = os.getppid()\n", ["p"]))
        zygote_pid = outputs_of(api, op, tmp_path / "o1")["p"]
        assert zygote_pid != os.getpid()
        os.kill(zygote_pid, signal.SIGKILL)  # type: ignore[arg-type]
        time.sleep(0.2)
        job, op = api.run(cell_job(api, work, "import os\np = os.getppid()\n", ["p"]))
        assert job.status == S.SUCCESS
        assert outputs_of(api, op, tmp_path / "o2")["p"] != zygote_pid


def test_recovery_recognises_a_forked_job_by_its_working_dir(tmp_path: Path) -> None:
    from jupyter_ds_jobs.server.jobs import _group_is_job

    work = tmp_path / "jobs" / "dsjabc" / "work"
    work.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "30"], cwd=work, start_new_session=True)
    try:
        _wait_exec(proc.pid, "sleep")
        assert _group_is_job(proc.pid, "dsjabc")
        assert not _group_is_job(proc.pid, "dsjother")
        assert not _group_is_job(os.getpid(), "dsjabc")
    finally:
        proc.kill()
        proc.wait()
    assert sys.platform.startswith("linux")


def test_recovery_recognises_a_job_by_its_environment_and_never_a_dead_process(tmp_path: Path) -> None:
    from jupyter_ds_jobs.server.jobs import _group_is_job

    env = {**os.environ, "DS_JOB_ID": "dsjenv"}
    proc = subprocess.Popen(["sleep", "30"], cwd=tmp_path, env=env, start_new_session=True)
    try:
        _wait_exec(proc.pid, "sleep")
        assert _group_is_job(proc.pid, "dsjenv")
        assert not _group_is_job(proc.pid, "dsjother")
        proc.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").read_text().split()[2] != "Z":  # dead, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not _group_is_job(proc.pid, "dsjenv")  # a zombie is nothing to kill
    finally:
        proc.kill()
        proc.wait()
    assert not _group_is_job(proc.pid, "dsjenv")  # gone (reaped)


def test_startup_variables_make_a_job_start_plainly(tmp_path: Path) -> None:
    """PYTHONHASHSEED and the like act when Python starts: a fork would ignore them."""
    opts = ServerOptions(state_dir=tmp_path / "state", token="t", write_runtime_file=False)
    with ServerThread(opts) as info:
        api = Api(grpc.insecure_channel(info.endpoint), "t")
        work = tmp_path / "w"
        work.mkdir()
        source = "import os\np = os.getppid()\nh = hash('reproducible')\n"
        env = jobs_pb2.Environment(vars={"PYTHONHASHSEED": "0"})
        _, op = api.run(cell_job(api, work, source, ["p", "h"], env=env))
        v = outputs_of(api, op, tmp_path / "o1")
        assert v["p"] == os.getpid()  # started by the server itself
        expected = subprocess.run(
            [sys.executable, "-c", "print(hash('reproducible'))"],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert str(v["h"]) == expected


def _wait_exec(pid: int, name: str, timeout: float = 10.0) -> None:
    """Wait until ``pid`` runs ``name``: under load /proc may still show the forking parent."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/comm").read_text().strip() != name:
        assert time.monotonic() < deadline, f"pid {pid} did not exec {name}"
        time.sleep(0.01)
