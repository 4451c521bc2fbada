"""Hostile requests for every RPC of the local job server (hypothesis strategies) and a
:class:`Fuzzer` that sends them through the official SDK's messages and counts the answers.

Used by ``tests/test_fuzz_service.py`` (bounded, in-process server) and
``benchmarks/fuzz_service.py`` (10,000 requests against a server process, with its RSS).

What is generated: strings with NUL, lone surrogates (sent as the invalid UTF-8 they encode to:
a string field cannot hold one, so :data:`MARK` stands in and is patched into the wire bytes),
64 KiB to 1 MB, path traversal, shell syntax; extreme int64s and Durations; duplicate names;
thousands of files; raw bodies that do not decode; jobs with one hostile field each that are
uploaded, executed and waited for. A bad answer is UNKNOWN, INTERNAL, a deadline passed on a call
that must answer, or a job that ends with an exception's class in its ``status_details``.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from hypothesis import strategies as st
from yandex.cloud.datasphere.v2 import project_service_pb2 as PS
from yandex.cloud.datasphere.v2.jobs import jobs_pb2 as J
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as P
from yandex.cloud.operation import operation_pb2 as O
from yandex.cloud.operation import operation_service_pb2 as OS

from jupyter_ds_jobs._proto import pjs_pb2  # Finalize: legacy, not in the SDK (same wire)

__all__ = ["MARK", "Fuzzer", "hostile_text", "raw_bodies", "rpc_requests"]

#: Stands for a lone surrogate in a generated string; its UTF-8 becomes a surrogate's on the wire.
MARK = "\ue000"
_MARK_BYTES = MARK.encode()
_SURROGATE_BYTES = "\ud800".encode("utf-8", "surrogatepass")

PJS = "/yandex.cloud.datasphere.v2.jobs.ProjectJobService/"
OPS = "/yandex.cloud.operation.OperationService/"
PROJECT_GET = "/yandex.cloud.datasphere.v2.ProjectService/Get"
STREAMING = {PJS + "ReadLogs", PJS + "ReadStdLogs"}
METHODS = [
    *(
        PJS + m
        for m in (
            "Create",
            "Clone",
            "Execute",
            "Cancel",
            "Finalize",
            "ReadStdLogs",
            "ReadLogs",
            "DownloadJobFiles",
            "List",
            "Get",
            "Delete",
            "DeleteData",
            "DeleteAllData",
            "SetDataTtl",
        )
    ),
    OPS + "Get",
    OPS + "Cancel",
    PROJECT_GET,
]
#: Answers that are never right.
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

SAMPLES = [
    "", "\x00", "a\x00b", "..", ".", "/", "a/..", "../../etc/passwd", "/etc/passwd", "a//b/", "./a",
    "in.txt/sub", "~root", "$(touch pwned)", "`id`", "'; echo x; '", '"', "\\", "\n", "a b", "é",
    "\U0001f600", "x" * 255, "x" * 256, "a/" * 600, "-1", "9" * 30, "DS_PROJECT_HOME", MARK, "a" + MARK,
]  # fmt: skip
BIG_SIZES = [4097, 65_536, 65_537, 131_072, 1_000_000]

hostile_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(SAMPLES),
    st.text(max_size=30),
    st.text(
        alphabet=st.sampled_from(["a", "/", ".", "\x00", "$", "'", '"', "`", " ", "\n", "é", MARK]),
        max_size=30,
    ),
    st.builds(lambda n, c: c * n, st.sampled_from(BIG_SIZES), st.sampled_from(["x", "é", "/", "\x00", "'"])),
)
names = st.one_of(st.sampled_from(["A", "B", "IN", "OUT", "V", "_LOCAL_MODULE_0", "x" * 51]), hostile_text)
int64s = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31), 2**62, 2**63 - 1, -(2**63), 315_576_000_000]),
    st.integers(-(2**63), 2**63 - 1),
)
int32s = st.one_of(
    st.sampled_from([0, -1, 999_999_999, 10**9, -(2**31), 2**31 - 1]), st.integers(-(2**31), 2**31 - 1)
)
durations = st.builds(Duration, seconds=int64s, nanos=int32s)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


_GOOD_ZIP = _zip({"mod.py": b"X = 1\n"})
_ENCRYPTED = bytearray(_GOOD_ZIP)
_ENCRYPTED[6] |= 1  # the local header's flag: encrypted
_CD = bytes(_ENCRYPTED).rfind(b"PK\x01\x02")
_ENCRYPTED[_CD + 8] |= 1  # and the central directory's
ZIP_CONTENTS = [
    _GOOD_ZIP,
    b"not a zip",
    b"",
    _GOOD_ZIP[:-30],
    _GOOD_ZIP[:20],
    bytes(_ENCRYPTED),
    _GOOD_ZIP.replace(b"mod.py", b"../x.py"),
    _zip({"in.txt/keep": b"k"}),
]
zip_contents = st.one_of(st.sampled_from(ZIP_CONTENTS), st.binary(max_size=64))


def file_msg(path: str, data: bytes, var: str = "", zipped: bool = False) -> J.File:
    return J.File(
        desc=J.FileDesc(path=path, var=var),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        compression_type=J.ZIP if zipped else J.NONE,
    )


# -- requests for every RPC ----------------------------------------------------------------------


@st.composite
def job_parameters(draw: st.DrawFn) -> J.JobParameters:
    """Parameters with hostile pieces anywhere (sent to Create and Clone, never executed)."""
    p = J.JobParameters(
        cmd=draw(st.one_of(st.sampled_from(["true", "echo ${A}", "cat ${IN}"]), hostile_text))
    )
    for name in draw(st.lists(names, max_size=3)):
        p.arguments.add(name=name, value=draw(hostile_text))
    for name in draw(st.lists(names, max_size=2)):
        p.env.vars[name] = draw(hostile_text)
    for path in draw(st.lists(hostile_text, max_size=3)):
        p.input_files.append(file_msg(path, draw(st.binary(max_size=8)), draw(st.one_of(st.just(""), names))))
    for path in draw(st.lists(hostile_text, max_size=3)):
        p.output_files.add(path=path, var=draw(st.one_of(st.just(""), names)))
    many = draw(st.sampled_from([0, 0, 0, 101, 3000]))
    p.input_files.extend(file_msg(f"f{i}", b"%d" % i) for i in range(many))
    if draw(st.booleans()):
        p.env.python_env.python_version = draw(st.one_of(st.sampled_from(["", "3.11", "2.7"]), hostile_text))
        p.env.python_env.requirements.extend(draw(st.lists(hostile_text, max_size=2)))
    if draw(st.booleans()):
        p.graceful_shutdown_parameters.signal = draw(int64s)
        p.graceful_shutdown_parameters.timeout.CopyFrom(draw(durations))
    p.attach_project_disk = draw(st.booleans())
    p.cloud_instance_types.extend(
        J.CloudInstanceType(name=n) for n in draw(st.lists(hostile_text, max_size=2))
    )
    p.extended_working_storage.size_gb = draw(int64s)
    return p


def rpc_requests(fz: Fuzzer) -> st.SearchStrategy[tuple[str, Message]]:
    """(method, request) for every RPC; ids are mostly the fuzzer's own jobs and operations."""
    job = st.one_of(st.integers(0, 999).map(fz.pick_job), hostile_text)
    final_job = st.one_of(st.integers(0, 999).map(fz.pick_final_job), hostile_text)
    op = st.one_of(st.integers(0, 999).map(fz.pick_op), hostile_text)
    project = st.one_of(st.just("fz"), hostile_text)
    ttl = st.one_of(st.none(), durations)
    files = st.lists(
        st.builds(
            lambda p, v, s: J.File(desc=J.FileDesc(path=p, var=v), sha256=s),
            hostile_text,
            names,
            hostile_text,
        ),
        max_size=3,
    )

    def with_ttl(msg: Message, field: str, value: Duration | None) -> Message:
        if value is not None:
            getattr(msg, field).CopyFrom(value)
        return msg

    return st.one_of(
        st.builds(
            lambda pr, p, n, d, c, t: (
                PJS + "Create",
                with_ttl(
                    P.CreateProjectJobRequest(project_id=pr, job_parameters=p, name=n, desc=d, config=c),
                    "data_ttl",
                    t,
                ),
            ),
            project,
            job_parameters(),
            hostile_text,
            hostile_text,
            hostile_text,
            ttl,
        ),
        st.builds(
            lambda j, p, n, t: (
                PJS + "Clone",
                with_ttl(
                    P.CloneProjectJobRequest(source_job_id=j, job_parameters_overrides=p, name=n),
                    "data_ttl",
                    t,
                ),
            ),
            job,
            job_parameters(),
            hostile_text,
            ttl,
        ),
        st.builds(lambda j: (PJS + "Execute", P.ExecuteProjectJobRequest(job_id=j)), job),
        st.builds(
            lambda j, g, r: (PJS + "Cancel", P.CancelProjectJobRequest(job_id=j, graceful=g, reason=r)),
            job,
            st.booleans(),
            hostile_text,
        ),
        st.builds(lambda j: (PJS + "Finalize", pjs_pb2.FinalizeProjectJobRequest(job_id=j)), job),
        st.builds(
            lambda j, o: (PJS + "ReadLogs", P.ReadProjectJobLogsRequest(job_id=j, offset=o)),
            final_job,
            int64s,
        ),
        st.builds(
            lambda j, o: (PJS + "ReadStdLogs", P.ReadProjectJobStdLogsRequest(job_id=j, offset=o)),
            final_job,
            int64s,
        ),
        st.builds(
            lambda j, f, n: (
                PJS + "DownloadJobFiles",
                P.DownloadProjectJobFilesRequest(
                    job_id=j, files=f + [J.File(desc=J.FileDesc(path=f"f{i}")) for i in range(n)]
                ),
            ),
            job,
            files,
            st.sampled_from([0, 0, 0, 1000, 5000]),
        ),
        st.builds(
            lambda pr, s, t, f: (
                PJS + "List",
                P.ListProjectJobRequest(project_id=pr, page_size=s, page_token=t, filter=f),
            ),
            project,
            int64s,
            st.one_of(st.just(""), hostile_text),
            st.one_of(st.just(""), hostile_text),
        ),
        st.builds(lambda j: (PJS + "Get", P.GetProjectJobRequest(job_id=j)), job),
        st.builds(lambda j: (PJS + "Delete", P.DeleteProjectJobRequest(job_id=j)), job),
        st.builds(lambda j: (PJS + "DeleteData", P.DeleteProjectJobDataRequest(job_id=j)), job),
        st.builds(
            lambda pr: (PJS + "DeleteAllData", P.DeleteAllProjectJobDataRequest(project_id=pr)), project
        ),
        st.builds(
            lambda j, t: (PJS + "SetDataTtl", with_ttl(P.SetProjectJobDataTtlRequest(job_id=j), "ttl", t)),
            job,
            ttl,
        ),
        st.builds(lambda o: (OPS + "Get", OS.GetOperationRequest(operation_id=o)), op),
        st.builds(lambda o: (OPS + "Cancel", OS.CancelOperationRequest(operation_id=o)), op),
        st.builds(lambda pr: (PROJECT_GET, PS.GetProjectRequest(project_id=pr)), project),
    )


#: Raw bodies: random bytes, and a string field holding invalid UTF-8.
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda field, payload: bytes([field << 3 | 2, len(payload)]) + payload,
        st.integers(1, 15),
        st.one_of(st.just(b"\xff\xfe"), st.just(_SURROGATE_BYTES), st.binary(min_size=1, max_size=20)),
    ),
)


# -- jobs with one hostile field, executed -------------------------------------------------------

BASE_CMD = "cat ${IN} > ${OUT} && echo ${A} && printenv V"
MUTATIONS = [
    "cmd", "argument value", "argument name", "env name", "env value", "input path", "input path without var",
    "input var", "second input", "output path", "output path without var", "zip input", "local module",
    "signal", "timeout", "project", "name", "desc", "config", "data_ttl", "instance type", "many inputs",
    "many outputs", "python version",
]  # fmt: skip


@st.composite
def hostile_jobs(draw: st.DrawFn) -> tuple[str, P.CreateProjectJobRequest, dict[str, bytes]]:
    """(mutation, a Create of a runnable job with that one field hostile, the files to upload)."""
    what = draw(st.sampled_from(MUTATIONS))
    h = draw(hostile_text)
    data = b"data\n"
    req = P.CreateProjectJobRequest(project_id="fz")
    p = req.job_parameters  # a reference: the constructor would copy
    p.cmd = BASE_CMD
    p.arguments.add(name="A", value="hello")
    p.env.vars["V"] = "v"
    p.input_files.append(file_msg("in.txt", data, "IN"))
    p.output_files.add(path="out.txt", var="OUT")
    blobs = {"in.txt": data}
    inp, out = p.input_files[0], p.output_files[0]
    simple: dict[str, Callable[[], Any]] = {
        "cmd": lambda: setattr(p, "cmd", "echo " + shlex.quote(h)),
        "argument value": lambda: setattr(p.arguments[0], "value", h),
        "argument name": lambda: setattr(p.arguments[0], "name", h),
        "env name": lambda: p.env.vars.update({h: "v"}),
        "env value": lambda: p.env.vars.update({"V": h}),
        "input var": lambda: setattr(inp.desc, "var", h),
        "output path": lambda: setattr(out, "path", h),
        "output path without var": lambda: p.output_files.add(path=h),
        "signal": lambda: setattr(p.graceful_shutdown_parameters, "signal", draw(int64s)),
        "timeout": lambda: p.graceful_shutdown_parameters.timeout.CopyFrom(draw(durations)),
        "project": lambda: setattr(req, "project_id", h),
        "name": lambda: setattr(req, "name", h),
        "desc": lambda: setattr(req, "desc", h),
        "config": lambda: setattr(req, "config", h),
        "data_ttl": lambda: req.data_ttl.CopyFrom(draw(durations)),
        "instance type": lambda: p.cloud_instance_types.add(name=h),
        "many outputs": lambda: p.output_files.extend(J.FileDesc(path=f"o{i}") for i in range(draw(st.sampled_from([99, 101, 3000])))),
        "python version": lambda: setattr(p.env.python_env, "python_version", h),
    }  # fmt: skip
    if what in simple:
        simple[what]()
    elif what in ("input path", "input path without var"):
        inp.desc.path = h
        if what == "input path without var":
            inp.desc.var = ""
            p.cmd = "cat in.txt > ${OUT}"
        blobs = {h: data}
    elif what == "second input":
        other = draw(st.binary(max_size=8))
        p.input_files.append(file_msg(h, other))
        blobs[h] = other
    elif what in ("zip input", "local module"):
        content = draw(zip_contents)
        if what == "zip input":
            p.input_files.append(file_msg("d", content, zipped=True))
            blobs["d"] = content
        else:
            p.env.python_env.local_modules.append(
                file_msg("/tmp/m.zip", content, "_LOCAL_MODULE_0", zipped=True)
            )
            blobs["/tmp/m.zip"] = content
    elif what == "many inputs":
        n = draw(st.sampled_from([98, 101, 3000]))
        p.input_files.extend(file_msg(f"f{i}", b"%d" % i) for i in range(n))
        blobs.update({f"f{i}": b"%d" % i for i in range(n)})
    return what, req, blobs


# -- sending and counting ------------------------------------------------------------------------


class Fuzzer:
    """Sends requests over one channel with the token; counts answers by status code."""

    def __init__(self, endpoint: str, token: str, timeout: float = 20.0) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.md = [("authorization", f"Bearer {token}")]
        self.timeout = timeout
        self.codes: Counter[str] = Counter()
        self.job_ends: Counter[str] = Counter()
        self.bad: list[str] = []
        self.exceptions: list[str] = []  # status_details of jobs that ended with an exception
        self.jobs: list[str] = []
        self.final_jobs: list[str] = []
        self.ops: list[str] = []

    def close(self) -> None:
        self.channel.close()

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    def pick_job(self, i: int) -> str:
        return self.jobs[i % len(self.jobs)] if self.jobs else ""

    def pick_final_job(self, i: int) -> str:
        return self.final_jobs[i % len(self.final_jobs)] if self.final_jobs else ""

    def pick_op(self, i: int) -> str:
        return self.ops[i % len(self.ops)] if self.ops else ""

    def call(self, method: str, request: Message | bytes) -> tuple[grpc.StatusCode, bytes | list[bytes], str]:
        """Send ``request`` (lone surrogates patched in); return (code, response bytes, details)."""
        body = request if isinstance(request, bytes) else request.SerializeToString()
        body = body.replace(_MARK_BYTES, _SURROGATE_BYTES)
        resp: bytes | list[bytes] = b""
        try:
            if method in STREAMING:
                resp = list(self.channel.unary_stream(method)(body, metadata=self.md, timeout=self.timeout))
            else:
                resp = self.channel.unary_unary(method)(body, metadata=self.md, timeout=self.timeout)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        self.codes[code.name] += 1
        if code in BAD_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.bad.append(f"{method}: {code.name}: {details[:300]}")
        return code, resp, details

    def send(self, method: str, request: Message | bytes) -> grpc.StatusCode:
        """Send and remember the ids an OK answer names (new jobs, operations)."""
        code, resp, _ = self.call(method, request)
        if (
            code == grpc.StatusCode.OK
            and isinstance(resp, bytes)
            and method in (PJS + "Create", PJS + "Clone")
        ):
            self._remember(O.Operation.FromString(resp))
        elif (
            code == grpc.StatusCode.OK and isinstance(resp, bytes) and method.endswith(("Execute", "Delete"))
        ):
            self.ops.append(O.Operation.FromString(resp).id)
        return code

    def _remember(self, op: O.Operation) -> str:
        self.ops.append(op.id)
        meta = P.CreateProjectJobMetadata()
        op.metadata.Unpack(meta)
        self.jobs.append(meta.job_id)
        return str(meta.job_id)

    def seed_jobs(self) -> None:
        """Jobs in every state for the ids requests pick: created (three), finished (one)."""
        for _ in range(3):
            self.send(
                PJS + "Create",
                P.CreateProjectJobRequest(project_id="fz", job_parameters=J.JobParameters(cmd="true")),
            )
        params = J.JobParameters(cmd="echo out; echo err >&2")
        self.run_job(P.CreateProjectJobRequest(project_id="fz", job_parameters=params), {})

    def run_job(self, req: P.CreateProjectJobRequest, blobs: dict[str, bytes], deadline_s: float = 60) -> str:
        """Create, upload, execute and wait; return how it ended (a status code or a job status)."""
        code, resp, _ = self.call(PJS + "Create", req)
        if code != grpc.StatusCode.OK:
            return f"Create {code.name}"
        assert isinstance(resp, bytes)
        op = O.Operation.FromString(resp)
        job_id = self._remember(op)
        created = P.CreateProjectJobResponse()
        op.response.Unpack(created)
        for sf in created.upload_files:
            status = _put(sf.url, blobs[sf.file.desc.path])
            if status != 201:
                self.bad.append(f"upload of {sf.file.desc.path[:80]!r}: HTTP {status}")
        code, resp, _ = self.call(PJS + "Execute", P.ExecuteProjectJobRequest(job_id=job_id))
        if code != grpc.StatusCode.OK:
            return f"Execute {code.name}"
        assert isinstance(resp, bytes)
        op = O.Operation.FromString(resp)
        self.ops.append(op.id)
        end = time.monotonic() + deadline_s
        while not op.done:
            if time.monotonic() > end:
                self.bad.append(f"job {job_id} not done in {deadline_s}s")
                return "hang"
            time.sleep(0.02)
            code, resp, _ = self.call(OPS + "Get", OS.GetOperationRequest(operation_id=op.id))
            if code != grpc.StatusCode.OK:
                return f"OperationService.Get {code.name}"
            assert isinstance(resp, bytes)
            op = O.Operation.FromString(resp)
        code, resp, _ = self.call(PJS + "Get", P.GetProjectJobRequest(job_id=job_id))
        assert isinstance(resp, bytes)
        job = J.Job.FromString(resp)
        self.final_jobs.append(job_id)
        status = J.JobStatus.Name(job.status)
        self.job_ends[status] += 1
        if _is_exception(job.status_details) or (
            op.HasField("error") and op.error.code == grpc.StatusCode.INTERNAL.value[0]
        ):
            self.exceptions.append(f"{job_id}: {job.status_details[:300]}")
        return status


def _is_exception(details: str) -> bool:
    """Did the job end with an exception (``OSError: ...``) rather than its process's end?"""
    head = details.split(":", 1)[0]
    return head.endswith(("Error", "Exception")) or details.startswith("internal error")


def _put(url: str, data: bytes) -> int:
    req = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
