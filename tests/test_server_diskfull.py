"""A state dir that runs out of room (issue 9, item 12): uploads answer HTTP 507, jobs end in ERROR
saying what did not fit, the database stays readable and nothing already stored is lost.

Two ways to run out, both real: a small tmpfs mounted as the state dir (needs root; skipped
elsewhere), and a server process whose file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes
writes past it fail with EFBIG, as a quota would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, ops_pb2, pjs_pb2
from jupyter_ds_jobs.common.connection import CONNECTION_FILE_NAME, ConnectionInfo
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.jobhelpers import Api, execute_response, file_msg, http

S = jobs_pb2
MiB = 1 << 20


def _options(state: Path) -> ServerOptions:
    return ServerOptions(
        state_dir=state,
        token="t",
        write_runtime_file=False,
        sweep_interval=3600,
        python_envs=False,
        warm_start=False,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, or a skip where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class Stored:
    """A job and an upload made before the disk filled; :meth:`check` says they are intact."""

    def __init__(self, api: Api, state: Path) -> None:
        self.api, self.state = api, state
        self.input = os.urandom(50_000)
        self.job_id = api.create(
            "cp in.bin out.bin && echo logged", inputs={"in.bin": (self.input, "")}, outputs=[("out.bin", "")]
        )
        job, op = api.run(self.job_id)
        assert job.status == S.SUCCESS, job.status_details
        self.op_id = op.id
        self.job = job

    def check(self) -> None:
        job = self.api.get(self.job_id)
        assert job.status == S.SUCCESS and job.output_files == self.job.output_files
        op = self.api.ops.Get(ops_pb2.GetOperationRequest(operation_id=self.op_id), metadata=self.api.md)
        [out] = execute_response(op).output_files
        status, body = http("GET", out.url)
        assert status == 200 and body == self.input
        assert hashlib.sha256(body).hexdigest() == out.file.sha256
        for log in job.log_files:
            assert len(self.api.jobs.DownloadJobFiles(
                pjs_pb2.DownloadProjectJobFilesRequest(job_id=self.job_id, files=[log]), metadata=self.api.md
            ).download_files) == 1  # fmt: skip
        listed = self.api.jobs.List(pjs_pb2.ListProjectJobRequest(project_id="proj"), metadata=self.api.md)
        assert self.job_id in [j.id for j in listed.jobs]
        with sqlite3.connect(f"file:{self.state / 'jobs.sqlite'}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert not list((self.state / "blobs" / "tmp").iterdir())  # nothing half written left


def _create_upload(api: Api, data_size: int) -> tuple[str, str]:
    """(job id, signed upload URL) of a job whose one input has ``data_size`` bytes."""
    p = jobs_pb2.JobParameters(cmd="true")
    f = p.input_files.add()
    f.CopyFrom(file_msg("big.bin", b""))
    f.size_bytes = data_size
    f.sha256 = hashlib.sha256(b"x" * data_size).hexdigest()
    op = api.jobs.Create(
        pjs_pb2.CreateProjectJobRequest(project_id="proj", job_parameters=p), metadata=api.md
    )
    resp = pjs_pb2.CreateProjectJobResponse()
    assert op.response.Unpack(resp)
    return resp.job_id, resp.upload_files[0].url


def _run_failing(api: Api, cmd: str, outputs: list[tuple[str, str]]) -> tuple[jobs_pb2.Job, op_pb2.Operation]:
    job, op = api.run(api.create(cmd, outputs=outputs))
    assert job.status == S.ERROR, job.status_details
    assert not op.HasField("error"), op.error  # the job ran: its result and what was stored
    return job, op


def _free_data(api: Api, job_id: str) -> None:
    op = api.jobs.DeleteData(pjs_pb2.DeleteProjectJobDataRequest(job_id=job_id), metadata=api.md)
    assert op.done and not op.HasField("error")


def test_a_full_disk_fails_uploads_outputs_and_logs_clearly_and_keeps_what_is_stored(
    small_disk: Path,
) -> None:
    state = small_disk / "state"
    with ServerThread(_options(state)) as info:
        api = Api(grpc.insecure_channel(info.endpoint), info.token)
        stored = Stored(api, state)

        def free() -> int:
            return shutil.disk_usage(state).free

        # an upload larger than the room left: 507 before its body is stored
        size = free() + MiB
        _, url = _create_upload(api, size)
        status, body = http("PUT", url, b"x" * size)
        assert status == 507 and b"could not write blob" in body and b"bytes free" in body, (status, body)
        stored.check()

        # an output file the job could write but the store cannot copy
        n = free() * 6 // 10
        job, op = _run_failing(
            api,
            f"echo ok > small.txt && head -c {n} /dev/urandom > big.bin",
            [("small.txt", ""), ("big.bin", "")],
        )
        assert (
            job.status_details
            == "could not write output file 'big.bin' into the server's state dir: No space left on device"
        )
        [err] = job.file_errors
        assert err.output_file_desc.path == "big.bin" and err.description == job.status_details
        assert [f.file.desc.path for f in execute_response(op).output_files] == ["small.txt"]
        stored.check()
        _free_data(api, job.id)

        # an output directory whose ZIP does not fit
        n = free() * 6 // 10
        job, _ = _run_failing(api, f"mkdir od && head -c {n} /dev/urandom > od/r.bin", [("od", "")])
        assert "could not write output directory 'od' (zipped)" in job.status_details, job.status_details
        assert "No space left on device" in job.status_details
        stored.check()
        _free_data(api, job.id)

        # logs: stream.bin and stdout.log fit, their copy into the store does not
        n = free() * 42 // 100
        job, _ = _run_failing(api, f"head -c {n * 3 // 4} /dev/urandom | base64 -w 1000", [])
        assert "could not write log file 'stdout.log'" in job.status_details, job.status_details
        assert not job.log_files
        stored.check()
        _free_data(api, job.id)

        # room again: the server works as before
        job, _ = api.run(api.create("echo fine"))
        assert job.status == S.SUCCESS, job.status_details
        stored.check()


_SERVE = """
import sys
from pathlib import Path
from jupyter_ds_jobs.server.app import ServerOptions, run_server
run_server(ServerOptions(state_dir=Path(sys.argv[1]), token="t", write_runtime_file=False,
                         sweep_interval=3600, python_envs=False, warm_start=False), announce=False)
"""


@contextlib.contextmanager
def _server_process(state: Path, fsize_limit: int | None = None) -> Iterator[Api]:
    """A server in a process of its own; with ``fsize_limit``, it (and its jobs) may write no file
    past that many bytes."""

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead

    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; a pipe nobody reads could fill
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(state)],
        preexec_fn=limit,
        cwd=Path(__file__).resolve().parent.parent,
        stderr=stderr,
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / CONNECTION_FILE_NAME).exists():
            assert proc.poll() is None, stderr.seek(0) or stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        info = ConnectionInfo.read(state / CONNECTION_FILE_NAME)
        yield Api(grpc.insecure_channel(info.endpoint), info.token)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()


def test_a_disk_that_fills_while_the_job_writes_its_log_ends_the_job_in_error(small_disk: Path) -> None:
    state = small_disk / "state"
    with _server_process(state) as api:  # a process of its own: the stuck job dies with it
        n = shutil.disk_usage(small_disk).free
        job, _ = api.run(api.create(f"head -c {n} /dev/urandom | base64 -w 1000; echo done"), timeout=10)
        assert job.status == S.ERROR and "could not write" in job.status_details, job.status_details


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    """A server process that may write no file past 4 MiB (its jobs inherit the limit)."""
    with _server_process(tmp_path / "state", 4 * MiB) as api:
        yield api, tmp_path / "state"


def test_a_file_size_limit_fails_uploads_and_outputs_clearly(limited_server: tuple[Api, Path]) -> None:
    api, state = limited_server
    stored = Stored(api, state)

    # an upload that passes every check but cannot be written past 4 MiB
    size = 5 * MiB
    _, url = _create_upload(api, size)
    status, body = http("PUT", url, b"x" * size)
    assert status == 507 and b"could not write blob" in body and b"File too large" in body, (status, body)
    stored.check()

    # an output directory of files under the limit whose ZIP is over it
    cmd = "mkdir od && for i in 1 2 3; do head -c 1500000 /dev/urandom > od/$i.bin; done"
    job, _ = _run_failing(api, cmd, [("od", "")])
    assert job.status_details == (
        "could not write output directory 'od' (zipped) into the server's state dir: File too large"
    )
    stored.check()
