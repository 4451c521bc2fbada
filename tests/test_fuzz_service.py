"""Property-based fuzzing of every RPC of a real server (``tests/fuzzing.py`` says what is
generated): no UNKNOWN, no INTERNAL, no deadline passed, no job that ends with an exception, and
nothing in the server's log at ERROR or with a traceback. Bounded to about a minute: fixed
example counts, derandomized, no example database. ``benchmarks/fuzz_service.py`` runs 10,000
requests against a server process and reports its RSS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as P

from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.fuzzing import METHODS, Fuzzer, hostile_jobs, raw_bodies, rpc_requests

BOUNDED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class LogProblems(logging.Handler):
    """Records of the server's loggers (ours, grpc's, asyncio's, tornado's) at ERROR or with a
    traceback; warnings are expected (a job that failed says so)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in text:
            self.problems.append(f"{record.name}: {text[:300]}")


@pytest.fixture(scope="module")
def log_problems() -> Iterator[LogProblems]:
    handler = LogProblems()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory, log_problems: LogProblems) -> Iterator[Fuzzer]:
    opts = ServerOptions(
        state_dir=tmp_path_factory.mktemp("fuzz") / "state",
        token="fuzz-token",
        write_runtime_file=False,
        sweep_interval=3600,
        max_concurrent_jobs=2,
    )
    thread = ServerThread(opts)
    info = thread.start()
    fuzzer = Fuzzer(info.endpoint, info.token)
    try:
        fuzzer.seed_jobs()
        yield fuzzer
    finally:
        fuzzer.close()
        thread.stop()


def _check(fz: Fuzzer, log_problems: LogProblems, what: Any) -> None:
    assert not fz.bad, f"{what}: {fz.bad}"
    assert not fz.exceptions, f"{what}: {fz.exceptions}"
    assert not log_problems.problems, f"{what}: {log_problems.problems}"


def test_every_rpc_with_hostile_fields(fz: Fuzzer, log_problems: LogProblems) -> None:
    before = fz.requests

    @settings(BOUNDED, max_examples=400)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        method, request = data.draw(rpc_requests(fz))
        fz.send(method, request)
        _check(fz, log_problems, method)

    one()
    assert fz.requests - before >= 400
    assert {name for name, n in fz.codes.items() if n} >= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}


def test_bodies_that_do_not_decode(fz: Fuzzer, log_problems: LogProblems) -> None:
    @settings(BOUNDED, max_examples=150)
    @given(st.sampled_from(METHODS), raw_bodies)
    def one(method: str, body: bytes) -> None:
        fz.call(method, body)
        _check(fz, log_problems, (method, body))

    one()


def test_jobs_with_one_hostile_field_run_or_are_refused(fz: Fuzzer, log_problems: LogProblems) -> None:
    ends: dict[str, int] = {}

    @settings(BOUNDED, max_examples=120)
    @given(hostile_jobs())
    def one(job: tuple[str, P.CreateProjectJobRequest, dict[str, bytes]]) -> None:
        what, request, blobs = job
        end = fz.run_job(request, blobs)
        ends[end] = ends.get(end, 0) + 1
        _check(fz, log_problems, (what, end))

    one()
    # the generator reaches every outcome: refused at Create, at Execute, and jobs that ran
    assert ends.get("Create INVALID_ARGUMENT") and ends.get("SUCCESS"), ends
    assert ends.get("Execute FAILED_PRECONDITION"), ends
