"""The official ``datasphere`` CLI (0.10.0) and our client agree on where they connect and what they
send: endpoints, TLS, the method paths and the ``authorization`` metadata.

Both talk to one loopback TLS server, ``RecordingFake`` (a named fake of DataSphere: it records
each call's method, authority and metadata and answers UNIMPLEMENTED; DataSphere itself cannot be
reached here). The official CLI's own modules run in a subprocess from its wheel (fetched by
``scripts/test``; not installed, since its dependencies would pin packages below ours), its
package ``__init__`` (the SDK facade) left out, with its job endpoint pointed at the fake and
gRPC's default roots at the test CA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from jupyter_ds_jobs.common.errors import DsJobsError
from jupyter_ds_jobs.core.client import DATASPHERE_ENDPOINT, DATASPHERE_OPERATION_ENDPOINT, JobsClient
from jupyter_ds_jobs.core.credentials import DEFAULT_IAM_ENDPOINT, DEFAULT_ORDER, Credentials
from tests.tls import TestCA

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".cache" / "official-cli"


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = sorted(WHEEL_DIR.glob("datasphere-0.10.0-*.whl"))
    if not wheels:
        pytest.fail(
            f"the official datasphere CLI wheel is not in {WHEEL_DIR}: run scripts/test, which fetches it"
        )
    dest = tmp_path_factory.mktemp("official-cli")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(dest)
    return dest


class RecordingFake(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A fake of DataSphere's endpoint: records every call, answers UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append({"method": details.method, "metadata": dict(details.invocation_metadata or ())})
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "recording fake")
            return b""

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RecordingFake, str, TestCA]]:
    ca = TestCA(tmp_path_factory.mktemp("fake-ca"), "fake")
    cert = ca.issue(("localhost", "127.0.0.1"))
    recorder = RecordingFake()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    creds = grpc.ssl_server_credentials([(cert.key.read_bytes(), cert.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield recorder, f"localhost:{port}", ca
    finally:
        server.stop(0)


_OFFICIAL = """
import json, os, sys, types
import grpc
# the package's __init__ imports its SDK facade (and envzy); the channel and sign-in modules are
# loaded without it
pkg = types.ModuleType("datasphere")
pkg.__path__ = [os.path.join(os.getcwd(), "datasphere")]
sys.modules["datasphere"] = pkg
import datasphere.api as api
out = {"job": api.job_endpoint, "op": api.op_endpoint, "iam": api.iam_endpoint}
import datasphere.auth as auth
import datasphere.channel as channel
channel.job_endpoint = sys.argv[1]  # the fake, instead of DataSphere
stub = api.project_job_service_pb2_grpc.ProjectJobServiceStub(channel.get_job_channel(None))
try:
    stub.Get(api.project_job_service_pb2.GetProjectJobRequest(job_id="dsjcompare"),
             metadata=auth.get_md(None), timeout=10)
except grpc.RpcError as e:
    out["code"] = e.code().name
out["order"] = [m.value for m in auth.get_auth_methods()]
print(json.dumps(out))
"""


def test_official_cli_and_ours_send_the_same_call(
    official: Path, fake: tuple[RecordingFake, str, TestCA]
) -> None:
    recorder, target, ca = fake
    env = {**os.environ, "PYTHONPATH": str(official), "YC_IAM_TOKEN": "same-iam-token",
           "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(ca.ca_file), "GRPC_VERBOSITY": "ERROR"}  # fmt: skip
    env.pop("SERVER_ENV", None)
    r = subprocess.run([sys.executable, "-c", _OFFICIAL, target], env=env, capture_output=True, text=True,
                       timeout=60, cwd=official)  # fmt: skip
    assert r.returncode == 0, r.stderr
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    # where they connect (production endpoints) and in which order they sign in
    assert (theirs["job"], theirs["op"], theirs["iam"]) == (
        DATASPHERE_ENDPOINT, DATASPHERE_OPERATION_ENDPOINT, DEFAULT_IAM_ENDPOINT)  # fmt: skip
    assert theirs["order"] == [m.value for m in DEFAULT_ORDER]
    assert theirs["code"] == "UNIMPLEMENTED"
    official_call = recorder.calls[-1]

    creds = Credentials(env={"YC_IAM_TOKEN": "same-iam-token"})
    client = JobsClient(target, tls=True, ca_file=ca.ca_file, credentials=creds, retry_seconds=0.5)
    with client, pytest.raises(DsJobsError):
        client.get("dsjcompare")
    ours = recorder.calls[-1]
    assert (
        ours["method"] == official_call["method"] == "/yandex.cloud.datasphere.v2.jobs.ProjectJobService/Get"
    )
    assert ours["metadata"]["authorization"] == official_call["metadata"]["authorization"]
    assert official_call["metadata"]["authorization"] == "Bearer same-iam-token"
    assert official_call["metadata"]["x-client-version"].startswith("datasphere=")
    assert ours["metadata"]["x-client-version"].startswith("jupyter_ds_jobs/")
    assert {k for k in ours["metadata"] if not k.startswith(("user-agent", "grpc-"))} == {
        k for k in official_call["metadata"] if not k.startswith(("user-agent", "grpc-"))
    }
