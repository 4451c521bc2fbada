"""The Jupyter server extension's REST API (api/openapi.yaml) on a real Jupyter server (pytest-jupyter's
``jp_fetch``) against a real job server (the ``server`` fixture): lists and paging, one job with its
progress, cancel, clone (run with the changed arg), TTL, delete, files streamed, a job's log as
server-sent events (live, resumed exactly from every event id), job changes as events (resumed,
reset), a notebook run as a job, and errors as JSON 400/404/409, never 500 for bad input.

pytest-jupyter's fixtures are imported here, not registered as a plugin: their autouse fixtures
(an event loop per test, a ServerApp cleanup) then stay in this module.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import tomllib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_jupyter.jupyter_server import *  # noqa: F403 - the jp_* fixtures, kept to this module
from tornado.httpclient import HTTPResponse

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.jupyter_ext import DsJobsApp, _jupyter_server_extension_points
from jupyter_ds_jobs.jupyter_ext.wire import job_json
from jupyter_ds_jobs.packaging.jobspec import LocalFile
from tests.notebookhelpers import write_notebook

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
Fetch = Callable[..., Coroutine[Any, Any, HTTPResponse]]


@pytest.fixture(autouse=True)
def _private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_JOBS_CACHE_DIR", str(tmp_path / "client-cache"))
    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "no-settings.json"))
    for k in ("DS_JOBS_ENDPOINT", "DS_JOBS_TOKEN", "DS_JOBS_PROJECT"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def jp_server_config(server: Any) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_ds_jobs.jupyter_ext": True}},
        "DsJobsApp": {
            "endpoint": server.info.endpoint,
            "token": server.info.token,
            "project": "proj",
            "events_poll_interval": 0.05,
        },
    }


@pytest.fixture
def client(server: Any) -> Iterator[JobsClient]:
    with JobsClient(server.info.endpoint, server.info.token, project_id="proj") as c:
        yield c


@pytest.fixture
def run(jp_asyncio_loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return jp_asyncio_loop.run_until_complete


def script_job(client: JobsClient, tmp: Path, source: str, **params: Any) -> str:
    script = tmp / f"s{time.monotonic_ns()}.py"
    script.write_text(source)
    p = jobs_pb2.JobParameters(cmd="python script.py", **params)
    return client.create(p, [LocalFile(script, "script.py", "", False)], name=params.get("name", "t"))


def wait_status(client: JobsClient, job_id: str, statuses: set[int], timeout: float = 30) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while (job := client.get(job_id)).status not in statuses:
        assert time.monotonic() < deadline, jobs_pb2.JobStatus.Name(job.status)
        time.sleep(0.02)
    return job


async def call(fetch: Fetch, method: str, *parts: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    """One request; (status, parsed JSON body or None)."""
    if body is not None:
        kw["body"] = body if isinstance(body, str | bytes) else json.dumps(body)
    elif method in ("POST", "PUT"):
        kw["body"] = ""
    r = await fetch(*parts, method=method, raise_error=False, **kw)
    return r.code, (json.loads(r.body) if r.body else None)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events as {"event", "id", "data"}; comments and retry lines dropped."""
    out = []
    for block in text.split("\n\n"):
        ev: dict[str, Any] = {"event": "message", "id": None, "data": None}
        for line in block.split("\n"):
            key, _, value = line.partition(": ")
            if key in ("event", "id"):
                ev[key] = value
            elif key == "data":
                ev["data"] = json.loads(value)
        if ev["data"] is not None:
            out.append(ev)
    return out


class Stream:
    """An SSE response read as it arrives (the fetch runs on the loop in the background)."""

    def __init__(
        self, fetch: Fetch, *parts: str, headers: dict[str, str] | None = None, **params: str
    ) -> None:
        self.chunks: list[bytes] = []
        self.task = asyncio.ensure_future(
            fetch(*parts, params=params, headers=headers or {}, streaming_callback=self.chunks.append,
                  request_timeout=50, raise_error=False)
        )  # fmt: skip

    @property
    def events(self) -> list[dict[str, Any]]:
        text = b"".join(self.chunks).decode()
        return parse_sse(text[: text.rfind("\n\n") + 2])

    async def until(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.events):
            assert time.monotonic() < deadline and not self.task.done(), self.events
            await asyncio.sleep(0.02)


def log_text(events: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(
        e["data"]["text"] for e in events if e["event"] == "message" and e["data"]["stream"] == stream
    )


# --------------------------------------------------------------------------- packaging


def test_enabled_on_install_by_the_wheels_server_config() -> None:
    conf = json.loads((ROOT / "jupyter-config/server-config/jupyter_ds_jobs.json").read_text())
    assert conf == {"ServerApp": {"jpserver_extensions": {"jupyter_ds_jobs.jupyter_ext": True}}}
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
        "wheel"
    ]
    assert shared["shared-data"]["jupyter-config/server-config/jupyter_ds_jobs.json"] == (
        "etc/jupyter/jupyter_server_config.d/jupyter_ds_jobs.json"
    )
    assert _jupyter_server_extension_points() == [{"module": "jupyter_ds_jobs.jupyter_ext", "app": DsJobsApp}]


def test_routes_and_methods_are_the_openapi_contract() -> None:
    from jupyter_ds_jobs.jupyter_ext.app import ROUTES

    spec = yaml.safe_load((ROOT / "api/openapi.yaml").read_text())
    served = {}
    for pattern, handler in ROUTES[:-1]:  # the last is the JSON 404 of every other path
        path = pattern.replace("([^/]+)", "{id}").replace("(.+)", "{path}")
        served[path] = {m for m in ("get", "post", "put", "delete") if m in vars(handler)}
    documented = {path: set(ops) - {"parameters"} for path, ops in spec["paths"].items()}
    assert served == documented


# --------------------------------------------------------------------------- reading


def test_status_list_paging_filter_and_one_job(
    jp_fetch: Fetch, run: Any, client: JobsClient, server: Any
) -> None:
    ids = [client.create(jobs_pb2.JobParameters(cmd="echo hi"), name=f"j{i}") for i in range(3)]

    async def go() -> None:
        code, st = await call(jp_fetch, "GET", "ds-jobs", "status")
        assert code == 200 and st["reachable"] is True and st["endpoint"] == server.info.endpoint
        assert st["project"] == "proj" and st["local"] is False and st["message"] == ""

        code, page = await call(jp_fetch, "GET", "ds-jobs", "jobs", params={"page_size": "2"})
        assert code == 200 and [j["id"] for j in page["jobs"]] == ids[:0:-1] and page["next_page_token"]
        code, rest = await call(
            jp_fetch,
            "GET",
            "ds-jobs",
            "jobs",
            params={"page_size": "2", "page_token": page["next_page_token"]},
        )
        assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next_page_token"] == ""
        assert page["jobs"][0] == job_json(client.get(ids[2]))
        assert (
            page["jobs"][0]["status"] == "CREATING" and page["jobs"][0]["job_parameters"]["cmd"] == "echo hi"
        )

        code, none = await call(jp_fetch, "GET", "ds-jobs", "jobs", params={"status": "success,error"})
        assert code == 200 and none["jobs"] == []
        code, some = await call(jp_fetch, "GET", "ds-jobs", "jobs", params={"status": "CREATING"})
        assert len(some["jobs"]) == 3

        code, one = await call(jp_fetch, "GET", "ds-jobs", "jobs", ids[1])
        assert code == 200 and one["id"] == ids[1] and one["name"] == "j1" and "progress" not in one

    run(go())


def test_bad_input_answers_json_400_404_409(
    jp_fetch: Fetch, run: Any, client: JobsClient, tmp_path: Path
) -> None:
    done = client.create(jobs_pb2.JobParameters(cmd="echo done"))
    client.run(done)
    created = client.create(
        jobs_pb2.JobParameters(cmd="echo ${N}", arguments=[jobs_pb2.Argument(name="N", value="1")])
    )
    cases: list[tuple[tuple[str, ...], dict[str, Any], int, str | None]] = [
        (("GET", "jobs", "dsj-nope"), {}, 404, None),
        (("GET", "jobs"), {"params": {"status": "RUNNING"}}, 400, "status"),
        (("GET", "jobs"), {"params": {"page_size": "0"}}, 400, "page_size"),
        (("GET", "jobs"), {"params": {"page_size": "many"}}, 400, "page_size"),
        (("GET", "jobs"), {"params": {"page_token": "forged"}}, 400, None),
        (("POST", "jobs", done, "cancel"), {"body": "{not json"}, 400, "body"),
        (("POST", "jobs", done, "cancel"), {"body": [1]}, 400, "body"),
        (("POST", "jobs", done, "cancel"), {"body": {"graceful": "yes"}}, 400, "graceful"),
        (("POST", "jobs", done, "cancel"), {"body": {"hard": True}}, 400, "hard"),
        (("POST", "jobs", done, "cancel"), {"body": {"graceful": True}}, 409, None),
        (("DELETE", "jobs", "dsj-nope"), {}, 404, None),
        (("PUT", "jobs", done, "ttl"), {"body": {"days": -1}}, 400, "days"),
        (("PUT", "jobs", done, "ttl"), {"body": {"days": "soon"}}, 400, "days"),
        (("PUT", "jobs", done, "ttl"), {"body": {"days": True}}, 400, "days"),
        (("PUT", "jobs", done, "ttl"), {"body": {}}, 400, "days"),
        (("POST", "jobs", created, "clone"), {"body": {"args": {"M": "2"}}}, 400, "args.M"),
        (("POST", "jobs", created, "clone"), {"body": {"env_vars": {"1BAD": "x"}}}, 400, "env_vars.1BAD"),
        (("POST", "jobs", created, "clone"), {"body": {"args": {"N": [1]}}}, 400, "args.N"),
        (
            ("POST", "jobs", created, "clone"),
            {"body": {"cloud_instance_type": "z9.9"}},
            400,
            "cloud_instance_type",
        ),
        (("GET", "jobs", done, "logs"), {"params": {"offset": "x"}}, 400, "offset"),
        (("GET", "jobs", done, "logs"), {"params": {"offset": "-2"}}, 400, "offset"),
        (("GET", "jobs", done, "logs"), {"headers": {"Last-Event-ID": "1:2:3"}}, 400, "Last-Event-ID"),
        (("GET", "jobs", done, "logs"), {"params": {"offset": str(10**9)}}, 400, None),  # the job server's
        (("GET", "jobs", "dsj-nope", "logs"), {}, 404, None),
        (("GET", "jobs", done, "files", "nope.txt"), {}, 404, "path"),
        (("GET", "jobs", done, "files", "stdout.log"), {"params": {"kind": "secret"}}, 400, "kind"),
        (("POST", "notebooks", "run"), {"body": {"path": "../outside.ipynb"}}, 400, "path"),
        (("POST", "notebooks", "run"), {"body": {"path": "/etc/passwd"}}, 400, "path"),
        (("POST", "notebooks", "run"), {"body": {"path": "missing.ipynb"}}, 404, "path"),
        (("POST", "notebooks", "run"), {"body": {"path": "x.ipynb", "parameters": [1]}}, 400, "parameters"),
        (("GET", "no-such-route"), {}, 404, None),
        (("PATCH", "jobs", done), {"body": "{}"}, 405, None),
    ]

    async def go() -> None:
        for (method, *parts), kw, want, field in cases:
            code, body = await call(jp_fetch, method, "ds-jobs", *parts, **kw)
            assert (code, body["field"]) == (want, field), (method, parts, kw, body)
            assert body["message"] and set(body) == {"message", "field"}
        # without Jupyter's token: refused by Jupyter's auth
        r = await jp_fetch("ds-jobs", "jobs", headers={"Authorization": ""}, raise_error=False)
        assert r.code == 403

    run(go())
    assert client.get(done).status == jobs_pb2.SUCCESS  # nothing above changed it


NO_SERVER = {"start_server": False, "state_dir": "/nonexistent/ds-jobs-state"}


@pytest.mark.parametrize(
    "jp_server_config",
    [{"ServerApp": {"jpserver_extensions": {"jupyter_ds_jobs.jupyter_ext": True}}, "DsJobsApp": NO_SERVER}],
)
def test_unreachable_job_server_is_said_by_status_and_503(jp_fetch: Fetch, run: Any) -> None:
    async def go() -> None:
        code, st = await call(jp_fetch, "GET", "ds-jobs", "status")
        assert code == 200 and st["reachable"] is False and st["local"] is True
        assert "no local job server is running" in st["message"]
        code, body = await call(jp_fetch, "GET", "ds-jobs", "jobs")
        assert code == 503 and "no local job server" in body["message"]

    run(go())


# --------------------------------------------------------------------------- logs


def test_log_events_resume_exactly_from_every_id(
    jp_fetch: Fetch, run: Any, client: JobsClient, tmp_path: Path
) -> None:
    src = "import sys\nfor i in range(30):\n    print('out', i, flush=True)\n    print('err', i, file=sys.stderr, flush=True)\nprint('héllo ✓')\n"
    job_id = script_job(client, tmp_path, src)
    assert client.run(job_id).ok

    async def read(**kw: Any) -> list[dict[str, Any]]:
        r = await jp_fetch("ds-jobs", "jobs", job_id, "logs", **kw)
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return parse_sse(r.body.decode())

    async def go() -> None:
        full = await read()
        end = full[-1]
        assert (
            end["event"] == "end"
            and end["data"]["status"] == "SUCCESS"
            and end["id"] == str(end["data"]["offset"])
        )
        body = [e for e in full if e["event"] == "message"]
        out = "".join(f"out {i}\n" for i in range(30)) + "héllo ✓\n"
        assert log_text(body) == out and log_text(body, "stderr") == "".join(f"err {i}\n" for i in range(30))
        assert {e["data"]["stream"] for e in body} >= {"stdout", "stderr", "system"}
        assert any(":" in e["id"] for e in body), "a batch of several streams gives N:K ids"
        assert len({e["id"] for e in body}) == len(body)
        for i, e in enumerate(body):
            rest = await read(headers={"Last-Event-ID": e["id"]})
            for stream in ("stdout", "stderr", "system"):  # nothing lost, nothing repeated
                assert log_text(rest, stream) == log_text(body[i + 1 :], stream), (e["id"], stream)
            assert rest[-1] == end
        # ?offset= is the same position as Last-Event-ID
        mid = body[len(body) // 2]["id"]
        assert await read(params={"offset": mid}) == await read(headers={"Last-Event-ID": mid})

    run(go())


def follower_threads(job_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"ds-jobs-ext-logs-{job_id}"]


def test_live_log_browser_gone_then_cancel_ends_the_stream(
    jp_fetch: Fetch,
    run: Any,
    client: JobsClient,
    tmp_path: Path,
    jp_http_port: int,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
) -> None:
    src = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"
    job_id = script_job(client, tmp_path, src)
    client.execute(job_id)

    async def browser_gone() -> None:
        """A browser that reads the first line and goes away stops its log follower."""
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        auth = "".join(f"{k}: {v}\r\n" for k, v in jp_auth_header.items())
        writer.write(
            f"GET {jp_base_url}ds-jobs/jobs/{job_id}/logs HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n{auth}\r\n".encode()
        )
        got = b""
        while b"started" not in got:
            got += await asyncio.wait_for(reader.read(4096), 10)
        assert follower_threads(job_id)
        writer.close()
        deadline = time.monotonic() + 5
        while follower_threads(job_id):
            assert time.monotonic() < deadline, "the log follower outlived its browser"
            await asyncio.sleep(0.05)

    async def go() -> None:
        await browser_gone()
        s = Stream(jp_fetch, "ds-jobs", "jobs", job_id, "logs")
        await s.until(lambda evs: "started" in log_text(evs))
        assert client.get(job_id).status == jobs_pb2.EXECUTING  # the line came while the job runs
        code, one = await call(jp_fetch, "GET", "ds-jobs", "jobs", job_id)
        assert code == 200 and one["status"] == "EXECUTING" and "progress" in one
        code, body = await call(jp_fetch, "DELETE", "ds-jobs", "jobs", job_id)
        assert code == 409 and body["message"]  # a running job is not deleted
        code, body = await call(
            jp_fetch, "POST", "ds-jobs", "jobs", job_id, "cancel", body={"graceful": False}
        )
        assert (code, body) == (202, {"id": job_id})
        r = await s.task
        assert r.code == 200
        assert s.events[-1]["event"] == "end" and s.events[-1]["data"]["status"] == "CANCELLED"

    run(go())
    assert client.get(job_id).status == jobs_pb2.CANCELLED


# --------------------------------------------------------------------------- changing, files


def test_clone_runs_the_copy_with_the_changed_arg(
    jp_fetch: Fetch, run: Any, client: JobsClient, tmp_path: Path
) -> None:
    src = "import os, sys\nprint('arg', sys.argv[1], os.environ.get('GREETING'))\n"
    job_id = script_job(client, tmp_path, src)
    p = client.get(job_id)
    assert p.status == jobs_pb2.CREATING
    params = jobs_pb2.JobParameters(
        cmd="python script.py ${N}", arguments=[jobs_pb2.Argument(name="N", value="1")]
    )
    params.input_files.extend(p.job_parameters.input_files)
    src_id = client.create(params)
    assert client.run(src_id).ok

    async def go() -> str:
        body = {"args": {"N": 2}, "env_vars": {"GREETING": "hi"}, "name": "copy"}
        code, got = await call(jp_fetch, "POST", "ds-jobs", "jobs", src_id, "clone", body=body)
        assert code == 201
        return str(got["id"])

    new_id = run(go())
    job = wait_status(client, new_id, {jobs_pb2.SUCCESS, jobs_pb2.ERROR})
    assert job.status == jobs_pb2.SUCCESS and job.name == "copy" and job.parent_job_id == src_id
    lines: list[bytes] = []
    client.follow_logs(new_id, lambda m: lines.append(m.content))
    assert b"arg 2 hi" in b"".join(lines)


def test_files_streamed_then_ttl_delete_data_delete(
    jp_fetch: Fetch, run: Any, client: JobsClient, tmp_path: Path
) -> None:
    src = "import pathlib\nprint('writing')\npathlib.Path('res.txt').write_text('R' * 300000)\npathlib.Path('d').mkdir()\npathlib.Path('d/x').write_text('x')\n"
    p = jobs_pb2.JobParameters(output_files=[jobs_pb2.FileDesc(path="res.txt"), jobs_pb2.FileDesc(path="d")])
    script = tmp_path / "script.py"
    script.write_text(src)
    p.cmd = "python script.py"
    job_id = client.create(p, [LocalFile(script, "script.py", "", False)])
    assert client.run(job_id).ok
    failing = client.create(jobs_pb2.JobParameters(cmd="sh -c 'exit 3'"))
    assert client.run(failing).return_code == 3

    async def go() -> None:
        code, one = await call(jp_fetch, "GET", "ds-jobs", "jobs", job_id)
        assert code == 200 and one["return_code"] == 0 and one["status"] == "SUCCESS"
        code, bad = await call(jp_fetch, "GET", "ds-jobs", "jobs", failing)
        assert code == 200 and bad["return_code"] == 3 and bad["status"] == "ERROR"
        code, files = await call(jp_fetch, "GET", "ds-jobs", "jobs", job_id, "files")
        by = {(f["kind"], f["path"]): f for f in files["files"]}
        assert code == 200 and {("output", "res.txt"), ("output", "d"), ("log", "stdout.log")} <= set(by)
        assert (
            by[("output", "res.txt")]["size_bytes"] == 300000
            and by[("output", "d")]["download_name"] == "d.zip"
        )
        chunks: list[bytes] = []
        r = await jp_fetch("ds-jobs", "jobs", job_id, "files", "res.txt", streaming_callback=chunks.append)
        assert b"".join(chunks) == b"R" * 300000 and len(chunks) > 1
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert r.headers["Content-Disposition"] == "attachment; filename*=UTF-8''res.txt"
        r = await jp_fetch("ds-jobs", "jobs", job_id, "files", "d")
        assert r.headers["Content-Type"] == "application/zip" and r.body[:2] == b"PK"
        r = await jp_fetch("ds-jobs", "jobs", job_id, "files", "stdout.log", params={"kind": "log"})
        assert r.code == 200

        code, _ = await call(jp_fetch, "PUT", "ds-jobs", "jobs", job_id, "ttl", body={"days": "infinity"})
        assert code == 204 and not client.get(job_id).HasField("data_expires_at")
        code, _ = await call(jp_fetch, "PUT", "ds-jobs", "jobs", job_id, "ttl", body={"days": 2})
        left = client.get(job_id).data_expires_at.seconds - time.time()
        assert code == 204 and 2 * 86400 - 60 < left <= 2 * 86400

        code, _ = await call(jp_fetch, "POST", "ds-jobs", "jobs", job_id, "delete-data")
        assert code == 204 and client.get(job_id).data_cleared
        code, body = await call(jp_fetch, "GET", "ds-jobs", "jobs", job_id, "files", "res.txt")
        assert code in (404, 409) and body["message"]

        code, _ = await call(jp_fetch, "DELETE", "ds-jobs", "jobs", job_id)
        assert code == 204
        code, _ = await call(jp_fetch, "GET", "ds-jobs", "jobs", job_id)
        assert code == 404

    run(go())


# --------------------------------------------------------------------------- events, notebooks


def test_job_changes_as_events_resumed_and_reset(
    jp_fetch: Fetch, run: Any, client: JobsClient, tmp_path: Path
) -> None:
    async def go() -> None:
        s = Stream(jp_fetch, "ds-jobs", "events")
        await s.until(lambda evs: any(e["event"] == "server" for e in evs))
        assert s.events[0]["data"] == {"reachable": True, "message": ""}
        job_id = await asyncio.to_thread(script_job, client, tmp_path, "print('x')\n")
        await s.until(lambda evs: any(e["data"].get("id") == job_id for e in evs))
        created = next(e for e in s.events if e["data"].get("id") == job_id)
        assert created["data"]["status"] == "CREATING" and created["data"]["previous_status"] is None
        assert created["data"]["job"]["id"] == job_id and created["data"]["deleted"] is False
        await asyncio.to_thread(client.run, job_id)
        await s.until(lambda evs: any(e["data"].get("status") == "SUCCESS" for e in evs))
        await asyncio.to_thread(client.delete, job_id)
        await s.until(lambda evs: any(e["data"].get("deleted") for e in evs))

        # a reconnect with the id of the first job event gets everything after it, in order
        mine = [e for e in s.events if e["id"]]
        again = Stream(jp_fetch, "ds-jobs", "events", headers={"Last-Event-ID": mine[0]["id"]})
        await again.until(lambda evs: len(evs) >= len(mine) - 1)
        assert [e["id"] for e in again.events] == [e["id"] for e in mine[1:]]
        bogus = Stream(jp_fetch, "ds-jobs", "events", headers={"Last-Event-ID": "other-3"})
        await bogus.until(lambda evs: bool(evs))
        assert bogus.events[0]["event"] == "reset"
        for st in (s, again, bogus):
            st.task.cancel()

    run(go())


def test_run_notebook_as_a_job_lands_the_executed_notebook(
    jp_fetch: Fetch, run: Any, client: JobsClient, jp_root_dir: Path
) -> None:
    (jp_root_dir / "sub").mkdir()
    write_notebook(
        jp_root_dir / "sub" / "nb.ipynb",
        [("code", "alpha = 1", ["parameters"]), ("code", "print('alpha is', alpha)")],
    )

    async def go() -> str:
        body = {"path": "sub/nb.ipynb", "parameters": {"alpha": 7}}
        code, got = await call(jp_fetch, "POST", "ds-jobs", "notebooks", "run", body=body)
        assert code == 201, got
        return str(got["id"])

    job_id = run(go())
    job = wait_status(client, job_id, {jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED}, timeout=45)
    assert job.status == jobs_pb2.SUCCESS and "sub/nb.ipynb" in job.desc
    executed = jp_root_dir / "sub" / "nb.executed.ipynb"
    deadline = time.monotonic() + 15
    while not executed.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "alpha is 7" in executed.read_text()
