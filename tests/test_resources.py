"""Instance types as resource profiles: choice at Create, waiting, GPUs, cores, threads, memory.

GPUs are declared (``gpus=N``): this machine has none, and the assignment is what is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, ops_pb2, pjs_pb2
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from jupyter_ds_jobs.server.resources import Profile, load_profiles
from jupyter_ds_jobs.server.sandbox import Isolation, probe
from tests.jobhelpers import Api
from tests.test_server_warm import cell_job, outputs_of

S = jobs_pb2
SMALL = {
    "c1.4": Profile("c1.4", 1, 1.0, 0),
    "g1.1": Profile("g1.1", 1, 1.0, 1),
    "g1.2": Profile("g1.2", 2, 1.0, 2),
}
SHOW = (
    "import json, os; print(json.dumps({'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), "
    "'omp': os.environ.get('OMP_NUM_THREADS'), 'mkl': os.environ.get('MKL_NUM_THREADS'), "
    "'openblas': os.environ.get('OPENBLAS_NUM_THREADS'), 'cores': sorted(os.sched_getaffinity(0))}))"
)


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Any]:
    threads: list[ServerThread] = []

    def make(**opts: Any) -> Api:
        o = ServerOptions(
            state_dir=tmp_path / f"s{len(threads)}", token="t", write_runtime_file=False, **opts
        )
        thread = ServerThread(o)
        info = thread.start()
        threads.append(thread)
        return Api(grpc.insecure_channel(info.endpoint), "t")

    yield make
    for t in threads:
        t.stop()


def _types(*names: str) -> list[jobs_pb2.CloudInstanceType]:
    return [jobs_pb2.CloudInstanceType(name=n) for n in names]


def _shown(api: Api, job_id: str) -> dict[str, Any]:
    job, _ = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    out = b"".join(c for s, c in api.logs(job_id) if s == "OUT")
    return dict(json.loads(out))


def _system(api: Api, job_id: str) -> str:
    return b"".join(c for s, c in api.logs(job_id) if s == ".system.log").decode()


def test_gpus_threads_and_cores_follow_the_instance_type(make_api: Any) -> None:
    api = make_api(instance_type_profiles=SMALL, cpus=2, gpus=2)
    g = _shown(api, api.create(f'python -c "{SHOW}"', cloud_instance_types=_types("g1.1")))
    assert g["cuda"] == "0"  # exactly one of the two declared GPUs
    assert g["omp"] == g["mkl"] == g["openblas"] == "1" and len(g["cores"]) == 1
    g2 = _shown(api, api.create(f'python -c "{SHOW}"', cloud_instance_types=_types("g1.2")))
    assert g2["cuda"] == "0,1" and g2["omp"] == "2" and len(g2["cores"]) == 2
    c = _shown(api, api.create(f'python -c "{SHOW}"', cloud_instance_types=_types("c1.4")))
    assert c["cuda"] == "" and c["omp"] == "1"
    # a variable the job sets is its own
    own = api.create(f'python -c "{SHOW}"', env=jobs_pb2.Environment(vars={"OMP_NUM_THREADS": "7"}))
    mine = _shown(api, own)
    assert mine["omp"] == "7" and mine["mkl"] == "1"
    assert "resources: c1.4: 1 cpus on cores" in _system(api, own)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "plain"])
def test_a_cell_job_is_pinned_to_its_cores(make_api: Any, tmp_path: Path, warm: bool) -> None:
    api = make_api(instance_type_profiles=SMALL, cpus=2, gpus=1, warm_start=warm)
    src = "import os\ncores = sorted(os.sched_getaffinity(0))\ncuda = os.environ['CUDA_VISIBLE_DEVICES']\n"
    work = tmp_path / "w"
    work.mkdir()
    job_id = cell_job(api, work, src, ["cores", "cuda"], cloud_instance_types=_types("g1.1"))
    job, op = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    v = outputs_of(api, op, tmp_path / "out")
    assert len(v["cores"]) == 1 and v["cuda"] == "0"  # type: ignore[arg-type]


def test_two_gpu_jobs_on_one_gpu_run_one_after_the_other(make_api: Any) -> None:
    api = make_api(instance_type_profiles=SMALL, cpus=2, gpus=1, max_concurrent_jobs=4)
    first = api.create("echo started; sleep 1.5", cloud_instance_types=_types("g1.1"))
    second = api.create("echo second", cloud_instance_types=_types("g1.1"))
    op1 = api.execute(first)
    api.wait_status(first, {S.EXECUTING})
    op2 = api.execute(second)
    time.sleep(0.4)
    op2 = api.ops.Get(ops_pb2.GetOperationRequest(operation_id=op2.id), metadata=api.md)
    meta = pjs_pb2.ExecuteProjectJobMetadata()
    op2.metadata.Unpack(meta)
    assert meta.job.status == S.CREATING
    assert "waiting for resources: g1.1" in meta.progress.message and "0 GPUs free" in meta.progress.message
    api.wait(op1)
    api.wait(op2)
    assert api.get(second).status == S.SUCCESS
    assert api.get(second).started_at.ToDatetime() >= api.get(first).finished_at.ToDatetime()
    # a CPU job does not wait for the GPU
    cpu = api.create("sleep 0.1", cloud_instance_types=_types("c1.4"))
    gpu = api.create("sleep 1.5", cloud_instance_types=_types("g1.1"))
    opg = api.execute(gpu)
    api.wait_status(gpu, {S.EXECUTING})
    api.run(cpu)
    assert api.get(gpu).status == S.EXECUTING
    api.wait(opg)


@pytest.mark.parametrize("isolation", ["auto", "namespaces", "none"])
def test_memory_over_the_limit_ends_the_job(make_api: Any, isolation: str) -> None:
    """However the job is confined (``namespaces``: the job is a grandchild in its own pid
    namespace), its whole tree is measured."""
    if isolation == "namespaces" and probe(Path("/tmp")).get("namespaces"):
        pytest.skip("no user namespaces here")
    api = make_api(
        instance_type_profiles={"c1.4": Profile("c1.4", 1, 0.25, 0)}, isolation=Isolation(isolation)
    )
    hog = "import time; b = bytearray(600 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(10)"
    job_id = api.create(f'python -c "{hog}"; echo after')  # the hog is a child of bash
    t0 = time.monotonic()
    job, _ = api.run(job_id)
    assert time.monotonic() - t0 < 8
    assert job.status == S.ERROR
    assert "exceeded the memory of c1.4: 0.25 GiB" in job.status_details
    assert "memory limit 0.25 GiB (resident memory" in _system(api, job_id)
    ok = api.create('python -c "b = bytearray(50 * 2**20); print(len(b))"')
    assert api.run(ok)[0].status == S.SUCCESS


def test_the_first_type_that_fits_is_chosen(make_api: Any) -> None:
    api = make_api(gpus=0)
    job_id = api.create("true", cloud_instance_types=_types("g1.1", "gt4.1", "c1.8", "c1.4"))
    job = api.get(job_id)
    assert job.actual_cloud_instance_type.name == "c1.8"
    api.run(job_id)
    # larger than this machine: clamped to it, and said so
    assert "c1.8 (clamped to this machine, shared with other jobs)" in _system(api, job_id)


def test_none_fits_is_failed_precondition_naming_what_the_server_has(make_api: Any) -> None:
    api = make_api(gpus=1, cpus=4, memory_gib=16)
    with pytest.raises(grpc.RpcError) as e:
        api.create("true", cloud_instance_types=_types("g1.2", "g1.4"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    msg = e.value.details()
    assert "this server has 4 cpus, 16 GiB memory, 1 GPUs" in msg and "g1.2 (16 cpus, 192 GiB, 2 GPUs)" in msg
    assert "types that fit: c1.4, c1.8" in msg and "g1.1" in msg
    strict = make_api(gpus=1, cpus=4, memory_gib=16, strict_resources=True)
    with pytest.raises(grpc.RpcError) as e:
        strict.create("true", cloud_instance_types=_types("c1.4"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "types that fit: none" in e.value.details()


def test_an_instance_types_file_overrides_and_adds(tmp_path: Path, make_api: Any) -> None:
    f = tmp_path / "types.json"
    f.write_text(
        json.dumps({"c1.4": {"memory_gib": 0.5}, "tiny": {"cpus": 1, "memory_gib": 0.25, "gpus": 0}})
    )
    profiles = load_profiles(f)
    assert profiles["c1.4"] == Profile("c1.4", 4, 0.5, 0) and profiles["tiny"].memory_gib == 0.25
    api = make_api(instance_types_file=f, instance_types=("c1.4",))
    assert (
        api.get(api.create("true", cloud_instance_types=_types("tiny"))).actual_cloud_instance_type.name
        == "tiny"
    )
    with pytest.raises(grpc.RpcError) as e:  # the name filter still holds for the contract's types
        api.create("true", cloud_instance_types=_types("c1.8"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    f.write_text(json.dumps({"c1.4": {"cpus": -1}}))
    with pytest.raises(InvalidArgument, match=r"c1.4.cpus must be a non-negative number"):
        load_profiles(f)


def test_clamped_types_share_the_machine_and_exact_ones_hold_it(make_api: Any) -> None:
    exact = {"c1.4": Profile("c1.4", 2, 1.0, 0), "c1.8": Profile("c1.8", 8, 1.0, 0)}
    api = make_api(instance_type_profiles=exact, cpus=2, memory_gib=4)
    first = api.create("sleep 1.5", cloud_instance_types=_types("c1.8"))  # clamped to the 2 cpus
    second = api.create(f'python -c "{SHOW}"', cloud_instance_types=_types("c1.8"))
    op1 = api.execute(first)
    api.wait_status(first, {S.EXECUTING})
    shared = _shown(api, second)
    assert api.get(first).status == S.EXECUTING  # ran beside it, on all the cores
    assert len(shared["cores"]) == 2 and shared["omp"] == "2"
    api.wait(op1)
    holder = api.create("sleep 1.5", cloud_instance_types=_types("c1.4"))  # holds both cores
    waiter = api.create("true", cloud_instance_types=_types("c1.4"))
    oph = api.execute(holder)
    api.wait_status(holder, {S.EXECUTING})
    api.run(waiter)
    assert api.get(waiter).started_at.ToDatetime() >= api.get(holder).finished_at.ToDatetime()
    api.wait(oph)


def test_the_server_command_takes_the_resource_options(tmp_path: Path) -> None:
    from jupyter_ds_jobs.common.connection import ConnectionInfo
    from tests.test_cli import base_env, one_line_error

    f = tmp_path / "types.json"
    f.write_text(json.dumps({"g1.2": {"cpus": 1, "memory_gib": 1}, "c1.4": {"gpus": "x"}}))
    sd = tmp_path / "state"
    line = one_line_error(["server", "--state-dir", str(sd), "--instance-types-file", str(f)], tmp_path)
    assert "c1.4.gpus must be a non-negative number, got 'x'" in line
    f.write_text(json.dumps({"g1.2": {"cpus": 1, "memory_gib": 1}}))
    args = ["server", "--state-dir", str(sd), "--token", "t", "--instance-types-file", str(f), "--gpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_ds_jobs", *args, "--cpus", "1", "--strict-resources"],
                            env=base_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (sd / "ds-jobs-server.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        api = Api(grpc.insecure_channel(ConnectionInfo.read(sd / "ds-jobs-server.json").endpoint), "t")
        job_id = api.create(f'python -c "{SHOW}"', cloud_instance_types=_types("g1.4", "c1.4", "g1.2"))
        assert api.get(job_id).actual_cloud_instance_type.name == "g1.2"  # strict: c1.4 has 4 cpus
        assert _shown(api, job_id)["cuda"] == "0,1"
    finally:
        proc.terminate()
        proc.wait(30)


def test_gpus_are_found_with_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake ``nvidia-smi`` (no GPU here) prints what the real one does for ``-L``."""
    from jupyter_ds_jobs.server.resources import Capacity, detect_gpus

    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == ()  # none on PATH: no GPU
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = -L ] || exit 2\n'
        "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0b1c)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-77aa)'\n"
    )
    fake.chmod(0o755)
    assert detect_gpus() == ("0", "1")
    assert Capacity.detect().gpus == ("0", "1") and Capacity.detect(gpus=0).gpus == ()


@pytest.mark.parametrize("children_files", [True, False], ids=["proc-children", "psutil"])
def test_the_memory_watch_sees_the_whole_tree(monkeypatch: pytest.MonkeyPatch, children_files: bool) -> None:
    from jupyter_ds_jobs.server import resources

    monkeypatch.setattr(resources, "_CHILDREN", children_files and resources._CHILDREN)
    proc = subprocess.Popen(["bash", "-c", "sleep 30 & python -c 'import time; time.sleep(30)'; wait"])
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while len(pids := resources._tree(proc.pid)) < 3:
            assert time.monotonic() < deadline, pids
            time.sleep(0.05)
        assert pids[0] == proc.pid and resources._rss(pids) > resources._rss(pids[:1])
    finally:
        for pid in reversed(pids[1:]):  # the children this test started, by their ids
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
    assert resources._tree(proc.pid) == []


def test_a_job_whose_type_no_longer_fits_after_a_restart_ends_naming_it(tmp_path: Path) -> None:
    opts: dict[str, Any] = {"state_dir": tmp_path / "s", "token": "t", "write_runtime_file": False}
    with ServerThread(ServerOptions(**opts, gpus=1)) as info:
        job_id = Api(grpc.insecure_channel(info.endpoint), "t").create(
            "true", cloud_instance_types=_types("g1.1")
        )
    with ServerThread(ServerOptions(**opts, gpus=0)) as info:
        job, _ = Api(grpc.insecure_channel(info.endpoint), "t").run(job_id)
    assert job.status == S.ERROR
    assert job.status_details.startswith("instance type g1.1 does not fit this server any more: it has ")


def test_an_instance_types_file_gives_ray_custom_resources_and_refuses_bad_ones(tmp_path: Path) -> None:
    f = tmp_path / "types.json"
    f.write_text(
        '{"g1.1": {"ray_resources": {"accelerator_type:H200": 1}}, "x1": {"cpus": 1, "memory_gib": 1, "gpus": 0}}'
    )
    profiles = load_profiles(f)
    assert profiles["g1.1"].ray_resources == (("accelerator_type:H200", 1.0),)
    assert profiles["g1.1"].gpus == 1  # the rest of the built-in type kept
    assert profiles["x1"].ray_resources == ()
    for bad in ('{"a": 0}', '{"a": -1}', '{"": 1}', '["a"]', '{"a": true}', '{"a": "1"}'):
        f.write_text(f'{{"g1.1": {{"ray_resources": {bad}}}}}')
        with pytest.raises(InvalidArgument, match=r"g1\.1\.ray_resources must map resource names"):
            load_profiles(f)
