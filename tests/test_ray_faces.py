"""The faces on the Ray executor: a job in a ``python_env``, a ``%%ds_job`` cell in a real
InteractiveShell and a whole notebook, each run as a Ray job by the session's job server with
``executor="ray"`` (``ray_server`` in ``tests/conftest.py``); and the server's own resources,
which do not hold back what the cluster places.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_ds_jobs
from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.magics import DsJobsMagics
from jupyter_ds_jobs.server.resources import Profile
from tests.conftest import RunningServer, ray_server_options, running_server
from tests.jobhelpers import Api
from tests.notebookhelpers import write_notebook
from tests.rayhead import RayHead

S = jobs_pb2
pytestmark = pytest.mark.timeout(240)


def _api(server: RunningServer) -> Api:
    return Api(server.channel(), server.info.token)


def _log(api: Api, job_id: str, source: str = "OUT") -> str:
    return b"".join(c for s, c in api.logs(job_id) if s == source).decode()


def _ran_on_ray(api: Api, job_id: str) -> bool:
    return f"isolation: Ray job dsjobs-{job_id}" in _log(api, job_id, ".system.log")


@pytest.fixture(params=["shared", "node"])
def any_ray_server(request: pytest.FixtureRequest) -> RunningServer:
    """The Ray-executor server, its jobs in the server's dir (shared) or in the node's (node)."""
    server: RunningServer = request.getfixturevalue(
        "ray_server" if request.param == "shared" else "ray_node_server"
    )
    return server


@pytest.fixture
def client(ray_server: RunningServer) -> Iterator[JobsClient]:
    with JobsClient(ray_server.info.endpoint, ray_server.info.token, project_id="proj") as c:
        yield c


@pytest.fixture
def any_client(any_ray_server: RunningServer) -> Iterator[JobsClient]:
    with JobsClient(any_ray_server.info.endpoint, any_ray_server.info.token, project_id="proj") as c:
        yield c


def test_a_python_env_job_runs_on_ray_in_its_environment(ray_server: RunningServer, index_url: str) -> None:
    api = _api(ray_server)
    env = jobs_pb2.Environment()
    env.python_env.requirements.append("dep-user==2.0")  # needs tinypkg: resolved from the index
    env.python_env.pip_options.index_url = index_url
    cmd = "dep-user-hello; python -c 'import sys; print(sys.prefix)'"  # the env's console script
    job_id = api.create(cmd, env=env)
    job, _ = api.run(job_id, timeout=180)
    assert job.status == S.SUCCESS, job.status_details
    hello, prefix = _log(api, job_id).splitlines()
    assert hello == "hello from tinypkg 1.0"
    envs = (Path(ray_server.info.state_dir) / "envs").resolve()
    assert Path(prefix).resolve().is_relative_to(envs)  # the server's environment, not ours
    assert _ran_on_ray(api, job_id)


@pytest.fixture
def shell(any_client: JobsClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> InteractiveShell:
    """The session's InteractiveShell, its ``%%ds_job`` on the Ray-executor server, in tmp_path."""
    monkeypatch.setenv("DS_JOBS_DISPLAY", "text")
    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "settings.json"))
    monkeypatch.chdir(tmp_path)
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "jupyter_ds_jobs")
    m = DsJobsMagics(sh)
    m.client = any_client
    sh.register_magics(m)
    for name in [k for k in sh.user_ns if not k.startswith("_") and k not in sh.user_ns_hidden]:
        del sh.user_ns[name]
    return sh


def test_a_ds_job_cell_runs_on_ray_and_brings_back_variables_and_files(
    shell: InteractiveShell, any_ray_server: RunningServer, tmp_path: Path
) -> None:
    shell.user_ns["base"] = 7
    cell = (
        "import os\n"
        "square = base ** 2\n"
        "where = os.getcwd()\n"
        "with open('report.txt', 'w') as f:\n"
        "    f.write(f'square={square}')\n"
    )
    shell.run_cell_magic("ds_job", "-o h --quiet", cell)
    ns = shell.user_ns
    assert ns["square"] == 49
    assert (tmp_path / "report.txt").read_text() == "square=49"  # written there, brought back
    job_id = ns["h"].job_id
    where = Path(ns["where"])  # it ran in the job's working dir: the server's or the node's own
    if any_ray_server.thread.opts.ray_workdir == "node":
        assert where.name == "work" and where.parent.name.startswith("dsjob-")
    else:
        assert where == Path(any_ray_server.info.state_dir) / "work" / job_id
    assert _ran_on_ray(_api(any_ray_server), job_id)


def test_a_notebook_runs_on_ray_with_its_outputs(
    any_client: JobsClient, any_ray_server: RunningServer, tmp_path: Path
) -> None:
    client, ray_server = any_client, any_ray_server
    path = write_notebook(
        tmp_path / "nb.ipynb",
        [("code", "n = 1", ["parameters"]), ("markdown", "# on Ray"), ("code", "print('n is', n)"),
         ("code", "open('made.txt', 'w').write('made')\nn * 2")],
    )  # fmt: skip
    run = jupyter_ds_jobs.run_notebook(path, {"n": 21}, client=client, quiet=True, timeout=180)
    assert run.ok and run.status == "SUCCESS" and run.error is None
    cells = [c for c in run.notebook.cells if c.cell_type == "code"]
    assert [o["text"] for o in cells[-2].outputs if o["output_type"] == "stream"] == ["n is 21\n"]
    assert cells[-1].outputs[0]["data"]["text/plain"] == "42"
    assert run.output_path == tmp_path / "nb.executed.ipynb" and run.output_path.exists()
    assert (tmp_path / "made.txt").read_text() == "made"  # what it wrote comes back beside it
    assert _ran_on_ray(_api(ray_server), run.job_id)


@pytest.fixture
def one_cpu_server(ray_head: RayHead, tmp_path: Path) -> Iterator[RunningServer]:
    """A Ray-executor server whose own machine has 1 cpu: one ``t1.1`` job would hold it all."""
    opts = ray_server_options(ray_head, tmp_path / "state")
    opts.cpus, opts.memory_gib = 1, 4.0
    opts.instance_type_profiles = {"t1.1": Profile("t1.1", 1, 1.0, 0)}
    opts.max_concurrent_jobs = 2
    with running_server(opts) as s:
        yield s


def test_the_servers_own_resources_do_not_hold_back_jobs_ray_places(one_cpu_server: RunningServer) -> None:
    """Two 1-cpu jobs on a 2-CPU cluster run at once though the server has 1 cpu; a third waits
    for a slot (``max_concurrent_jobs`` still counts)."""
    api, work = _api(one_cpu_server), Path(one_cpu_server.info.state_dir) / "work"
    t11 = [jobs_pb2.CloudInstanceType(name="t1.1")]
    cmd = "touch started; while [ ! -e go ]; do sleep 0.05; done"
    ids = [api.create(cmd, cloud_instance_types=t11) for _ in range(2)]
    third = api.create("echo third", cloud_instance_types=t11)
    ops = [api.execute(i) for i in (*ids, third)]
    deadline = time.monotonic() + 90
    while not all((work / i / "started").exists() for i in ids):
        jobs = [api.get(i) for i in ids]
        states = [f"{S.JobStatus.Name(j.status)} {j.status_details}" for j in jobs]
        ended = any(j.status in (S.SUCCESS, S.ERROR, S.CANCELLED) for j in jobs)
        assert time.monotonic() < deadline and not ended, f"the two jobs never ran at once: {states}"
        time.sleep(0.1)
    assert api.get(third).status == S.CREATING  # queued for a slot, not yet preparing
    for i in ids:
        (work / i / "go").touch()
    for op in ops:
        api.wait(op, 120)
    for i in (*ids, third):
        job = api.get(i)
        assert job.status == S.SUCCESS, job.status_details
        assert _ran_on_ray(api, i)
