"""The local ProjectJobService: running, cancelling, logs, files, listing, lifetimes."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, ops_pb2, pjs_pb2
from tests.jobhelpers import Api, execute_response, http

S = jobs_pb2


@pytest.fixture
def api(server) -> Api:  # type: ignore[no-untyped-def]
    return Api(server.channel(), server.info.token)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_outputs_args_env_and_missing_output(api: Api) -> None:
    job_id = api.create(
        "echo $GREETING ${N} > ${OUT}; mkdir -p outdir/sub && echo x > outdir/sub/f.txt",
        outputs=[("res/out.txt", "OUT"), ("outdir", ""), ("never.txt", "")],
        arguments=[jobs_pb2.Argument(name="N", value="42")],
        env=jobs_pb2.Environment(vars={"GREETING": "hi"}),
    )
    job, op = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    resp = execute_response(op)
    by_path = {f.file.desc.path: f for f in resp.output_files}
    assert http("GET", by_path["res/out.txt"].url)[1] == b"hi 42\n"
    assert by_path["outdir"].file.compression_type == S.ZIP  # a directory comes back zipped
    [err] = resp.output_files_errors
    assert err.output_file_desc.path == "never.txt" and err.type == S.FileUploadError.NOT_FOUND
    assert [e.output_file_desc.path for e in job.file_errors] == ["never.txt"]


def test_failing_command_is_error_with_return_code(api: Api) -> None:
    job, op = api.run(api.create("echo boom >&2; exit 3"))
    assert job.status == S.ERROR
    assert "exited with code 3" in job.status_details
    assert execute_response(op).result.return_code == 3


def test_execute_twice_returns_the_same_operation_and_runs_once(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.create("echo run >> runs; sleep 0.5")  # a sandboxed job writes only its own dir
    marker = Path(server.info.state_dir) / "work" / job_id / "runs"
    first = api.execute(job_id)
    second = api.execute(job_id)
    assert first.id == second.id
    api.wait(first)
    third = api.execute(job_id)  # after the end too: that run's operation, done
    assert third.id == first.id and third.done
    assert marker.read_text() == "run\n"


def test_execute_before_upload_names_the_missing_file(api: Api) -> None:
    job_id = api.create("cat a.txt", inputs={"a.txt": (b"abc", "")}, upload=False)
    with pytest.raises(grpc.RpcError) as e:
        api.execute(job_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a.txt" in e.value.details()


def test_graceful_cancel_delivers_the_signal_then_waits(api: Api) -> None:
    script = "trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 0.05; done"
    job_id = api.create(script, graceful_shutdown_parameters=jobs_pb2.GracefulShutdownParameters(signal=15))
    op = api.execute(job_id)
    api.wait_status(job_id, {S.EXECUTING})
    _wait_log(api, job_id, b"started")
    api.jobs.Cancel(
        pjs_pb2.CancelProjectJobRequest(job_id=job_id, graceful=True, reason="test"), metadata=api.md
    )
    op = api.wait(op)
    job = api.get(job_id)
    assert job.status == S.CANCELLED
    assert "test" in job.status_details
    assert op.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert (b"got-term\n") in b"".join(c for s, c in api.logs(job_id) if s == "OUT")


def test_graceful_cancel_kills_after_the_timeout(api: Api) -> None:
    gsp = jobs_pb2.GracefulShutdownParameters(signal=int(signal.SIGUSR1))
    gsp.timeout.FromMilliseconds(300)
    job_id = api.create("trap '' USR1; echo started; sleep 30", graceful_shutdown_parameters=gsp)
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    t0 = time.monotonic()
    api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=job_id, graceful=True), metadata=api.md)
    api.wait(op)
    assert time.monotonic() - t0 < 10
    assert api.get(job_id).status == S.CANCELLED
    system = b"".join(c for s, c in api.logs(job_id) if s == ".system.log")
    assert b"sending signal 10" in system and b"SIGKILL" in system


def test_hard_cancel_leaves_no_orphan(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.create("sleep 300 & echo $! > child.pid; echo started; wait")
    pidfile = Path(server.info.state_dir) / "work" / job_id / "child.pid"
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    child = int(pidfile.read_text())
    assert _pid_alive(child)
    api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=job_id), metadata=api.md)
    api.wait(op)
    assert api.get(job_id).status == S.CANCELLED
    deadline = time.monotonic() + 5
    while _pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(child)


def test_cancel_of_a_finished_job_is_refused(api: Api) -> None:
    job_id = api.create("true")
    api.run(job_id)
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=job_id), metadata=api.md)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_operation_service_cancel_stops_the_job(api: Api) -> None:
    job_id = api.create("echo started; sleep 30")
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    op = api.ops.Cancel(ops_pb2.CancelOperationRequest(operation_id=op.id), metadata=api.md)
    assert op.done and op.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert api.get(job_id).status == S.CANCELLED


def _wait_log(api: Api, job_id: str, needle: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for resp in api.jobs.ReadLogs(
        pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id), metadata=api.md, timeout=timeout
    ):
        if any(needle in m.content for m in resp.logs if m.WhichOneof("source") == "standard_stream"):
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"{needle!r} never logged")


def test_logs_resume_from_an_offset_lose_and_repeat_nothing(api: Api) -> None:
    job_id = api.create("for i in $(seq 1 40); do echo line$i; sleep 0.01; done")
    op = api.execute(job_id)
    got = b""
    offset = 0
    # read a couple of responses, drop the stream, reconnect from the last offset, repeatedly
    for _ in range(200):
        call = api.jobs.ReadLogs(
            pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id, offset=offset), metadata=api.md
        )
        try:
            resp = next(call)
        except StopIteration:
            break
        got += b"".join(m.content for m in resp.logs if m.WhichOneof("source") == "standard_stream")
        offset = resp.offset
        call.cancel()
    api.wait(op)
    assert got == b"".join(f"line{i}\n".encode() for i in range(1, 41))
    # the whole log in one go equals the pieces
    assert b"".join(c for s, c in api.logs(job_id) if s == "OUT") == got


def test_log_offsets_are_checked_and_minus_one_means_from_now(api: Api) -> None:
    job_id = api.create("echo a")
    api.run(job_id)
    with pytest.raises(grpc.RpcError) as e:
        api.logs(job_id, offset=3)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "offset" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        api.logs(job_id, offset=10**9)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert api.logs(job_id, offset=-1) == []  # finished: nothing new from now


def test_read_std_logs_streams_only_stdout_and_stderr(api: Api) -> None:
    job_id = api.create("echo out; echo err >&2")
    api.run(job_id)
    logs = []
    for resp in api.jobs.ReadStdLogs(pjs_pb2.ReadProjectJobStdLogsRequest(job_id=job_id), metadata=api.md):
        logs.extend((pjs_pb2.StdLog.Type.Name(m.type), m.content) for m in resp.logs)
    assert sorted(logs) == [("ERR", b"err\n"), ("OUT", b"out\n")]


def test_progress_file_drives_operation_metadata(api: Api) -> None:
    cmd = (
        'echo \'{"message": "half way", "progress": 50}\' >> job_progress.jsonl; echo started; sleep 1; '
        'echo \'{"message": "nearly", "progress": 90}\' >> job_progress.jsonl; sleep 0.5'
    )
    job_id = api.create(cmd)
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    seen = set()
    while not op.done:
        meta = pjs_pb2.ExecuteProjectJobMetadata()
        op.metadata.Unpack(meta)
        seen.add((meta.progress.message, meta.progress.progress))
        time.sleep(0.05)
        op = api.ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=api.md)
    assert ("half way", 50) in seen and ("nearly", 90) in seen


def test_uploads_are_checked_and_signed_urls_expire(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.create("cat a.txt", inputs={"a.txt": (b"right content", "")}, upload=False)
    op = api.jobs.Create(
        pjs_pb2.CreateProjectJobRequest(project_id="proj", job_parameters=api.get(job_id).job_parameters),
        metadata=api.md,
    )
    resp = pjs_pb2.CreateProjectJobResponse()
    op.response.Unpack(resp)
    url = resp.upload_files[0].url
    blobs_dir = Path(server.info.state_dir) / "blobs"

    def stored() -> list[Path]:
        return [p for p in blobs_dir.rglob("*") if p.is_file()]

    status, body = http("PUT", url, b"wrong content")  # same size, other sha256
    assert status == 400 and b"sha256" in body
    assert stored() == []  # nothing half-written stays
    status, body = http("PUT", url, b"short")
    assert status == 400
    status, _ = http("PUT", url.replace("sig=", "sig=0"), b"right content")
    assert status == 403
    expired = server.thread.server.blobs.signed_url("PUT", resp.upload_files[0].file.sha256, 13, ttl=-1)
    status, body = http("PUT", expired, b"right content")
    assert status == 403 and b"expired" in body
    assert http("PUT", url, b"right content")[0] == 201
    assert len(stored()) == 1
    api.run(job_id)


def test_download_supports_ranges(api: Api) -> None:
    payload = bytes(range(256)) * 100
    job_id = api.create("cp in.bin ${OUT}", inputs={"in.bin": (payload, "")}, outputs=[("out.bin", "OUT")])
    _, op = api.run(job_id)
    url = execute_response(op).output_files[0].url
    status, body = http("GET", url, headers={"Range": "bytes=100-199"})
    assert status == 206 and body == payload[100:200]
    status, body = http("GET", url, headers={"Range": "bytes=-10"})
    assert status == 206 and body == payload[-10:]
    assert http("GET", url, headers={"Range": "bytes=99999999-"})[0] == 416
    assert http("GET", url.split("?")[0])[0] == 403  # unsigned


def test_zip_inputs_and_local_modules_are_extracted(api: Api) -> None:
    from tests.jobhelpers import file_msg, zip_bytes

    tree = zip_bytes({"src/a.txt": b"A", "src/deep/b.txt": b"B"})
    mods = {"helper.py": b"VALUE = 7\n", "main.py": b"import helper\nprint(helper.VALUE)\n"}
    p = jobs_pb2.JobParameters(cmd="python main.py && cat ${SRC}/a.txt ${SRC}/deep/b.txt")
    p.input_files.append(file_msg("src", tree, "SRC", zipped=True))
    job_id = api.create(p.cmd, modules=mods, input_files=list(p.input_files), upload=False)
    op = api.jobs.Create(
        pjs_pb2.CreateProjectJobRequest(project_id="proj", job_parameters=api.get(job_id).job_parameters),
        metadata=api.md,
    )
    resp = pjs_pb2.CreateProjectJobResponse()
    op.response.Unpack(resp)
    from tests.jobhelpers import zip_bytes as zb

    contents = {"src": tree, "/tmp/x/mods.zip": zb(mods)}
    for sf in resp.upload_files:
        assert http("PUT", sf.url, contents[sf.file.desc.path])[0] == 201
    job, _ = api.run(resp.job_id)
    assert job.status == S.SUCCESS, job.status_details
    assert b"".join(c for s, c in api.logs(resp.job_id) if s == "OUT") == b"7\nAB"


def test_max_concurrent_jobs_queue_in_creating(tmp_path: Path) -> None:
    from jupyter_ds_jobs.server.app import ServerOptions, ServerThread

    opts = ServerOptions(state_dir=tmp_path / "s", token="t", write_runtime_file=False, max_concurrent_jobs=1)
    with ServerThread(opts) as info:
        import grpc as g

        api = Api(g.insecure_channel(info.endpoint), "t")
        first = api.create("echo started; sleep 1")
        second = api.create("echo second")
        op1 = api.execute(first)
        _wait_log(api, first, b"started")
        op2 = api.execute(second)
        time.sleep(0.3)
        op2 = api.ops.Get(ops_pb2.GetOperationRequest(operation_id=op2.id), metadata=api.md)
        meta = pjs_pb2.ExecuteProjectJobMetadata()
        op2.metadata.Unpack(meta)
        assert meta.job.status == S.CREATING
        assert "waiting for a free slot" in meta.progress.message
        api.wait(op1)
        api.wait(op2)
        assert api.get(second).status == S.SUCCESS
        assert api.get(second).started_at.ToDatetime() >= api.get(first).finished_at.ToDatetime()


def test_list_paging_filter_and_project_scope(api: Api) -> None:
    ids = [api.create("true", project="a") for _ in range(5)]
    other = api.create("true", project="b")
    api.run(ids[0])
    seen: list[str] = []
    token = ""
    while True:
        resp = api.jobs.List(
            pjs_pb2.ListProjectJobRequest(project_id="a", page_size=2, page_token=token), metadata=api.md
        )
        seen += [j.id for j in resp.jobs]
        token = resp.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first, every job once
    assert other not in seen
    done = api.jobs.List(
        pjs_pb2.ListProjectJobRequest(project_id="a", filter="status IN (SUCCESS, ERROR)"), metadata=api.md
    )
    assert [j.id for j in done.jobs] == [ids[0]]
    for bad, field in (
        (pjs_pb2.ListProjectJobRequest(project_id="a", page_size=5000), "page_size"),
        (pjs_pb2.ListProjectJobRequest(project_id="a", page_size=-1), "page_size"),
        (pjs_pb2.ListProjectJobRequest(project_id="a", filter="name = 'x'"), "filter"),
        (pjs_pb2.ListProjectJobRequest(project_id="a", filter="status IN (RUNNING)"), "filter"),
        (pjs_pb2.ListProjectJobRequest(project_id="a", page_token="!!"), "page_token"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            api.jobs.List(bad, metadata=api.md)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()


def test_delete_and_data_lifetimes(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    shared = b"shared input"
    a = api.create(
        "(cat in.txt; echo more) > ${O}", inputs={"in.txt": (shared, "")}, outputs=[("o.txt", "O")]
    )
    b = api.create("cat in.txt", inputs={"in.txt": (shared, "")})
    api.run(a)
    api.run(b)
    state = Path(server.info.state_dir)
    job_a = api.get(a)
    # data lifetime: 14 days by default, SetDataTtl moves it, no ttl keeps forever
    ttl_days = (job_a.data_expires_at.ToDatetime() - job_a.created_at.ToDatetime()).days
    assert ttl_days == 14
    api.jobs.SetDataTtl(
        pjs_pb2.SetProjectJobDataTtlRequest(job_id=a, ttl=timedelta(seconds=60)), metadata=api.md
    )
    assert 50 < api.get(a).data_expires_at.seconds - time.time() <= 61
    api.jobs.SetDataTtl(pjs_pb2.SetProjectJobDataTtlRequest(job_id=a), metadata=api.md)
    assert not api.get(a).HasField("data_expires_at")
    # DeleteData frees a's own blobs, keeps the one b still uses
    op = api.jobs.DeleteData(pjs_pb2.DeleteProjectJobDataRequest(job_id=a), metadata=api.md)
    assert op.done and not op.HasField("error")
    assert api.get(a).data_cleared
    blobs = server.thread.server.blobs
    import hashlib

    assert blobs.exists(hashlib.sha256(shared).hexdigest())
    assert not blobs.exists(job_a.output_files[0].sha256)
    assert not (state / "jobs" / a).exists()
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.DownloadJobFiles(
            pjs_pb2.DownloadProjectJobFilesRequest(job_id=a, files=list(job_a.output_files)), metadata=api.md
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Delete removes the job; the shared blob goes when nothing uses it
    api.jobs.Delete(pjs_pb2.DeleteProjectJobRequest(job_id=b), metadata=api.md)
    with pytest.raises(grpc.RpcError) as e:
        api.get(b)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not blobs.exists(hashlib.sha256(shared).hexdigest())


def test_sweeper_clears_expired_data(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.create("echo x > ${O}", outputs=[("o", "O")])
    api.run(job_id)
    api.jobs.SetDataTtl(
        pjs_pb2.SetProjectJobDataTtlRequest(job_id=job_id, ttl=timedelta(seconds=0)), metadata=api.md
    )
    jobs = server.thread.server.jobs

    async def sweep() -> list[str]:
        return jobs.sweep()

    assert server.thread.call(sweep()) == [job_id]
    assert api.get(job_id).data_cleared


def test_delete_all_data_and_delete_of_running_job(api: Api) -> None:
    a = api.create("true", project="z")
    api.run(a)
    running = api.create("echo started; sleep 30", project="z")
    op = api.execute(running)
    _wait_log(api, running, b"started")
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.Delete(pjs_pb2.DeleteProjectJobRequest(job_id=running), metadata=api.md)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    api.jobs.DeleteAllData(pjs_pb2.DeleteAllProjectJobDataRequest(project_id="z"), metadata=api.md)
    assert api.get(a).data_cleared and not api.get(running).data_cleared
    api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=running), metadata=api.md)
    api.wait(op)


def test_clone_merges_overrides_and_links_parent(api: Api) -> None:
    src = api.create(
        "echo ${A} ${B} $E",
        arguments=[jobs_pb2.Argument(name="A", value="1"), jobs_pb2.Argument(name="B", value="2")],
        env=jobs_pb2.Environment(vars={"E": "e1"}),
    )
    api.run(src)
    overrides = jobs_pb2.JobParameters(arguments=[jobs_pb2.Argument(name="B", value="20")])
    overrides.env.vars["E"] = "e2"
    op = api.jobs.Clone(
        pjs_pb2.CloneProjectJobRequest(source_job_id=src, job_parameters_overrides=overrides, name="forked"),
        metadata=api.md,
    )
    resp = pjs_pb2.CloneProjectJobResponse()
    assert op.response.Unpack(resp)
    job, _ = api.run(resp.job_id)
    assert job.parent_job_id == src and job.name == "forked"
    assert b"".join(c for s, c in api.logs(resp.job_id) if s == "OUT") == b"1 20 e2\n"
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.Clone(pjs_pb2.CloneProjectJobRequest(source_job_id="nope"), metadata=api.md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_finalize_cleans_the_work_dir(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.create("echo hi > scratch.txt")
    api.run(job_id)
    work = Path(server.info.state_dir) / "work" / job_id
    assert (work / "scratch.txt").exists()
    resp = api.jobs.Finalize(pjs_pb2.FinalizeProjectJobRequest(job_id=job_id), metadata=api.md)
    assert resp.job_id == job_id and not work.exists()
    assert api.logs(job_id)  # logs are kept


def test_project_disk_and_instance_types(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    job_id = api.create(
        "echo $DS_PROJECT_HOME; touch ${DS_PROJECT_HOME}/mark",
        attach_project_disk=True,
        cloud_instance_types=[jobs_pb2.CloudInstanceType(name="c1.8")],
    )
    job, _ = api.run(job_id)
    assert job.status == S.SUCCESS and job.actual_cloud_instance_type.name == "c1.8"
    assert (Path(server.info.state_dir) / "projects" / "proj" / "mark").exists()


def test_connection_file_is_private(server) -> None:  # type: ignore[no-untyped-def]
    path = Path(server.info.state_dir) / "ds-jobs-server.json"
    assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(path.read_text())
    assert data["token"] == "test-token" and data["endpoint"] == server.info.endpoint
    assert data["endpoint"].startswith("127.0.0.1:")


def test_sweeper_keeps_fresh_unreferenced_blobs_and_drops_old_ones(server) -> None:  # type: ignore[no-untyped-def]
    from jupyter_ds_jobs.server.jobs import BLOB_GRACE_S

    blobs = server.thread.server.blobs
    jobs = server.thread.server.jobs
    w = blobs.writer()
    w.write(b"orphan")
    sha, _ = w.commit()

    async def sweep(now: float) -> list[str]:
        return jobs.sweep(now)

    server.thread.call(sweep(time.time()))
    assert blobs.exists(sha)  # fresh: maybe an output whose reference is about to be stored
    server.thread.call(sweep(time.time() + BLOB_GRACE_S + 1))
    assert not blobs.exists(sha)


def test_a_change_made_while_the_job_runs_is_kept(api: Api) -> None:
    job_id = api.create("echo started; sleep 0.5")
    op = api.execute(job_id)
    _wait_log(api, job_id, b"started")
    api.jobs.SetDataTtl(pjs_pb2.SetProjectJobDataTtlRequest(job_id=job_id), metadata=api.md)  # keep forever
    api.wait(op)
    job = api.get(job_id)
    assert job.status == S.SUCCESS and not job.HasField("data_expires_at")


def test_plain_commands_run_without_a_shell_and_shell_syntax_with_one(api: Api, tmp_path: Path) -> None:
    import shutil

    from jupyter_ds_jobs.server.executors.local import direct_argv

    path = str(Path(shutil.which("python") or "/usr/bin/python").parent)
    assert direct_argv("python main.py a b", path) == [str(Path(path) / "python"), "main.py", "a", "b"]
    for shelly in ("echo $HOME", "a | b", "x=1 cmd", "./run.sh", "cat *.txt", "echo 'a b'", "a; b"):
        assert direct_argv(shelly, path) is None, shelly
    assert direct_argv("no-such-command-here x", path) is None  # bash reports it, exit 127
    job, _ = api.run(api.create("python -V"))
    assert job.status == S.SUCCESS
    job, op = api.run(api.create("no-such-command-here x"))
    assert execute_response(op).result.return_code == 127


def test_an_output_symlinked_out_of_the_job_dir_is_not_collected(api: Api, tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("server file")
    job_id = api.create(
        f"ln -s {secret} out.txt; echo ok > fine.txt", outputs=[("out.txt", ""), ("fine.txt", "")]
    )
    job, op = api.run(job_id)
    assert job.status == S.SUCCESS
    resp = execute_response(op)
    assert [f.file.desc.path for f in resp.output_files] == ["fine.txt"]
    [err] = resp.output_files_errors
    assert err.output_file_desc.path == "out.txt" and err.type == S.FileUploadError.UPLOAD_FAILED
    assert "escapes the job directory" in err.description


def test_progress_reader_takes_complete_new_lines_only(tmp_path: Path) -> None:
    from jupyter_ds_jobs.server.runtime import _ProgressReader

    path = tmp_path / "job_progress.jsonl"
    reader = _ProgressReader(path)
    assert reader.latest() is None  # no file yet
    path.write_text('{"message": "a", "progress": 10}\n{"message": "b", "progress": 20}\n{"message": "c"')
    assert reader.latest() == ("b", 20)  # the last complete line; the partial one waits
    assert reader.latest() is None  # nothing new
    with open(path, "a") as f:
        f.write(', "progress": 30}\nnot json\n')
    assert reader.latest() == ("c", 30)  # completed; the malformed line is skipped
    with open(path, "a") as f:
        f.write("x" * (3 * _ProgressReader.MAX_LINE) + '\n{"message": "d", "progress": 40}\n')
    assert reader.latest() == ("d", 40)  # an overlong line is dropped, not held


def test_operation_kinds_are_stored_by_name_and_described(server, api: Api) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    src = api.create("true", project="k")
    clone = api.jobs.Clone(pjs_pb2.CloneProjectJobRequest(source_job_id=src), metadata=api.md)
    _, execute = api.run(src)
    ops = [
        api.ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=api.md)
        for op in (
            clone,
            execute,
            api.jobs.DeleteData(pjs_pb2.DeleteProjectJobDataRequest(job_id=src), metadata=api.md),
            api.jobs.DeleteAllData(pjs_pb2.DeleteAllProjectJobDataRequest(project_id="k"), metadata=api.md),
        )
    ]
    assert [op.description for op in ops] == [
        "Clone job",
        "Execute job",
        "Delete job data",
        "Delete all jobs data",
    ]
    delete = api.jobs.Delete(pjs_pb2.DeleteProjectJobRequest(job_id=src), metadata=api.md)
    assert delete.description == "Delete job" and delete.done
    db = sqlite3.connect(f"file:{Path(server.info.state_dir) / 'jobs.sqlite'}?mode=ro", uri=True)
    try:
        kinds = {row[0] for row in db.execute("SELECT kind FROM operations")}
    finally:
        db.close()
    # the clone's create operation, and the delete that replaced src's own operations
    assert kinds == {"clone", "delete", "delete_all_data"}
    fresh = api.jobs.Create(
        pjs_pb2.CreateProjectJobRequest(project_id="k", job_parameters=jobs_pb2.JobParameters(cmd="true")),
        metadata=api.md,
    )
    assert fresh.description == "Create job"
    assert fresh.created_at.ToNanoseconds() <= fresh.modified_at.ToNanoseconds()


def test_data_ttl_counts_from_creation_and_negative_ttls_are_refused(api: Api) -> None:
    def create(ttl: timedelta) -> op_pb2.Operation:
        return api.jobs.Create(
            pjs_pb2.CreateProjectJobRequest(
                project_id="t", job_parameters=jobs_pb2.JobParameters(cmd="true"), data_ttl=ttl
            ),
            metadata=api.md,
        )

    resp = pjs_pb2.CreateProjectJobResponse()
    assert create(timedelta(minutes=90, microseconds=5)).response.Unpack(resp)
    job = api.get(resp.job_id)
    assert job.data_expires_at.ToDatetime() - job.created_at.ToDatetime() == timedelta(
        minutes=90, microseconds=5
    )
    for call, field in (
        (lambda: create(timedelta(seconds=-1)), "data_ttl"),
        (
            lambda: api.jobs.SetDataTtl(
                pjs_pb2.SetProjectJobDataTtlRequest(job_id=resp.job_id, ttl=timedelta(seconds=-1)),
                metadata=api.md,
            ),
            "ttl",
        ),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith(field)


def test_blob_downloads_stream_in_chunks_with_the_sha256_as_etag(api: Api) -> None:
    import urllib.error
    import urllib.request
    from email.message import Message

    payload = os.urandom(2 * 2**20 + 12345)  # more than two 1 MiB reads
    job_id = api.create("cp in.bin ${OUT}", inputs={"in.bin": (payload, "")}, outputs=[("out.bin", "OUT")])
    _, op = api.run(job_id)
    [out] = execute_response(op).output_files
    etag = f'"{out.file.sha256}"'

    def request(method: str, headers: dict[str, str]) -> tuple[int, Message, bytes]:
        req = urllib.request.Request(out.url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    status, headers, body = request("GET", {})
    assert status == 200 and body == payload and headers["ETag"] == etag
    assert headers["Content-Type"] == "application/octet-stream"
    status, headers, body = request("HEAD", {})
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(payload)
    assert headers["ETag"] == etag and headers["Accept-Ranges"] == "bytes"
    start, end = 2**20 - 7, 2 * 2**20 + 9  # across both read boundaries
    status, headers, body = request("GET", {"Range": f"bytes={start}-{end}"})
    assert status == 206 and body == payload[start : end + 1] and headers["ETag"] == etag
    assert headers["Content-Range"] == f"bytes {start}-{end}/{len(payload)}"
    assert request("GET", {"If-None-Match": etag})[0] == 304
    assert request("GET", {"Range": f"bytes={len(payload)}-"})[0] == 416
