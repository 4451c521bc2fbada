"""Hostile requests get a clear status (never UNKNOWN or INTERNAL) and cannot make a job fail
inside Execute: crafted page tokens, out-of-range lifetimes, undecodable bodies, parameters the
OS would refuse, oversized requests. Through the official SDK's stubs against a real server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from yandex.cloud.datasphere.v2 import project_service_pb2 as sdk_ps
from yandex.cloud.datasphere.v2.jobs import jobs_pb2 as J
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as P
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2_grpc as sdk_pjs_grpc
from yandex.cloud.operation import operation_service_pb2 as sdk_ops
from yandex.cloud.operation import operation_service_pb2_grpc as sdk_ops_grpc

from tests.jobhelpers import http

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
MAX_DURATION_S = 315_576_000_000


class Sdk:
    def __init__(self, server: Any) -> None:
        self.channel = grpc.insecure_channel(server.info.endpoint)
        self.jobs = sdk_pjs_grpc.ProjectJobServiceStub(self.channel)
        self.ops = sdk_ops_grpc.OperationServiceStub(self.channel)
        self.md = [("authorization", f"Bearer {server.info.token}")]

    def create(self, params: J.JobParameters, blobs: dict[str, bytes] | None = None, **req: Any) -> str:
        req.setdefault("project_id", "p")
        op = self.jobs.Create(P.CreateProjectJobRequest(job_parameters=params, **req), metadata=self.md)
        resp = P.CreateProjectJobResponse()
        assert op.done and op.response.Unpack(resp)
        for sf in resp.upload_files:
            status, body = http("PUT", sf.url, (blobs or {})[sf.file.desc.path])
            assert status == 201, body
        return str(resp.job_id)

    def run(self, job_id: str, timeout: float = 60) -> J.Job:
        op = self.jobs.Execute(P.ExecuteProjectJobRequest(job_id=job_id), metadata=self.md)
        deadline = time.monotonic() + timeout
        while not op.done:
            assert time.monotonic() < deadline
            time.sleep(0.02)
            op = self.ops.Get(sdk_ops.GetOperationRequest(operation_id=op.id), metadata=self.md)
        return self.get(job_id)

    def get(self, job_id: str) -> J.Job:
        return self.jobs.Get(P.GetProjectJobRequest(job_id=job_id), metadata=self.md)

    def error(self, call: Any, request: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            call(request, metadata=self.md, timeout=30)
        return e.value


@pytest.fixture
def sdk(server: Any) -> Iterator[Sdk]:
    s = Sdk(server)
    yield s
    s.channel.close()


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the server (ours, grpc's, asyncio's) at DEBUG and above."""
    caplog.set_level(logging.DEBUG)
    return caplog


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def _file(path: str, data: bytes, var: str = "", zipped: bool = False) -> J.File:
    return J.File(
        desc=J.FileDesc(path=path, var=var),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        compression_type=J.ZIP if zipped else J.NONE,
    )


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


# -- 1. page tokens --------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


CRAFTED_TOKENS = {
    "deeply nested json": _b64(b"[" * 100_000 + b"]" * 100_000),
    "huge number": _b64(json.dumps(["2020-01-01T00:00:00Z", 1]).replace("1]", "9" * 5000 + "]").encode()),
    "year past 9999": _b64(json.dumps(["99999-01-01T00:00:00Z", "x"]).encode()),
    "huge exponent": _b64(b'["2020-01-01T00:00:00Z", 1e999999]'),
    "not base64": "%%%",
    "non-ascii": "\u00e9\u00e9\u00e9\u00e9",
    "huge token": "A" * 100_000,
    "cursor past int64": _b64(b"9" * 25 + b":dsj0"),
}


@pytest.mark.parametrize("token", list(CRAFTED_TOKENS.values()), ids=list(CRAFTED_TOKENS))
def test_list_refuses_crafted_page_tokens(sdk: Sdk, server_log: Any, token: str) -> None:
    err = sdk.error(sdk.jobs.List, P.ListProjectJobRequest(project_id="p", page_token=token))
    assert err.code() == INVALID, err.details()
    assert "page_token" in err.details() and len(err.details()) < 200
    assert not tracebacks(server_log)


def test_page_tokens_still_page(sdk: Sdk) -> None:
    ids = [sdk.create(J.JobParameters(cmd="true")) for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = sdk.jobs.List(
            P.ListProjectJobRequest(project_id="p", page_size=2, page_token=token), metadata=sdk.md
        )
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


# -- 2. lifetimes past the Timestamp range ---------------------------------------------------------


def test_data_ttl_past_year_9999_means_never_expires(sdk: Sdk) -> None:
    longest = Duration(seconds=MAX_DURATION_S)
    job_id = sdk.create(J.JobParameters(cmd="true"), data_ttl=longest)
    assert not sdk.get(job_id).HasField("data_expires_at")
    clone = sdk.jobs.Clone(P.CloneProjectJobRequest(source_job_id=job_id, data_ttl=longest), metadata=sdk.md)
    resp = P.CloneProjectJobResponse()
    assert clone.response.Unpack(resp) and not sdk.get(resp.job_id).HasField("data_expires_at")
    sdk.jobs.SetDataTtl(
        P.SetProjectJobDataTtlRequest(job_id=job_id, ttl=Duration(seconds=60)), metadata=sdk.md
    )
    assert sdk.get(job_id).HasField("data_expires_at")
    sdk.jobs.SetDataTtl(P.SetProjectJobDataTtlRequest(job_id=job_id, ttl=longest), metadata=sdk.md)
    assert not sdk.get(job_id).HasField("data_expires_at")


@pytest.mark.parametrize(
    "ttl",
    [
        Duration(seconds=2**62),
        Duration(seconds=MAX_DURATION_S + 1),
        Duration(seconds=1, nanos=-5),
        Duration(seconds=0, nanos=2_000_000_000),
        Duration(seconds=-(2**62)),
    ],
    ids=["2**62", "past the Duration range", "mixed signs", "nanos over a second", "-2**62"],
)
def test_invalid_data_ttl_names_the_field(sdk: Sdk, server_log: Any, ttl: Duration) -> None:
    err = sdk.error(
        sdk.jobs.Create,
        P.CreateProjectJobRequest(project_id="p", job_parameters=J.JobParameters(cmd="true"), data_ttl=ttl),
    )
    assert err.code() == INVALID and "data_ttl" in err.details(), err.details()
    job_id = sdk.create(J.JobParameters(cmd="true"))
    err = sdk.error(sdk.jobs.Clone, P.CloneProjectJobRequest(source_job_id=job_id, data_ttl=ttl))
    assert err.code() == INVALID and "data_ttl" in err.details(), err.details()
    err = sdk.error(sdk.jobs.SetDataTtl, P.SetProjectJobDataTtlRequest(job_id=job_id, ttl=ttl))
    assert err.code() == INVALID and "ttl" in err.details(), err.details()
    assert not tracebacks(server_log)


def test_graceful_timeout_past_the_duration_range_is_refused(sdk: Sdk) -> None:
    gsp = J.GracefulShutdownParameters(timeout=Duration(seconds=2**62))
    err = sdk.error(
        sdk.jobs.Create,
        P.CreateProjectJobRequest(
            project_id="p", job_parameters=J.JobParameters(cmd="true", graceful_shutdown_parameters=gsp)
        ),
    )
    assert err.code() == INVALID and "graceful_shutdown_parameters.timeout" in err.details()


# -- 3. bodies that do not decode ------------------------------------------------------------------


def _methods() -> list[tuple[str, bool]]:
    """Every method the server implements: ProjectJobService, OperationService, ProjectService.Get."""
    out = []
    for module, name in ((P, "ProjectJobService"), (sdk_ops, "OperationService"), (sdk_ps, "ProjectService")):
        desc = module.DESCRIPTOR.services_by_name[name]
        out += [
            (f"/{desc.full_name}/{m.name}", m.server_streaming)
            for m in desc.methods
            if name != "ProjectService" or m.name == "Get"
        ]
    return out


@pytest.mark.parametrize(("method", "streaming"), _methods(), ids=[m for m, _ in _methods()])
def test_undecodable_body_is_invalid_argument(
    sdk: Sdk, server_log: Any, method: str, streaming: bool
) -> None:
    body = b"\x0a\x02\xff\xfe"  # field 1, 2 bytes of invalid UTF-8

    def call(metadata: list[tuple[str, str]]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            if streaming:
                list(sdk.channel.unary_stream(method)(body, metadata=metadata, timeout=10))
            else:
                sdk.channel.unary_unary(method)(body, metadata=metadata, timeout=10)
        return e.value

    err = call(sdk.md)
    assert err.code() == INVALID, (err.code(), err.details())
    assert err.details().startswith("cannot decode the request: ") and "\n" not in err.details()
    assert not tracebacks(server_log)
    assert call([]).code() == grpc.StatusCode.UNAUTHENTICATED  # the token is checked first


# -- 4. parameters the OS would refuse are refused at Create ----------------------------------------

BIG = "x" * 1_000_000


def _inp(path: str, var: str = "") -> J.File:
    return _file(path, b"data", var)


CREATE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("NUL in cmd", {"cmd": "echo a\x00b"}, "job_parameters.cmd"),
    (
        "NUL in an argument",
        {"cmd": "echo ${A}", "arguments": [J.Argument(name="A", value="a\x00b")]},
        "job_parameters.arguments[0].value",
    ),
    (
        "NUL in an env var",
        {"cmd": "true", "env": J.Environment(vars={"V": "a\x00b"})},
        "job_parameters.env.vars",
    ),
    (
        "NUL in an input path with a var",
        {"cmd": "cat ${D}", "input_files": [_inp("/abs/a\x00b", "D")]},
        "job_parameters.input_files[0].desc.path",
    ),
    (
        "NUL in an output path with a var",
        {"cmd": "true ${O}", "output_files": [J.FileDesc(path="/abs/o\x00", var="O")]},
        "job_parameters.output_files[0].path",
    ),
    ("1 MB cmd", {"cmd": "echo " + BIG}, "job_parameters.cmd"),
    (
        "1 MB argument",
        {"cmd": "echo ${A}", "arguments": [J.Argument(name="A", value=BIG)]},
        "job_parameters.arguments[0].value",
    ),
    ("1 MB env var", {"cmd": "true", "env": J.Environment(vars={"V": BIG})}, "job_parameters.env.vars"),
    (
        "an argument repeated past the OS limit",
        {"cmd": "echo" + " ${A}" * 40, "arguments": [J.Argument(name="A", value="y" * 60_000)]},
        "job_parameters.cmd",
    ),
    (
        "env vars together past the OS limit",
        {"cmd": "true", "env": J.Environment(vars={f"V{i}": "z" * 60_000 for i in range(10)})},
        "job_parameters",
    ),
    (
        "a path segment over 255 bytes",
        {"cmd": "true", "input_files": [_inp("d/" + "n" * 256)]},
        "job_parameters.input_files[0].desc.path",
    ),
    (
        "a file name over 255 bytes with a var",
        {"cmd": "cat ${D}", "input_files": [_inp("/abs/" + "n" * 256, "D")]},
        "job_parameters.input_files[0].desc.path",
    ),
    (
        "a path over the limit",
        {"cmd": "true", "output_files": [J.FileDesc(path="/".join(["d" * 200] * 30))]},
        "job_parameters.output_files[0].path",
    ),
    (
        "an input below an input file",
        {"cmd": "true", "input_files": [_inp("in.txt"), _file("in.txt/sub", b"other")]},
        "job_parameters.input_files[1].desc.path",
    ),
    (
        "an output below an input file",
        {"cmd": "true", "input_files": [_inp("in.txt")], "output_files": [J.FileDesc(path="in.txt/sub")]},
        "job_parameters.output_files[0].path",
    ),
    (
        "the same input twice, spelled differently",
        {"cmd": "true", "input_files": [_inp("a/b"), _file("a//b/", b"other")]},
        "job_parameters.input_files[1]",
    ),
    (
        "an input path ending in '..' with a var",
        {"cmd": "cat ${D}", "input_files": [_inp("a/..", "D")]},
        "job_parameters.input_files[0].desc.path",
    ),
    (
        "an output path ending in '..' with a var",
        {"cmd": "true ${O}", "output_files": [J.FileDesc(path="/x/..", var="O")]},
        "job_parameters.output_files[0].path",
    ),
    (
        "a 1 MB python version",
        {"cmd": "true", "env": J.Environment(python_env=J.PythonEnv(python_version=BIG))},
        "job_parameters.env.python_env.python_version",
    ),
]


@pytest.mark.parametrize(("what", "params", "field"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
def test_create_refuses_what_execute_could_not_run(
    sdk: Sdk, server_log: Any, what: str, params: dict[str, Any], field: str
) -> None:
    err = sdk.error(
        sdk.jobs.Create, P.CreateProjectJobRequest(project_id="p", job_parameters=J.JobParameters(**params))
    )
    assert err.code() == INVALID, (err.code(), err.details()[:300])
    assert field in err.details() and len(err.details()) < 500, err.details()[:300]
    assert not tracebacks(server_log)


@pytest.mark.parametrize(
    ("what", "create"),
    [
        (
            "a ZIP input",
            lambda data: (J.JobParameters(cmd="ls", input_files=[_file("d", data, zipped=True)]), "d"),
        ),
        (
            "a local module",
            lambda data: (
                J.JobParameters(
                    cmd="ls",
                    env=J.Environment(
                        python_env=J.PythonEnv(
                            local_modules=[_file("/tmp/x/m.zip", data, "_LOCAL_MODULE_0", True)]
                        )
                    ),
                ),
                "/tmp/x/m.zip",
            ),
        ),
    ],
)
def test_execute_refuses_a_zip_that_is_not_one(sdk: Sdk, server_log: Any, what: str, create: Any) -> None:
    for data in (b"this is not a zip", _zip({"a.txt": b"a"})[:-30]):
        params, path = create(data)
        job_id = sdk.create(params, {path: data})
        err = sdk.error(sdk.jobs.Execute, P.ExecuteProjectJobRequest(job_id=job_id))
        assert err.code() == PRECONDITION, err.details()
        assert f"ZIP archive {path!r} cannot be extracted: " in err.details(), err.details()
        assert sdk.get(job_id).status == J.CREATING
    assert not tracebacks(server_log)


@pytest.mark.parametrize(
    ("module", "inputs", "outputs", "needle"),
    [
        ({"in.txt/": b""}, ["in.txt"], [], "would be a directory where the input file 'in.txt' goes"),
        ({"in.txt/sub/keep": b"k"}, ["in.txt"], [], "would be inside the input file 'in.txt'"),
        ({"d": b"a file"}, ["d/in.txt"], [], "'d' is a file where 'd/in.txt' needs a directory"),
        ({"o": b"a file"}, [], ["o/out.txt"], "'o' is a file where 'o/out.txt' needs a directory"),
    ],
)
def test_execute_refuses_a_module_that_collides_with_an_input_or_output(
    sdk: Sdk, server_log: Any, module: dict[str, bytes], inputs: list[str], outputs: list[str], needle: str
) -> None:
    zipped = _zip(module)
    params = J.JobParameters(
        cmd="true",
        input_files=[_file(p, b"data") for p in inputs],
        output_files=[J.FileDesc(path=p) for p in outputs],
        env=J.Environment(python_env=J.PythonEnv(local_modules=[_file("/tmp/m.zip", zipped, "", True)])),
    )
    job_id = sdk.create(params, {**{p: b"data" for p in inputs}, "/tmp/m.zip": zipped})
    err = sdk.error(sdk.jobs.Execute, P.ExecuteProjectJobRequest(job_id=job_id))
    assert err.code() == PRECONDITION and "'/tmp/m.zip'" in err.details() and needle in err.details(), (
        err.details()
    )
    assert not tracebacks(server_log)


def test_an_exception_that_ends_a_job_is_reported_by_class_and_message(sdk: Sdk, server_log: Any) -> None:
    # the central directory is fine, the data is not: only extraction can tell
    good = _zip({"a.txt": b"hello"})
    corrupt = good.replace(b"hello", b"jello", 1)
    params = J.JobParameters(cmd="true", input_files=[_file("d", corrupt, zipped=True)])
    job = sdk.run(sdk.create(params, {"d": corrupt}))
    assert job.status == J.ERROR
    assert job.status_details == "BadZipFile: Bad CRC-32 for file 'a.txt'", job.status_details
    assert not tracebacks(server_log)


def test_create_refuses_project_ids_that_are_not_one_path_segment(sdk: Sdk) -> None:
    for project in ("../../etc", "a/b", "..", "p\x00", "p" * 300):
        err = sdk.error(
            sdk.jobs.Create,
            P.CreateProjectJobRequest(
                project_id=project, job_parameters=J.JobParameters(cmd="true", attach_project_disk=True)
            ),
        )
        assert err.code() == INVALID and "project_id" in err.details(), (project, err.details())


def test_long_ids_are_not_echoed_whole(sdk: Sdk) -> None:
    err = sdk.error(sdk.jobs.Get, P.GetProjectJobRequest(job_id="j" * 100_000))
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) < 300
    err = sdk.error(sdk.ops.Get, sdk_ops.GetOperationRequest(operation_id="o" * 100_000))
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) < 300


# -- 13. what one request may hold -----------------------------------------------------------------


def test_a_request_over_4_mib_is_refused_before_it_is_parsed(sdk: Sdk) -> None:
    req = P.CreateProjectJobRequest(
        project_id="p", job_parameters=J.JobParameters(cmd="true"), config="c" * (5 << 20)
    )
    assert sdk.error(sdk.jobs.Create, req).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("config", {"config": "c" * (300 << 10)}),
        ("desc", {"desc": "d" * (100 << 10)}),
        ("name", {"name": "n" * 2000}),
    ],
)
def test_create_caps_its_strings(sdk: Sdk, field: str, request_fields: dict[str, str]) -> None:
    req = P.CreateProjectJobRequest(
        project_id="p", job_parameters=J.JobParameters(cmd="true"), **request_fields
    )
    err = sdk.error(sdk.jobs.Create, req)
    assert err.code() == INVALID and err.details().startswith(f"{field}: "), err.details()[:200]


def test_list_pages_stay_under_the_clients_4_mib(sdk: Sdk) -> None:
    config = "c" * (250 << 10)
    ids = [sdk.create(J.JobParameters(cmd="true"), config=config) for _ in range(24)]  # 6 MB of jobs
    seen: list[str] = []
    token = ""
    while True:  # the SDK's channel keeps grpc's default 4 MiB receive limit
        page = sdk.jobs.List(P.ListProjectJobRequest(project_id="p", page_token=token), metadata=sdk.md)
        assert 0 < page.ByteSize() < 4 << 20
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)


def test_cancel_reason_is_capped(sdk: Sdk) -> None:
    job_id = sdk.create(J.JobParameters(cmd="true"))
    err = sdk.error(sdk.jobs.Cancel, P.CancelProjectJobRequest(job_id=job_id, reason="r" * 100_000))
    assert err.code() == INVALID and "reason" in err.details()
