"""End to end with the official yandexcloud SDK's own stubs as the client."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import grpc
import pytest
from yandex.cloud.datasphere.v2.jobs import jobs_pb2 as sdk_jobs
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as sdk_pjs
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2_grpc as sdk_pjs_grpc
from yandex.cloud.operation import operation_service_pb2 as sdk_ops
from yandex.cloud.operation import operation_service_pb2_grpc as sdk_ops_grpc

from tests.jobhelpers import http


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_official_sdk_client_full_round_trip(server) -> None:  # type: ignore[no-untyped-def]
    md = [("authorization", f"Bearer {server.info.token}"), ("x-client-version", "datasphere==0.10.0")]
    ch = grpc.insecure_channel(server.info.endpoint)
    jobs = sdk_pjs_grpc.ProjectJobServiceStub(ch)
    ops = sdk_ops_grpc.OperationServiceStub(ch)

    data = b"3\n4\n5\n"
    # The official client ships the entry script and local packages as ZIPs with absolute temp paths.
    module = _zip(
        {
            "main.py": "import sys\nfrom mypkg.calc import total\nn = total(open(sys.argv[1]))\n"
            "open(sys.argv[2], 'w').write(f'sum={n}\\n')\nprint('done', n)\nprint('warn', file=sys.stderr)\n",
            "mypkg/__init__.py": "",
            "mypkg/calc.py": "def total(lines):\n    return sum(int(x) for x in lines)\n",
        }
    )
    params = sdk_jobs.JobParameters(cmd="python main.py ${DATA} ${OUT}")
    params.input_files.add(
        desc=sdk_jobs.FileDesc(path="data/numbers.txt", var="DATA"),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        compression_type=sdk_jobs.NONE,
    )
    params.env.python_env.local_modules.add(
        desc=sdk_jobs.FileDesc(path="/tmp/tmpabc/main.zip", var="_LOCAL_MODULE_0"),
        sha256=hashlib.sha256(module).hexdigest(),
        size_bytes=len(module),
        compression_type=sdk_jobs.ZIP,
    )
    params.output_files.add(path="result.txt", var="OUT")
    params.cloud_instance_types.add(name="c1.4")
    op = jobs.Create(
        sdk_pjs.CreateProjectJobRequest(project_id="p1", job_parameters=params, name="e2e"), metadata=md
    )
    while not op.done:
        op = ops.Get(sdk_ops.GetOperationRequest(operation_id=op.id), metadata=md)
    created = sdk_pjs.CreateProjectJobResponse()
    assert op.response.Unpack(created)
    by_path = {sf.file.desc.path: sf.url for sf in created.upload_files}
    # desc.path is echoed exactly as sent, the absolute temp path included
    assert set(by_path) == {"data/numbers.txt", "/tmp/tmpabc/main.zip"}
    assert http("PUT", by_path["data/numbers.txt"], data)[0] == 201
    assert http("PUT", by_path["/tmp/tmpabc/main.zip"], module)[0] == 201

    op = jobs.Execute(sdk_pjs.ExecuteProjectJobRequest(job_id=created.job_id), metadata=md)
    meta = sdk_pjs.ExecuteProjectJobMetadata()
    assert op.metadata.Unpack(meta)
    assert meta.job.id == created.job_id and meta.job.project_id == "p1"  # the deprecated field the CLI reads
    assert meta.metadata.id == created.job_id

    out, err, system = b"", b"", b""
    for resp in jobs.ReadLogs(
        sdk_pjs.ReadProjectJobLogsRequest(job_id=created.job_id, offset=0), metadata=md
    ):
        for m in resp.logs:
            if m.WhichOneof("source") == "file_path":
                assert m.file_path == ".system.log"
                system += m.content
            elif m.standard_stream == sdk_pjs.OUT:
                out += m.content
            else:
                err += m.content
    assert out == b"done 12\n"
    assert err == b"warn\n"
    assert b"process exited with code 0" in system

    deadline = time.monotonic() + 30
    while not op.done and time.monotonic() < deadline:
        time.sleep(0.05)
        op = ops.Get(sdk_ops.GetOperationRequest(operation_id=op.id), metadata=md)
    result = sdk_pjs.ExecuteProjectJobResponse()
    assert op.response.Unpack(result)
    assert result.HasField("result") and result.result.return_code == 0
    assert [f.file.desc.path for f in result.output_files] == ["result.txt"]
    status, body = http("GET", result.output_files[0].url)
    assert status == 200 and body == b"sum=12\n"
    assert hashlib.sha256(body).hexdigest() == result.output_files[0].file.sha256

    job = jobs.Get(sdk_pjs.GetProjectJobRequest(job_id=created.job_id), metadata=md)
    assert job.status == sdk_jobs.SUCCESS
    assert job.actual_cloud_instance_type.name == "c1.4"
    assert job.HasField("started_at") and job.HasField("finished_at")
    assert {f.desc.path for f in job.log_files} == {"stdout.log", "stderr.log"}

    # DownloadJobFiles hands out a fresh signed URL for a named file
    dl = jobs.DownloadJobFiles(
        sdk_pjs.DownloadProjectJobFilesRequest(job_id=job.id, files=[job.output_files[0]]), metadata=md
    )
    assert http("GET", dl.download_files[0].url)[1] == b"sum=12\n"

    # A second job with the same content uploads nothing
    op = jobs.Create(sdk_pjs.CreateProjectJobRequest(project_id="p1", job_parameters=params), metadata=md)
    again = sdk_pjs.CreateProjectJobResponse()
    assert op.response.Unpack(again)
    assert list(again.upload_files) == []


@pytest.mark.parametrize("token", [None, "wrong"])
def test_every_rpc_needs_the_bearer_token(server, token) -> None:  # type: ignore[no-untyped-def]
    ch = grpc.insecure_channel(server.info.endpoint)
    jobs = sdk_pjs_grpc.ProjectJobServiceStub(ch)
    md = [("authorization", f"Bearer {token}")] if token else []
    with pytest.raises(grpc.RpcError) as e:
        jobs.List(sdk_pjs.ListProjectJobRequest(project_id="p"), metadata=md)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        list(jobs.ReadLogs(sdk_pjs.ReadProjectJobLogsRequest(job_id="x"), metadata=md))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ops = sdk_ops_grpc.OperationServiceStub(ch)
    with pytest.raises(grpc.RpcError) as e:
        ops.Get(sdk_ops.GetOperationRequest(operation_id="x"), metadata=md)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_official_project_service_get_as_the_cli_calls_it(server) -> None:  # type: ignore[no-untyped-def]
    from yandex.cloud.datasphere.v2 import project_service_pb2 as sdk_ps
    from yandex.cloud.datasphere.v2 import project_service_pb2_grpc as sdk_ps_grpc

    md = [("authorization", f"Bearer {server.info.token}")]
    stub = sdk_ps_grpc.ProjectServiceStub(grpc.insecure_channel(server.info.endpoint))
    project = stub.Get(sdk_ps.GetProjectRequest(project_id="p42"), metadata=md)
    assert project.id == "p42" and project.community_id and project.HasField("created_at")
    with pytest.raises(grpc.RpcError) as e:
        stub.Get(sdk_ps.GetProjectRequest(), metadata=md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:  # the rest of ProjectService is not served locally
        stub.List(sdk_ps.ListProjectsRequest(community_id="c"), metadata=md)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
