"""Ray jobs with ``--ray-workdir node``: the job runs in a private dir on the node, its files come
over its signed channel, its Python environment is built on the node with uv, its progress and
outputs stream back. (The node here is this machine; ``node`` mode copies even so, which is what
a node without the server's filesystem gets.)
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.server.resources import Profile, default_profiles
from tests.conftest import RunningServer, ray_server_options, running_server
from tests.jobhelpers import Api
from tests.rayhead import RayHead

S = jobs_pb2
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def node_server(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    opts = ray_server_options(ray_head, tmp_path_factory.mktemp("raynode") / "state")
    profiles = {
        **default_profiles(),
        "tiny": Profile("tiny", 1, 0.15, 0),  # 150 MiB
        "custom1": Profile("custom1", 1, 1.0, 0, (("ds_test", 1.0),)),  # the head has 2 ds_test
        "nowhere": Profile("nowhere", 1, 1.0, 0, (("no_such_resource", 1.0),)),
    }
    with running_server(dataclasses.replace(opts, ray_workdir="node", instance_type_profiles=profiles)) as s:
        yield s


@pytest.fixture
def api(node_server: RunningServer) -> Api:
    return Api(node_server.channel(), node_server.info.token)


def _log(api: Api, job_id: str, source: str = "OUT") -> str:
    return b"".join(c for s, c in api.logs(job_id) if s == source).decode()


def test_a_job_runs_in_its_own_dir_on_the_node_and_its_outputs_stream_back(
    node_server: RunningServer, api: Api, tmp_path: Path
) -> None:
    big = bytes(range(256)) * 12_000  # 3 MB: more than one chunk each way
    script = (
        "pwd; cat in.txt; cat pkg/b.txt; echo to-err >&2; cp big.bin res/big-copy.bin; "
        'echo \'{"progress": 60, "message": "most of it"}\' >> job_progress.jsonl; '
        "mkdir -p res/dir/sub && echo deep > res/dir/sub/f.txt; echo scratch > not-an-output.txt; "
        "ln -s /etc/hostname res/dir/link; echo ${N} > ${OUT}; "
        f"cat {node_server.info.state_dir}/secret.key >&2 || echo no-secret"
    )
    job_id = api.create(
        script,
        inputs={"in.txt": (b"input!\n", ""), "big.bin": (big, "")},
        outputs=[("res/out.txt", "OUT"), ("res/big-copy.bin", ""), ("res/dir", "")],
        modules={"pkg/b.txt": b"zipped\n"},  # a local module: a ZIP the server extracted
        arguments=[jobs_pb2.Argument(name="N", value="42")],
    )
    job, _ = api.run(job_id, timeout=180)
    assert job.status == S.SUCCESS, (job.status_details, _log(api, job_id, "ERR"), _log(api, job_id))
    out = _log(api, job_id).splitlines()
    workdir = Path(node_server.info.state_dir) / "work" / job_id
    assert out[0] != str(workdir) and "/dsjob-" in out[0]  # a private dir on the node
    assert out[1:] == ["input!", "zipped", "no-secret"]  # the sandbox holds on the node too
    assert _log(api, job_id, "ERR").startswith("to-err\n")
    assert (Path(node_server.info.state_dir) / "secret.key").read_text() not in _log(api, job_id, "ERR")
    assert (workdir / "res/out.txt").read_text() == "42\n"
    assert (workdir / "res/big-copy.bin").read_bytes() == big
    assert (workdir / "res/dir/sub/f.txt").read_text() == "deep\n"
    assert not (workdir / "res/dir/link").exists()  # a link the job made is not followed
    assert not (workdir / "not-an-output.txt").exists()  # only declared outputs come back
    # the node's progress file reached the server's (which drives the operation's progress)
    assert '"most of it"' in (workdir / "job_progress.jsonl").read_text()
    assert not Path(out[0]).exists()  # the node's dir is gone


def test_a_python_env_is_built_on_the_node_and_reused(
    node_server: RunningServer, api: Api, ray_head: RayHead, index_url: str
) -> None:
    env = jobs_pb2.Environment()
    env.python_env.requirements.append("dep-user==2.0")  # needs tinypkg: resolved from the index
    env.python_env.pip_options.index_url = index_url
    cmd = "dep-user-hello; python -c 'import sys; print(sys.prefix)'"
    first, second = (api.create(cmd, env=env) for _ in range(2))
    for job_id in (first, second):
        job, _ = api.run(job_id, timeout=180)
        assert job.status == S.SUCCESS, (job.status_details, _log(api, job_id, "ERR"))
    hello, prefix = _log(api, first).splitlines()
    assert hello == "hello from tinypkg 1.0"
    node_envs = (ray_head.temp_dir / "envs").resolve()  # the node's DS_JOBS_RAY_ENV_DIR
    assert Path(prefix).resolve().parent == node_envs
    assert "building the job's Python environment on this node" in _log(api, first, "ERR")
    assert _log(api, second).splitlines() == [hello, prefix]  # the same env, not built again
    assert "building" not in _log(api, second, "ERR")


def test_a_job_that_cannot_be_prepared_on_the_node_ends_in_error_saying_why(
    node_server: RunningServer, api: Api, tmp_path: Path
) -> None:
    env = jobs_pb2.Environment()
    env.python_env.requirements.append("no-such-package-here==1.0")
    env.python_env.pip_options.index_url = (tmp_path / "empty-index").as_uri()
    (tmp_path / "empty-index").mkdir()
    job_id = api.create("echo never", env=env)
    job, _ = api.run(job_id, timeout=180)
    assert job.status == S.ERROR
    assert "never" not in _log(api, job_id)
    err = _log(api, job_id, "ERR")  # the node said what failed, with uv's own words
    assert "ds-jobs ray: preparing the job on this node failed: pip install failed" in err
    assert "no-such-package-here" in err
    assert "exited with code 125" in job.status_details
    assert "building a Python environment" not in _log(api, job_id, ".system.log")  # not the server


def _itype(name: str) -> list[jobs_pb2.CloudInstanceType]:
    return [jobs_pb2.CloudInstanceType(name=name)]


def test_a_job_over_its_memory_on_the_node_ends_with_the_clear_status(api: Api) -> None:
    cmd = "python3 -c 'import time; b = bytearray(400 * 2**20); print(len(b), flush=True); time.sleep(60)'"
    job_id = api.create(cmd, cloud_instance_types=_itype("tiny"))
    t0 = time.monotonic()
    job, _ = api.run(job_id, timeout=120)
    assert job.status == S.ERROR
    assert "exceeded the memory of its instance type (0.15 GiB)" in job.status_details
    assert "killed on the Ray node" in job.status_details
    assert time.monotonic() - t0 < 45  # not the minute it would sleep


def test_custom_ray_resources_of_an_instance_type_reach_ray(api: Api, ray_head: RayHead) -> None:
    def held() -> float:  # the dashboard reports ds_test as dsTest
        with urllib.request.urlopen(f"{ray_head.address}/api/cluster_status", timeout=10) as r:
            return float(json.load(r)["data"]["clusterStatus"]["loadMetricsReport"]["usage"]["dsTest"][0])

    job_id = api.create("sleep 4", cloud_instance_types=_itype("custom1"))
    api.execute(job_id)
    seen, deadline = set(), time.monotonic() + 90
    while api.get(job_id).status not in (S.SUCCESS, S.ERROR) and time.monotonic() < deadline:
        seen.add(held())
        time.sleep(0.2)
    assert api.get(job_id).status == S.SUCCESS
    assert max(seen) == 1.0  # Ray held one ds_test for the job while it ran

    job_id = api.create("echo never", cloud_instance_types=_itype("nowhere"))
    job, _ = api.run(job_id, timeout=120)
    assert job.status == S.ERROR
    assert "needs 1 no_such_resource; the Ray cluster has 0" in job.status_details


def test_instance_types_are_checked_against_the_clusters_gpus_not_this_machines(
    ray_head: RayHead, tmp_path: Path
) -> None:
    opts = dataclasses.replace(ray_server_options(ray_head, tmp_path / "state"), gpus=None)  # not declared
    with running_server(opts) as server:
        api = Api(server.channel(), server.info.token)
        job_id = api.create("true", cloud_instance_types=_itype("g1.2"))  # the head's 2 declared GPUs
        assert api.get(job_id).actual_cloud_instance_type.name == "g1.2"
        with pytest.raises(grpc.RpcError) as e:
            api.create("true", cloud_instance_types=_itype("g1.4"))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "memory, 2 GPUs" in (e.value.details() or "")  # what the cluster has
