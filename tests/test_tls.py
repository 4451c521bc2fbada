"""A team's own job server over TLS, end to end: a CA made here signs the server's certificate.

The same server, client, CLI and ``%%ds_job`` as everywhere else, with gRPC over TLS and job files
over HTTPS (signed ``https://`` URLs). A client that does not trust the CA gets a message naming
the host and the CA file; the official SDK's stubs speak to the TLS server too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.connection import ConnectionInfo
from jupyter_ds_jobs.common.errors import Unavailable
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.tls import ServerCert, TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"), "team")


@pytest.fixture(scope="module")
def cert(ca: TestCA) -> ServerCert:
    return ca.issue(("localhost", "127.0.0.1"))


@pytest.fixture
def tls_server(tmp_path: Path, ca: TestCA, cert: ServerCert) -> Iterator[ConnectionInfo]:
    opts = ServerOptions(
        state_dir=tmp_path / "state", token="tls-token", write_runtime_file=False, sweep_interval=3600,
        tls_cert=cert.cert, tls_key=cert.key, tls_ca=ca.ca_file,
    )  # fmt: skip
    thread = ServerThread(opts)
    info = thread.start()
    try:
        yield info
    finally:
        thread.stop()


def _script_job(tmp: Path) -> tuple[jobs_pb2.JobParameters, list[LocalFile]]:
    (tmp / "main.py").write_text(
        "import sys\nprint('over tls')\nopen(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper())\n"
    )
    (tmp / "in.txt").write_text("secret payload")
    p = jobs_pb2.JobParameters(cmd="python main.py ${IN} ${OUT}")
    p.output_files.add(path="out.txt", var="OUT")
    files = [
        LocalFile(tmp / "main.py", "main.py", "", False),
        LocalFile(tmp / "in.txt", "in.txt", "IN", False),
    ]
    return p, files


def test_client_runs_a_job_over_tls_and_https(tls_server: ConnectionInfo, ca: TestCA, tmp_path: Path) -> None:
    info = tls_server
    assert info.tls and info.http_url.startswith("https://") and info.ca_file == str(ca.ca_file.resolve())
    params, files = _script_job(tmp_path)
    logs: list[bytes] = []
    with JobsClient(info.endpoint, info.token, tls=True, ca_file=ca.ca_file, project_id="p") as client:
        job_id = client.create(params, files)  # inputs uploaded with HTTPS PUTs to signed URLs
        assert client.last_create is not None and client.last_create.files_uploaded == 2
        result = client.run(job_id, on_log=lambda m: logs.append(m.content))
        assert result.ok, result.job.status_details
        assert all(sf.url.startswith("https://") for sf in result.output_files)
        out = client.download_result(result, tmp_path / "back")  # HTTPS GET, sha256 checked
    assert [p.read_text() for p in out] == ["SECRET PAYLOAD"]
    assert b"over tls\n" in b"".join(logs)


def test_a_client_that_does_not_trust_the_ca_is_told_which_host_and_ca(
    tls_server: ConnectionInfo, tmp_path: Path
) -> None:
    other = TestCA(tmp_path, "other")
    untrusting = JobsClient(tls_server.endpoint, tls_server.token, tls=True, ca_file=other.ca_file,
                            retry_seconds=0.5, project_id="p")  # fmt: skip
    with untrusting as client, pytest.raises(Unavailable) as info:
        client.get("dsjnothing")
    msg = str(info.value)
    assert f"the TLS handshake with {tls_server.endpoint} failed" in msg
    assert str(other.ca_file) in msg and "--ca-file" in msg
    system_only = JobsClient(tls_server.endpoint, tls_server.token, tls=True, retry_seconds=0.5)
    with system_only as client, pytest.raises(Unavailable, match="the system roots \\(no CA file given\\)"):
        client.get("dsjnothing")
    plain = JobsClient(tls_server.endpoint, tls_server.token, tls=False, retry_seconds=0.5)
    with plain as client, pytest.raises(Unavailable):  # plain gRPC to a TLS port: refused, never served
        client.get("dsjnothing")


def test_the_official_sdk_stubs_speak_to_the_tls_server(tls_server: ConnectionInfo, ca: TestCA) -> None:
    from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as sdk_pjs
    from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2_grpc as sdk_grpc

    creds = grpc.ssl_channel_credentials(ca.ca_file.read_bytes())
    with grpc.secure_channel(tls_server.endpoint, creds) as ch:
        stub = sdk_grpc.ProjectJobServiceStub(ch)
        md = [("authorization", f"Bearer {tls_server.token}")]
        resp = stub.List(sdk_pjs.ListProjectJobRequest(project_id="p"), metadata=md, timeout=10)
        assert list(resp.jobs) == []
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(sdk_pjs.GetProjectJobRequest(job_id="dsjnothing"), metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_ds_jobs", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DS_JOBS_", "YC_"))}
    env.update(DS_JOBS_CACHE_DIR=str(tmp / "cache"), DS_JOBS_CONFIG=str(tmp / "settings.json"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), DS_JOBS_STATE_DIR=str(tmp / "embedded"))  # fmt: skip
    return env


def test_cli_over_tls_with_ca_file_option_and_environment(
    tls_server: ConnectionInfo, ca: TestCA, tmp_path: Path
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.yaml").write_text("cmd: python -c \"open('r.txt','w').write('ok')\"\noutputs: [r.txt]\n")
    env = _env(tmp_path)
    ep = ["--endpoint", f"grpcs://{tls_server.endpoint}", "--token", tls_server.token]
    r = _cli(["execute", "-c", str(job / "config.yaml"), *ep, "--ca-file", str(ca.ca_file)], env, job)
    assert r.returncode == 0, r.stderr
    assert (job / "r.txt").read_text() == "ok"
    r = _cli(["list", "--format", "json", *ep], {**env, "DS_JOBS_CA_FILE": str(ca.ca_file)}, job)
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 1, r.stderr
    r = _cli(["list", *ep], env, job)  # the system roots alone: one line naming host and CA
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: the TLS handshake with {tls_server.endpoint} failed")


def test_magic_over_tls(tls_server: ConnectionInfo, ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_JOBS_ENDPOINT", f"grpcs://{tls_server.endpoint}")
    monkeypatch.setenv("DS_JOBS_TOKEN", tls_server.token)
    monkeypatch.setenv("DS_JOBS_CA_FILE", str(ca.ca_file))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_ds_jobs")
    from jupyter_ds_jobs.magics import DsJobsMagics

    magics = DsJobsMagics(shell)
    shell.register_magics(magics)
    shell.user_ns["base"] = 20
    shell.run_cell_magic("ds_job", "--quiet", "total = base + 22\n")
    assert shell.user_ns["total"] == 42
    assert magics.get_client().tls


def test_local_server_with_tls_records_it_in_its_connection_file(
    ca: TestCA, cert: ServerCert, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    state = tmp_path / "state"
    args = ["server", "--state-dir", str(state), "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
            "--tls-ca", str(ca.ca_file)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_ds_jobs", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (state / "ds-jobs-server.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.05)
        info = ConnectionInfo.read(state / "ds-jobs-server.json")
        assert info.tls and info.ca_file == str(ca.ca_file.resolve())
        with JobsClient.connect(state_dir=state, start=False) as client:  # TLS and the CA from the file
            assert client.tls and list(client.list_jobs(project_id="")) == []
        r = _cli(["server", "status", "--state-dir", str(state), "--format", "json"], env, tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["tls"].startswith("yes")
    finally:
        proc.terminate()
        proc.wait(30)
    r = _cli(["server", "--state-dir", str(tmp_path / "s2"), "--tls-cert", str(cert.cert)], env, tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: TLS needs both a certificate (--tls-cert) and its key (--tls-key)"
    )


def test_a_certificate_for_another_name_is_refused_naming_the_host(ca: TestCA, tmp_path: Path) -> None:
    wrong = ca.issue(("jobs.example.org",), name="wrong-name")
    opts = ServerOptions(state_dir=tmp_path / "state", token="t", write_runtime_file=False, sweep_interval=3600,
                         tls_cert=wrong.cert, tls_key=wrong.key)  # fmt: skip
    with ServerThread(opts) as info:
        client = JobsClient(info.endpoint, "t", tls=True, ca_file=ca.ca_file, retry_seconds=0.5)
        with client, pytest.raises(Unavailable) as exc:
            client.get("dsjnothing")
    msg = str(exc.value)
    assert (
        f"the TLS handshake with {info.endpoint} failed" in msg
        and "was not issued for the name '127.0.0.1'" in msg
    )
