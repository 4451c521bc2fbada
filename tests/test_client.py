"""JobsClient against a real local server: create/upload/run/download, logs across dropped streams,
downloads cut off mid-body, settings, errors."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.common.connection import CONNECTION_FILE_NAME, ConnectionInfo, pid_alive
from jupyter_ds_jobs.common.errors import (
    FailedPrecondition,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from jupyter_ds_jobs.core import transfer
from jupyter_ds_jobs.core.client import JobsClient, local_target, parse_endpoint
from jupyter_ds_jobs.core.config import Settings
from jupyter_ds_jobs.core.embedded import LOG_FILE_NAME, ensure_server, find_server, stop_server
from jupyter_ds_jobs.core.jobfiles import local_blob
from jupyter_ds_jobs.packaging.jobspec import LocalFile

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_JOBS_CACHE_DIR", str(tmp_path / "client-cache"))
    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "no-settings.json"))


@pytest.fixture
def client(server: Any) -> Iterator[JobsClient]:
    with JobsClient(server.info.endpoint, server.info.token, project_id="proj") as c:
        yield c


def old(path: Path) -> Path:
    """Backdate mtimes so the hash cache trusts them (it skips files modified a moment ago)."""
    t = time.time() - 600
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (t, t))
    return path


def script_job(tmp: Path, source: str, **params: Any) -> tuple[jobs_pb2.JobParameters, list[LocalFile]]:
    script = tmp / "script.py"
    script.write_text(source)
    p = jobs_pb2.JobParameters(cmd=f"{Path(sys.executable).name} script.py", **params)
    p.cmd = "python script.py"
    return p, [LocalFile(script, "script.py", "", False)]


def out_text(msgs: list[pjs_pb2.LogMessage]) -> str:
    return "".join(m.content.decode() for m in msgs if m.WhichOneof("source") == "standard_stream")


# --------------------------------------------------------------------------- create / run / download


def test_create_run_download_with_dirs_and_rerun_uploads_nothing(client: JobsClient, tmp_path: Path) -> None:
    data = old_file(tmp_path / "big.bin", 3 * 2**20)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x")
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    old(tree)
    src = (
        "import os, pathlib, sys\n"
        "print('size', os.path.getsize('big.bin'))\n"
        "print('tree', sorted(str(p) for p in pathlib.Path('tree').rglob('*')))\n"
        "print('oops', file=sys.stderr)\n"
        "pathlib.Path('out/deep').mkdir(parents=True)\n"
        "pathlib.Path('out/deep/r.txt').write_text('R')\n"
        "pathlib.Path('res.txt').write_text('done')\n"
    )
    params, files = script_job(tmp_path, src)
    old(tmp_path / "script.py")
    params.output_files.add(path="res.txt", var="RES")
    params.output_files.add(path="out")
    files += [LocalFile(data, "big.bin", "BIG", False), LocalFile(tree, "tree", "TREE", True)]

    progress: list[transfer.TransferProgress] = []
    job_id = client.create(params, files, name="first", progress=progress.append)
    first = client.last_create
    assert first is not None and first.files == 3 and first.files_uploaded == 3
    assert first.bytes_uploaded == first.bytes_total > 3 * 2**20
    assert any(p.phase == "upload" and p.finished and p.done_bytes == first.bytes_total for p in progress)

    logs: list[pjs_pb2.LogMessage] = []
    seen: list[str] = []
    result = client.run(
        job_id, on_log=logs.append, on_progress=lambda j, p: seen.append(jobs_pb2.JobStatus.Name(j.status))
    )
    assert result.ok and result.return_code == 0 and result.status == "SUCCESS"
    text = out_text(logs)
    assert f"size {3 * 2**20}" in text and "tree/sub/x.txt" in text and "__pycache__" not in text
    assert "oops" in text and seen[-1] == "SUCCESS"

    dest = tmp_path / "dl"
    paths = client.download_result(result, dest)
    assert sorted(p.name for p in paths) == ["out", "res.txt"]
    assert (dest / "res.txt").read_text() == "done"
    assert (dest / "out" / "deep" / "r.txt").read_text() == "R"
    assert not [p for p in dest.rglob("*") if p.name.endswith((".part", ".zip"))]

    # Second run, nothing changed: the server has every blob; the big file is not hashed again.
    hc = transfer.hash_cache()
    misses = hc.misses
    job2 = client.create(params, files, name="second")
    second = client.last_create
    assert second is not None and second.files_uploaded == 0 and second.bytes_uploaded == 0
    assert hc.misses == misses
    assert (
        client.get(job2).job_parameters.input_files[2].sha256
        == client.get(job_id).job_parameters.input_files[2].sha256
    )

    # download() by job id: outputs by default, logs on request
    more = client.download(job_id, dest=tmp_path / "dl2")
    assert (tmp_path / "dl2" / "res.txt").read_text() == "done"
    logs_dl = client.download(job_id, list(client.get(job_id).log_files), tmp_path / "dl3")
    assert {p.name for p in logs_dl} == {"stdout.log", "stderr.log"} and len(more) == 2


def old_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        chunk = os.urandom(2**20)
        for _ in range(size // 2**20):
            f.write(chunk)
    return old(path)


def test_directory_zip_is_deterministic_across_mtime_changes(tmp_path: Path) -> None:
    tree = tmp_path / "pkg"
    tree.mkdir()
    (tree / "__init__.py").write_text("X = 1\n")
    (tree / "b.py").write_text("Y = 2\n")
    f = [LocalFile(tree, "pkg.zip", "_LOCAL_MODULE_0", True)]
    a = transfer.prepare_files(f)[0].file.sha256
    t = time.time() - 1000
    for p in tree.iterdir():
        os.utime(p, (t, t))
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\0")
    b = transfer.prepare_files(f)[0].file.sha256
    assert a == b
    (tree / "b.py").write_text("Y = 3\n")
    assert transfer.prepare_files(f)[0].file.sha256 != a


def test_wait_clone_ttl_list_cancel_delete(client: JobsClient, tmp_path: Path) -> None:
    params, files = script_job(
        tmp_path,
        "import os, sys, time\nprint(os.environ.get('GREETING'), sys.argv[1:])\ntime.sleep(float(os.environ.get('NAP', '0')))\n",
    )
    params.cmd = "python script.py ${N}"
    params.arguments.add(name="N", value="1")
    params.env.vars["GREETING"] = "hi"
    job_id = client.create(params, files, data_ttl=timedelta(days=1))
    res = client.run(job_id, on_log=lambda m: None)
    assert res.ok

    o = jobs_pb2.JobParameters()
    o.arguments.add(name="N", value="2")
    o.env.vars["NAP"] = "30"
    clone_id = client.clone(job_id, o, name="clone")
    assert client.last_create is not None and client.last_create.bytes_uploaded == 0
    op = client.execute(clone_id)
    assert client.execute(clone_id).id == op.id  # attach: the same run's operation
    got: list[pjs_pb2.LogMessage] = []
    follower = client.logs_thread(clone_id, got.append)
    deadline = time.monotonic() + 20
    while "['2']" not in out_text(got):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.get(clone_id).parent_job_id == job_id
    running = [j.id for j in client.list_jobs(statuses=[jobs_pb2.EXECUTING])]
    assert running == [clone_id]
    client.cancel(clone_id, reason="test")
    result = client.wait(clone_id, op, timeout=20)
    assert result.job.status == jobs_pb2.CANCELLED and result.return_code is None and result.error
    assert follower.join(10) and follower.error is None
    with pytest.raises(FailedPrecondition):
        client.cancel(clone_id)

    assert [j.id for j in client.list_jobs(page_size=1)] == [clone_id, job_id]
    assert [j.id for j in client.list_jobs(limit=1)] == [clone_id]

    client.set_data_ttl(job_id, None)
    assert not client.get(job_id).HasField("data_expires_at")
    client.set_data_ttl(job_id, timedelta(hours=1))
    assert client.get(job_id).HasField("data_expires_at")

    client.delete_data(job_id)
    assert client.get(job_id).data_cleared
    client.delete(clone_id)
    with pytest.raises(NotFound):
        client.get(clone_id)


# --------------------------------------------------------------------------- logs


class DroppingProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A real gRPC proxy in front of the server that kills the first ``drops`` ReadLogs streams
    with UNAVAILABLE right after their first response (a dropped connection, as the client sees it)."""

    def __init__(self, target: str, drops: int) -> None:
        self.channel = grpc.insecure_channel(target)
        self.drops = drops
        self.dropped = 0
        self.offsets: list[int] = []

    def service(self, details: Any) -> Any:
        method = details.method

        def md(context: Any) -> list[tuple[str, str]]:
            return [(m.key, m.value) for m in context.invocation_metadata() if m.key == "authorization"]

        if method.endswith("/ReadLogs"):

            def stream(req: bytes, context: Any) -> Iterator[bytes]:
                self.offsets.append(pjs_pb2.ReadProjectJobLogsRequest.FromString(req).offset)
                call = self.channel.unary_stream(method)(req, metadata=md(context))
                for resp in call:
                    yield resp
                    if self.dropped < self.drops:
                        self.dropped += 1
                        call.cancel()
                        context.abort(grpc.StatusCode.UNAVAILABLE, "proxy dropped the stream")

            return grpc.unary_stream_rpc_method_handler(stream)

        def unary(req: bytes, context: Any) -> bytes:
            return self.channel.unary_unary(method)(req, metadata=md(context))  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
def proxy(server: Any) -> Iterator[tuple[str, DroppingProxy]]:
    handler = DroppingProxy(server.info.endpoint, drops=3)
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        srv.stop(0)
        handler.channel.close()


def test_log_follower_resumes_after_dropped_streams(client: JobsClient, tmp_path: Path, proxy: Any) -> None:
    target, handler = proxy
    src = "import time\nfor i in range(40):\n    print('line', i, flush=True)\n    time.sleep(0.01)\n"
    params, files = script_job(tmp_path, src)
    job_id = client.create(params, files)
    with JobsClient(target, "test-token", project_id="proj") as via_proxy:
        got: list[pjs_pb2.LogMessage] = []
        via_proxy.execute(job_id)
        final = via_proxy.follow_logs(job_id, got.append)
    assert handler.dropped == 3
    assert (
        handler.offsets[0] == 0
        and handler.offsets[1:] == sorted(handler.offsets[1:])
        and handler.offsets[1] > 0
    )
    assert out_text(got) == "".join(f"line {i}\n" for i in range(40))  # nothing lost, nothing twice
    # the offset returned resumes exactly at the end: nothing more to read
    more: list[pjs_pb2.LogMessage] = []
    assert client.follow_logs(job_id, more.append, offset=final) == final and more == []


def test_follow_logs_stop_then_resume_from_offset(client: JobsClient, tmp_path: Path) -> None:
    src = "import time\nfor i in range(10):\n    print('n', i, flush=True)\n    time.sleep(0.05)\n"
    params, files = script_job(tmp_path, src)
    job_id = client.create(params, files)
    client.execute(job_id)
    first: list[pjs_pb2.LogMessage] = []
    stop = threading.Event()

    def on_msg(m: pjs_pb2.LogMessage) -> None:
        first.append(m)
        if b"n 2" in m.content:
            stop.set()  # cancels the call from the client side mid-stream

    offset = client.follow_logs(job_id, on_msg, stop=stop)
    assert offset > 0 and "n 2\n" in out_text(first)
    rest: list[pjs_pb2.LogMessage] = []
    client.follow_logs(job_id, rest.append, offset=offset)
    assert out_text(first) + out_text(rest) == "".join(f"n {i}\n" for i in range(10))


def test_follow_logs_unknown_job_raises(client: JobsClient) -> None:
    with pytest.raises(NotFound):
        client.follow_logs("dsj-nope", lambda m: None)


# --------------------------------------------------------------------------- downloads


class FakeFlakyFileServer:
    """A fake object store on loopback (a real HTTP server): serves ``body``, but the first
    ``cut`` responses close the connection halfway through the body. Honours ``Range``."""

    def __init__(self, body: bytes, cut: int) -> None:
        self.body = body
        self.cut = cut
        self.requests: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                data = outer.body[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if outer.cut > 0:
                    outer.cut -= 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/blob"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flaky() -> Iterator[Callable[[bytes, int], FakeFlakyFileServer]]:
    made: list[FakeFlakyFileServer] = []

    def make(body: bytes, cut: int) -> FakeFlakyFileServer:
        made.append(FakeFlakyFileServer(body, cut))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_interrupted_download_leaves_no_partial_file(tmp_path: Path, flaky: Any, client: JobsClient) -> None:
    body = os.urandom(300_000)
    srv = flaky(body, cut=100)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    sf = jobs_pb2.StorageFile(
        file=jobs_pb2.File(
            desc=jobs_pb2.FileDesc(path="keep.txt"),
            sha256=hashlib.sha256(body).hexdigest(),
            size_bytes=len(body),
        ),
        url=srv.url,
    )
    with pytest.raises(Unavailable, match=r"keep\.txt"):
        client.download_storage_files([sf], dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "old"
    assert len(srv.requests) == transfer.RETRIES + 1


def test_dropped_download_resumes_with_range(tmp_path: Path, flaky: Any) -> None:
    body = os.urandom(200_000)
    srv = flaky(body, cut=1)
    out = transfer.download_url(
        srv.url, tmp_path / "f.bin", size=len(body), sha256=hashlib.sha256(body).hexdigest()
    )
    assert out.read_bytes() == body
    assert srv.requests[0] is None and srv.requests[1] == f"bytes={len(body) // 2}-"


def test_download_with_wrong_sha_is_refused(tmp_path: Path, flaky: Any) -> None:
    srv = flaky(b"hello", cut=0)
    with pytest.raises(Exception, match="sha256"):
        transfer.download_url(srv.url, tmp_path / "f", size=5, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_local_target_never_escapes(tmp_path: Path) -> None:
    assert local_target(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    assert local_target(tmp_path, "/etc/passwd") == tmp_path / "passwd"
    assert local_target(tmp_path, "../../x") == tmp_path / "x"


# --------------------------------------------------------------------------- connecting, errors


def test_connect_by_settings_and_auth_errors(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(endpoint=server.info.endpoint, token="test-token", project="p1")
    path = s.save(tmp_path / "s.json")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = Settings.load(path, env={"DS_JOBS_PROJECT": "p2"})
    assert (
        loaded.endpoint == server.info.endpoint
        and loaded.project == "p2"
        and loaded.public()["token"] == "***"
    )
    with JobsClient.connect(settings=loaded) as c:
        assert c.project_id == "p2" and not c.tls and list(c.list_jobs()) == []
    monkeypatch.setenv("DS_JOBS_CONFIG", str(path))
    monkeypatch.setenv("DS_JOBS_TOKEN", "wrong")
    with JobsClient.connect() as c, pytest.raises(Unauthenticated, match="invalid bearer token"):
        c.get("x")
    assert parse_endpoint("grpcs://h:443") == ("h:443", True)
    assert JobsClient.connect("example.com:443", "t", start=False).tls


def test_unreachable_server_is_retried_then_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = JobsClient(f"127.0.0.1:{port}", "t", retry_seconds=0.5, timeout=2)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match=f"cannot reach the job server at 127.0.0.1:{port}"):
        c.get("x")
    assert 0.3 < time.monotonic() - t0 < 5
    c.close()


def test_datasphere_profile_needs_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("YC_IAM_TOKEN", "YC_TOKEN", "YC_OAUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("YC_METADATA_ADDR", "127.0.0.1:9")  # no metadata service
    monkeypatch.setenv("PATH", str(tmp_path))  # no yc
    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "settings.json"))
    c = JobsClient.datasphere()
    with pytest.raises(Unauthenticated, match="no IAM token in YC_IAM_TOKEN, no OAuth token"):
        c._metadata()  # the token is made for the first call
    c.close()
    monkeypatch.setenv("YC_IAM_TOKEN", "iam")
    c = JobsClient.datasphere(project_id="bt1")
    assert c.endpoint == "datasphere.api.cloud.yandex.net:443" and c.tls
    assert c.operation_endpoint == "operation.api.cloud.yandex.net:443"
    md = c._metadata()
    assert ("authorization", "Bearer iam") in md and any(k == "x-client-version" for k, _ in md)
    c.close()


def test_a_same_machine_server_hands_files_over_without_http(server: Any, tmp_path: Path) -> None:
    """The embedded server's client copies finished outputs straight from the blob store."""
    client = JobsClient.connect(state_dir=Path(server.info.state_dir), start=False)
    assert client.local_blobs == Path(server.info.state_dir) / "blobs"
    p, files = script_job(tmp_path, "open('out.bin', 'wb').write(b'x' * 100000)\n")
    p.output_files.add(path="out.bin")
    result = client.run(client.create(p, files))
    [sf] = result.output_files
    dead = jobs_pb2.StorageFile(file=sf.file, url="http://127.0.0.1:9/nothing-listens-here")
    [got] = client.download_storage_files([dead], tmp_path / "local")
    assert got.read_bytes() == b"x" * 100000
    got.write_bytes(b"changed")  # a copy: the server's store is untouched
    assert local_blob(client.local_blobs, sf.file) is not None
    # A blob that is not whole here goes over HTTP (and is verified there)
    other = JobsClient(server.info.endpoint, server.info.token, local_blobs=tmp_path / "empty")
    [again] = other.download_storage_files([sf], tmp_path / "http")
    assert again.read_bytes() == b"x" * 100000
    client.close()
    other.close()


def test_downloads_never_touch_the_process_umask(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.umask() sets the mask of every thread: a download must not call it, while files that
    another thread creates meanwhile keep the process's mask, and downloads get 0644 less it."""
    p, files = script_job(
        tmp_path, "for i in range(6):\n    open(f'out{i}.bin', 'wb').write(bytes([i]) * 200_000)\n"
    )
    for i in range(6):
        p.output_files.add(path=f"out{i}.bin")
    over_http = JobsClient(server.info.endpoint, server.info.token, project_id="proj")
    same_machine = JobsClient.connect(state_dir=Path(server.info.state_dir), start=False, project_id="proj")
    job_id = over_http.create(p, files)
    assert over_http.run(job_id).ok
    old_mask = os.umask(0o027)
    calls: list[str] = []
    real_umask = os.umask

    def spy(mask: int) -> int:
        calls.append(threading.current_thread().name)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", spy)
    neighbour_modes: set[int] = set()
    stop = threading.Event()

    def neighbour() -> None:  # another thread of the process, writing its own files
        d = tmp_path / "neighbour"
        d.mkdir()
        n = 0
        while not stop.is_set():
            f = d / f"f{n % 50}"
            f.unlink(missing_ok=True)
            f.write_bytes(b"x")
            neighbour_modes.add(f.stat().st_mode & 0o777)
            n += 1

    t = threading.Thread(target=neighbour)
    t.start()
    try:
        got: list[Path] = []
        for round_ in range(5):
            got += over_http.download(job_id, dest=tmp_path / f"http{round_}")
            got += same_machine.download(job_id, dest=tmp_path / f"local{round_}")
    finally:
        stop.set()
        t.join()
        monkeypatch.undo()
        os.umask(old_mask)
        over_http.close()
        same_machine.close()
    assert calls == []
    assert len(got) == 60 and {f.stat().st_mode & 0o777 for f in got} == {0o640}
    assert neighbour_modes == {0o640}


# --------------------------------------------------------------------------- embedded-server discovery


def test_a_second_starter_waits_on_the_state_dir_lock_then_says_so(tmp_path: Path) -> None:
    """Another process holding the start lock of a state dir: ensure_server waits its timeout,
    then one clear error (and starts nothing)."""
    sd = tmp_path / "state"
    sd.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
         "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)",
         str(sd / ".start.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(
            Unavailable, match=f"another process is starting the job server in {sd}; try again"
        ):
            ensure_server(sd, timeout=0.6)
        assert 0.5 < time.monotonic() - t0 < 5
        assert not (sd / LOG_FILE_NAME).exists() and find_server(sd) is None
    finally:
        holder.kill()
        holder.wait()


def test_an_exited_unreaped_server_counts_as_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet waited for
        assert time.monotonic() < deadline
        time.sleep(0.02)
    info = ConnectionInfo("127.0.0.1:1", "http://127.0.0.1:2", "t", child.pid, str(tmp_path))
    info.write(tmp_path / CONNECTION_FILE_NAME)
    assert pid_alive(child.pid)  # the pid still exists...
    t0 = time.monotonic()
    assert stop_server(info, timeout=5)  # ...but it is a zombie: stopped, its connection file removed
    assert time.monotonic() - t0 < 2 and not (tmp_path / CONNECTION_FILE_NAME).exists()
    child.wait()
    assert not pid_alive(child.pid) and not pid_alive(0) and not pid_alive(-1)
