"""python_env through the job service: uv environments built, cached and used by jobs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, ops_pb2, pjs_pb2
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.jobhelpers import Api

S = jobs_pb2
OWN = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def env_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    state = tmp_path_factory.mktemp("state")
    thread = ServerThread(ServerOptions(state_dir=state, token="t", write_runtime_file=False))
    info = thread.start()
    try:
        yield Api(grpc.insecure_channel(info.endpoint), "t")
    finally:
        thread.stop()


def python_env(index_url: str, *reqs: str, version: str = "") -> jobs_pb2.Environment:
    env = jobs_pb2.Environment()
    env.python_env.requirements.extend(reqs)
    env.python_env.python_version = version
    env.python_env.pip_options.index_url = index_url
    return env


def out(api: Api, job_id: str, source: str = "OUT") -> str:
    return b"".join(c for s, c in api.logs(job_id) if s == source).decode()


def test_job_runs_in_a_uv_environment_built_once(env_server: Api, index_url: str) -> None:
    api = env_server
    cmd = "python -c 'import sys, os, tinypkg; print(tinypkg.WHO); print(sys.prefix == os.environ[\"VIRTUAL_ENV\"])'"
    first = api.create(cmd, env=python_env(index_url, "tinypkg==1.0"))
    op = api.execute(first)
    statuses = set()
    while not op.done:
        meta = pjs_pb2.ExecuteProjectJobMetadata()
        op.metadata.Unpack(meta)
        statuses.add((meta.job.status, meta.progress.message))
        op = api.ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=api.md)
    job = api.get(first)
    assert job.status == S.SUCCESS, job.status_details
    assert out(api, first) == "tinypkg 1.0\nTrue\n"  # the wheel's module, from the venv
    system = out(api, first, ".system.log")
    assert "building a Python environment: tinypkg==1.0" in system
    assert (S.PREPARING, "building the Python environment") in statuses
    # The same requirements again: a cache hit, no build message
    second = api.create(cmd, env=python_env(index_url, "TinyPkg == 1.0"))
    api.run(second)
    assert out(api, second) == out(api, first)
    assert "building" not in out(api, second, ".system.log")


def test_local_module_shadows_the_installed_package(env_server: Api, index_url: str) -> None:
    api = env_server
    job_id = api.create(
        "python -c 'import shadowme; print(shadowme.WHO)'",
        env=python_env(index_url, "shadowme==1.0"),
        modules={"shadowme.py": b"WHO = 'local module'\n"},
    )
    job, _ = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    assert out(api, job_id) == "local module\n"


def test_failed_build_ends_the_job_in_error_with_uvs_message(env_server: Api, index_url: str) -> None:
    api = env_server
    job_id = api.create("python -c 'print(1)'", env=python_env(index_url, "no-such-package==9.9"))
    job, op = api.run(job_id)
    assert job.status == S.ERROR
    assert "no-such-package" in job.status_details
    assert op.HasField("error") and "no-such-package" in op.error.message
    assert "no-such-package" in out(api, job_id, ".system.log")


def test_pins_the_server_already_satisfies_need_no_venv(env_server: Api) -> None:
    from importlib.metadata import version

    api = env_server
    pin = f"cloudpickle=={version('cloudpickle')}"
    job_id = api.create(
        "python -c 'import sys, cloudpickle; print(sys.executable)'",
        env=jobs_pb2.Environment(python_env=jobs_pb2.PythonEnv(requirements=[pin])),
    )
    job, _ = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    assert Path(out(api, job_id).strip()).resolve() == Path(sys.executable).resolve()


def test_missing_python_version_and_bad_requirement_are_refused_at_create(
    env_server: Api, index_url: str
) -> None:
    api = env_server
    with pytest.raises(grpc.RpcError) as e:
        api.create("python -V", env=python_env(index_url, version="2.1"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "python 2.1 is not installed" in e.value.details() and OWN in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        api.create("python -V", env=python_env(index_url, "tinypkg=>1"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tinypkg=>1" in e.value.details() and "requirements" in e.value.details()


def test_conda_only_packages_are_refused(env_server: Api) -> None:
    api = env_server
    env = jobs_pb2.Environment()
    env.python_env.conda_yaml = (
        "dependencies:\n  - python=3.11\n  - cudatoolkit=11.8\n  - pip:\n    - tinypkg==1.0\n"
    )
    with pytest.raises(grpc.RpcError) as e:
        api.create("python -V", env=env)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cudatoolkit" in e.value.details()


WARM_CHECK = b"""import os, sys
print(sys.prefix == os.environ["VIRTUAL_ENV"], os.path.basename(os.path.dirname(sys.prefix)))
print(b"_zygote_main.py" in open(f"/proc/{os.getppid()}/cmdline", "rb").read())
print(all(m in sys.modules for m in ("runpy", "ast", "threading")))
"""


def test_a_warm_started_job_forks_the_environments_own_warm_interpreter(
    env_server: Api, index_url: str
) -> None:
    api = env_server
    job_id = api.create(
        "python _ds_runner.py",
        env=python_env(index_url, "tinypkg==1.0"),
        modules={"_ds_runner.py": WARM_CHECK},
    )
    job, _ = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    in_venv, forked, preloaded = out(api, job_id).splitlines()
    assert in_venv == "True envs"  # the venv's interpreter, in the cache's envs/
    assert forked == "True"  # the job's parent is the zygote of that interpreter
    # What every forked job uses itself was imported once, by the zygote, though the venv has no
    # cloudpickle (whose imports used to bring them): no job pays for them.
    assert preloaded == "True"
