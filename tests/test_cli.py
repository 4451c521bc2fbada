"""The `jupyter ds-jobs` command line, run as a real subprocess against a real server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.cli import build_parser, main
from jupyter_ds_jobs.core.client import JobsClient

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


class Cli:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(
        self, *args: str, cwd: Path | None = None, ok: bool | None = True
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "jupyter_ds_jobs", *args],
            cwd=cwd or self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok is True:
            assert p.returncode == 0, f"{args}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
        assert "Traceback" not in p.stderr, p.stderr
        return p

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "jupyter_ds_jobs", *args],
            cwd=cwd or self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DS_JOBS_", "YC_"))}
    env.update(
        DS_JOBS_CACHE_DIR=str(tmp / "cache"),
        DS_JOBS_CONFIG=str(tmp / "settings.json"),
        DS_JOBS_STATE_DIR=str(tmp / "embedded-state"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
    )
    return env


@pytest.fixture
def cli(server: Any, tmp_path: Path) -> Cli:
    env = base_env(tmp_path)
    env.update(DS_JOBS_ENDPOINT=server.info.endpoint, DS_JOBS_TOKEN=server.info.token, DS_JOBS_PROJECT="proj")
    work = tmp_path / "work"
    work.mkdir()
    return Cli(env, work)


@pytest.fixture
def client(server: Any) -> Any:
    with JobsClient(server.info.endpoint, server.info.token, project_id="proj") as c:
        yield c


def example(name: str, tmp: Path) -> Path:
    dest = tmp / "examples" / name
    shutil.copytree(EXAMPLES / name, dest)
    return dest


def job_id_of(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith("created job "):
            return line.split()[2].rstrip(":")
    raise AssertionError(f"no job id in:\n{stderr}")


def wait_status(client: JobsClient, job_id: str, status: int, timeout: float = 30) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(job_id)
        if job.status == status:
            return job
        assert time.monotonic() < deadline, jobs_pb2.JobStatus.Name(job.status)
        time.sleep(0.05)


# --------------------------------------------------------------------------- examples end to end


def test_example_script_with_inputs_outputs_and_args(cli: Cli, tmp_path: Path) -> None:
    d = example("script-inputs-outputs", tmp_path)
    r = cli("execute", "-c", str(d / "config.yaml"))
    assert "top 3 words: the, fox, dog" in r.stdout and "{'a': 14.0, 'b': 26.0}" in r.stdout
    result = json.loads((cli.cwd / "result.json").read_text())
    assert result["top"][0] == ["the", 4] and result["totals"] == {"a": 14.0, "b": 26.0}
    assert (cli.cwd / "report" / "words.txt").read_text().startswith("the 4\n")
    assert (cli.cwd / "report" / "totals.txt").read_text() == "a 14\nb 26\n"
    assert "SUCCESS, return code 0" in r.stderr
    # run again, unchanged: nothing is uploaded
    r2 = cli("execute", "-c", str(d / "config.yaml"))
    assert "uploaded 0 (0 B)" in r2.stderr


def test_example_python_auto(cli: Cli, tmp_path: Path) -> None:
    d = example("python-auto", tmp_path)
    r = cli("generate-requirements", str(d / "main.py"))
    assert r.stdout.startswith("PyYAML==") and "textstats" in r.stderr
    r = cli("execute", "-c", "config.yaml", cwd=d)
    assert "most_common: to\nunique: 8\nwords: 10\n" in r.stdout
    assert (d / "summary.yaml").read_text() == "most_common: to\nunique: 8\nwords: 10\n"
    job = json.loads(cli("get", "--id", job_id_of(r.stderr), "--format", "json").stdout)
    py = job["job_parameters"]["env"]["python_env"]
    assert [m["desc"]["path"] for m in py["local_modules"]] == ["main.py.zip", "textstats.zip"]
    assert any(req.startswith("PyYAML==") for req in py["requirements"])


def test_example_graceful_shutdown_and_env_vars(cli: Cli, client: JobsClient, tmp_path: Path) -> None:
    d = example("graceful-env", tmp_path)
    r = cli("execute", "-c", str(d / "config.yaml"))
    assert r.stdout.splitlines() == ["hello from env.vars", "worker started: 5 steps", "done: 5 steps"]
    assert (cli.cwd / "checkpoint.txt").read_text() == "finished at step 5\n"
    first = job_id_of(r.stderr)

    # fork it into a long run, then cancel gracefully: the worker checkpoints on SIGTERM
    r = cli("fork", "--id", first, "--arg", "STEPS=100000", "--env-var", "GREETING=forked", "--async")
    forked = r.stdout.strip()
    wait_status(client, forked, jobs_pb2.EXECUTING)
    deadline = time.monotonic() + 20
    while "worker started" not in cli("logs", "--id", forked).stdout:
        assert time.monotonic() < deadline
    cli("cancel", "--id", forked, "--graceful")
    job = wait_status(client, forked, jobs_pb2.CANCELLED)
    logs = cli("logs", "--id", forked).stdout
    assert (
        logs.startswith("forked\nworker started: 100000 steps\n")
        and "SIGTERM received: saving checkpoint" in logs
    )
    assert job.parent_job_id == first


# --------------------------------------------------------------------------- commands


def test_async_attach_list_get_logs_download_ttl_delete(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "main.py").write_text(
        "import sys\nprint('out line')\nprint('err line', file=sys.stderr)\nopen(sys.argv[1], 'w').write('R')\nsys.exit(3)\n"
    )
    (tmp_path / "job" / "config.yaml").write_text(
        "name: three\ncmd: python main.py ${OUT}\ninputs: [main.py]\noutputs:\n  - r.txt: OUT\n"
    )
    r = cli("execute", "-c", str(tmp_path / "job" / "config.yaml"), "--async")
    job_id = r.stdout.strip()
    assert job_id.startswith("dsj")
    r = cli("attach", "--id", job_id, "--offset", "0", ok=False)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "out line\n" and "err line" in r.stderr and "return code 3" in r.stderr
    assert (cli.cwd / "r.txt").read_text() == "R"

    table = cli("list").stdout
    assert table.splitlines()[0].split() == ["ID", "NAME", "STATUS", "CREATED", "DURATION", "DETAILS"]
    assert job_id in table and "ERROR" in table
    listed = json.loads(cli("list", "--format", "json", "--status", "ERROR").stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert json.loads(cli("list", "--format", "json", "--status", "SUCCESS").stdout) == []
    got = cli("get", "--id", job_id).stdout
    assert "status         ERROR" in got and "process exited with code 3" in got
    assert json.loads(cli("get", "--id", job_id, "--format", "json").stdout)["status"] == "ERROR"

    r = cli("logs", "--id", job_id)
    assert r.stdout == "out line\n" and "err line" in r.stderr
    assert cli("logs", "--id", job_id, "--offset", "-1").stdout == ""

    out = tmp_path / "files"
    r = cli("download-files", "--id", job_id, "--with-logs", "--with-diagnostics", "--output-dir", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["r.txt", "stderr.log", "stdout.log"]
    assert (out / "stdout.log").read_text() == "out line\n"

    assert "never" in cli("set-data-ttl", "--id", job_id, "--days", "infinity").stderr
    assert "data expires" in cli("set-data-ttl", "--id", job_id, "--days", "2").stderr
    r = cli("set-data-ttl", "--id", job_id, "--days", "soon", ok=False)
    assert (
        r.returncode == 1
        and r.stderr.strip() == "error: --days: expected a number of days or 'infinity', got 'soon'"
    )

    cli("delete", "--id", job_id)
    r = cli("get", "--id", job_id, ok=False)
    assert r.returncode == 1 and r.stderr.strip() == f"error: job '{job_id}' not found"


def test_execute_data_ttl_days_and_infinity(cli: Cli, client: JobsClient, tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "config.yaml").write_text("cmd: echo hi\n")
    config = str(tmp_path / "job" / "config.yaml")
    job_id = cli("execute", "-c", config, "--async", "--data-ttl-days", "2").stdout.strip()
    job = client.get(job_id)
    left = job.data_expires_at.ToSeconds() - job.created_at.ToSeconds()
    assert abs(left - 2 * 86400) < 5
    job_id = cli("execute", "-c", config, "--async", "--data-ttl-days", "infinity").stdout.strip()
    assert not client.get(job_id).HasField("data_expires_at")  # kept forever, not the server's 14 days
    job_id = cli("execute", "-c", config, "--async").stdout.strip()
    job = client.get(job_id)
    assert abs(job.data_expires_at.ToSeconds() - job.created_at.ToSeconds() - 14 * 86400) < 5


def test_fork_with_new_input_var(cli: Cli, client: JobsClient, tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "main.py").write_text("import sys\nprint(open(sys.argv[1]).read().strip(), sys.argv[2])\n")
    (job / "in.txt").write_text("first input")
    (job / "config.yaml").write_text(
        "cmd: python main.py ${IN} ${N}\nargs: {N: '1'}\ninputs:\n  - main.py\n  - in.txt: IN\n"
    )
    r = cli("execute", "-c", str(job / "config.yaml"))
    assert r.stdout == "first input 1\n"
    (tmp_path / "other.txt").write_text("second input")
    r = cli("fork", "--id", job_id_of(r.stderr), "--var", f"IN={tmp_path / 'other.txt'}", "--arg", "N=2",
            "--cloud-instance-type", "c1.8", "--name", "forked")  # fmt: skip
    assert r.stdout == "second input 2\n"
    forked = next(iter(client.list_jobs(limit=1)))
    assert forked.name == "forked" and forked.job_parameters.cloud_instance_types[0].name == "c1.8"
    r = cli("fork", "--id", forked.id, "--arg", "NOPE=1", ok=False)
    assert r.returncode == 1 and "the job has no argument 'NOPE'" in r.stderr


def test_ctrl_c_twice_cancels_the_job(cli: Cli, client: JobsClient, tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "main.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    (job / "config.yaml").write_text("cmd: python main.py\ninputs: [main.py]\n")
    p = cli.popen("execute", "-c", str(job / "config.yaml"))
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "started\n"
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "press Ctrl-C again" in err and "cancelling job" in err and "CANCELLED" in err
    assert "Traceback" not in err
    assert next(iter(client.list_jobs(limit=1))).status == jobs_pb2.CANCELLED


BAD_CONFIGS = {
    "missing-cmd": ("name: x\n", "error: cmd: cmd is required"),
    "undeclared-var": ("cmd: python main.py ${NOPE}\n", "error: cmd: variable ${NOPE} is not declared"),
    "bad-path": (
        "cmd: python main.py\ninputs:\n  - ../secret.txt\n",
        "error: inputs[0]: path '../secret.txt' must be relative",
    ),
    "unknown-key": (
        "cmd: python main.py\ninptus: [a]\n",
        "error: inptus: unknown key 'inptus'; did you mean 'inputs'?",
    ),
    "bad-duration": (
        "cmd: python main.py\ngraceful-shutdown: {timeout: soon}\n",
        "error: graceful-shutdown.timeout: bad duration 'soon'",
    ),
    "bad-instance-type": (
        "cmd: python main.py\ncloud-instance-type: z9.99\n",
        "error: cloud-instance-type: unknown instance type 'z9.99'",
    ),
    "missing-input": (
        "cmd: python main.py\ninputs:\n  - nothere.txt\n",
        "error: inputs[0]: no such file or directory: 'nothere.txt'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_clear_line(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CONFIGS[case]
    (tmp_path / "config.yaml").write_text(text)
    env = base_env(tmp_path)
    env["DS_JOBS_ENDPOINT"] = "127.0.0.1:9"  # never reached: the config fails first
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_jobs", "execute", "-c", "config.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 1
    assert p.stderr.startswith(expected) and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stdout == ""


def test_missing_config_file_and_unreachable_server(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env["DS_JOBS_ENDPOINT"] = "127.0.0.1:9"
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_jobs", "execute", "-c", "nope.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 1 and p.stderr.startswith("error: cannot read config file 'nope.yaml'")
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_jobs", "list"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 1 and p.stderr.startswith("error: cannot reach the job server at 127.0.0.1:9")
    assert len(p.stderr.strip().splitlines()) == 1


def one_line_error(args: list[str], tmp: Path, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_jobs", *args],
        cwd=tmp, env=env or base_env(tmp), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr.strip()


def test_a_path_that_cannot_be_used_is_one_line_naming_it(tmp_path: Path) -> None:
    line = one_line_error(["server", "--state-dir", "/proc/nope/x"], tmp_path)
    assert line == "error: cannot create the state dir /proc/nope/x: No such file or directory"
    (tmp_path / "plain-file").write_text("x")
    line = one_line_error(["server", "--state-dir", str(tmp_path / "plain-file" / "state")], tmp_path)
    assert line == f"error: cannot create the state dir {tmp_path / 'plain-file' / 'state'}: Not a directory"
    # Any other OSError reaching the command line: here the embedded server's state dir under a file
    env = base_env(tmp_path)
    env["DS_JOBS_STATE_DIR"] = str(tmp_path / "plain-file" / "state")
    line = one_line_error(["list"], tmp_path, env)
    assert line.startswith(f"error: {tmp_path / 'plain-file' / 'state'}") and line.endswith(
        ": Not a directory"
    )


def test_embedded_server_started_on_demand_then_status_and_stop(tmp_path: Path) -> None:
    cli = Cli(base_env(tmp_path), tmp_path)
    r = cli("list")  # no endpoint configured: a detached local server is started
    assert r.stdout.strip() == "no jobs"
    status = json.loads(cli("server", "status", "--format", "json").stdout)
    assert status["state_dir"] == str((tmp_path / "embedded-state").resolve()) and status["jobs"] == {}
    pid = status["pid"]
    try:
        assert (tmp_path / "embedded-state" / "server.log").exists()
        assert cli("list").stdout.strip() == "no jobs"  # found again, not started twice
        assert json.loads(cli("server", "status", "--format", "json").stdout)["pid"] == pid
        assert f"stopped the job server (pid {pid})" in cli("server", "stop").stderr
        r = cli("server", "status", ok=False)
        assert r.returncode == 1 and "no local job server is running" in r.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = list(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"execute", "attach", "list", "get", "cancel", "fork", "set-data-ttl", "download-files", "delete",
            "logs", "generate-requirements", "server"} <= set(commands)  # fmt: skip
    for argv in [[c, "--help"] for c in commands] + [
        ["server", "status", "--help"],
        ["server", "stop", "--help"],
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "usage: jupyter ds-jobs" in capsys.readouterr().out
    p = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_jobs", "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "execute" in p.stdout
