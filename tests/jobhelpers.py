"""Small helpers for tests that talk to the server with the raw stubs."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
import urllib.request
import zipfile
from typing import Any

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, ops_grpc, ops_pb2, pjs_grpc, pjs_pb2


def http(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    return buf.getvalue()


def file_msg(path: str, data: bytes, var: str = "", zipped: bool = False) -> jobs_pb2.File:
    return jobs_pb2.File(
        desc=jobs_pb2.FileDesc(path=path, var=var),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        compression_type=jobs_pb2.ZIP if zipped else jobs_pb2.NONE,
    )


class Api:
    """The two stubs plus the token, over one channel."""

    def __init__(self, channel: Any, token: str) -> None:
        self.jobs = pjs_grpc.ProjectJobServiceStub(channel)
        self.ops = ops_grpc.OperationServiceStub(channel)
        self.md = [("authorization", f"Bearer {token}")]

    def create(
        self,
        cmd: str,
        inputs: dict[str, tuple[bytes, str]] | None = None,
        outputs: list[tuple[str, str]] | None = None,
        *,
        project: str = "proj",
        upload: bool = True,
        modules: dict[str, bytes] | None = None,
        **params: Any,
    ) -> str:
        p = jobs_pb2.JobParameters(cmd=cmd, **params)
        blobs: dict[str, bytes] = {}
        for path, (data, var) in (inputs or {}).items():
            p.input_files.append(file_msg(path, data, var))
            blobs[path] = data
        if modules:
            data = zip_bytes(modules)
            p.env.python_env.local_modules.append(
                file_msg("/tmp/x/mods.zip", data, "_LOCAL_MODULE_0", zipped=True)
            )
            blobs["/tmp/x/mods.zip"] = data
        for path, var in outputs or []:
            p.output_files.add(path=path, var=var)
        op = self.jobs.Create(
            pjs_pb2.CreateProjectJobRequest(project_id=project, job_parameters=p), metadata=self.md
        )
        resp = pjs_pb2.CreateProjectJobResponse()
        assert op.done and op.response.Unpack(resp)
        if upload:
            for sf in resp.upload_files:
                status, body = http("PUT", sf.url, blobs[sf.file.desc.path])
                assert status == 201, body
        return resp.job_id

    def execute(self, job_id: str) -> op_pb2.Operation:
        return self.jobs.Execute(pjs_pb2.ExecuteProjectJobRequest(job_id=job_id), metadata=self.md)

    def wait(self, op: op_pb2.Operation, timeout: float = 60) -> op_pb2.Operation:
        deadline = time.monotonic() + timeout
        while not op.done:
            assert time.monotonic() < deadline, f"operation {op.id} not done in {timeout}s"
            time.sleep(0.02)
            op = self.ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=self.md)
        return op

    def run(self, job_id: str, timeout: float = 60) -> tuple[jobs_pb2.Job, op_pb2.Operation]:
        op = self.wait(self.execute(job_id), timeout)
        return self.get(job_id), op

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self.jobs.Get(pjs_pb2.GetProjectJobRequest(job_id=job_id), metadata=self.md)

    def logs(self, job_id: str, offset: int = 0) -> list[tuple[str, bytes]]:
        out = []
        for resp in self.jobs.ReadLogs(
            pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id, offset=offset), metadata=self.md
        ):
            for m in resp.logs:
                src = (
                    m.file_path
                    if m.WhichOneof("source") == "file_path"
                    else pjs_pb2.StandardStream.Name(m.standard_stream)
                )
                out.append((src, m.content))
        return out

    def wait_status(self, job_id: str, statuses: set[int], timeout: float = 30) -> jobs_pb2.Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status in statuses:
                return job
            assert time.monotonic() < deadline, f"job stuck in {jobs_pb2.JobStatus.Name(job.status)}"
            time.sleep(0.02)


def execute_response(op: op_pb2.Operation) -> pjs_pb2.ExecuteProjectJobResponse:
    r = pjs_pb2.ExecuteProjectJobResponse()
    assert op.response.Unpack(r), op
    return r
