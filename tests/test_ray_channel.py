"""The Ray job channel's file routes (``ray_channel``): what a node may read from and write to a
job's dir on the server. A real tornado HTTP server on a free loopback port, real files; no Ray
needed (the wrapper's side runs in tests/test_ray_node.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_ds_jobs.server.executors import _ray_wrapper
from jupyter_ds_jobs.server.executors.ray_channel import RayChannels


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Bench:
    """One channel on a live server, over the job dir ``work`` (beside ``outside``)."""

    def __init__(self, root: Path) -> None:
        self.work, self.outside = root / "work", root / "outside"
        self.work.mkdir()
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text("server secret")
        (self.work / "in.txt").write_text("input")
        (self.work / "sub").mkdir()
        (self.work / "sub" / "deep.txt").write_text("deep")
        (self.work / "leak").symlink_to(self.outside / "secret.txt")
        (self.work / "outdir").symlink_to(self.outside, target_is_directory=True)
        self.channels = RayChannels(b"k" * 32)
        self.client = tornado.httpclient.AsyncHTTPClient()

    async def start(self) -> None:
        port = _port()
        self.server = tornado.httpserver.HTTPServer(tornado.web.Application(self.channels.routes()))
        self.server.listen(port, "127.0.0.1")
        self.channels.base_url = f"http://127.0.0.1:{port}"
        self.ch, self.url = self.channels.open({"cwd": str(self.work)}, lambda s, c: None)

    def file_url(self, path: str, url: str | None = None) -> str:
        return _ray_wrapper.file_url(url or self.url, path)

    async def fetch(self, url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
        resp = await self.client.fetch(url, method=method, body=body, raise_error=False)
        return resp.code, resp.body or b""


def _run(test: Callable[[Bench], Coroutine[Any, Any, None]], root: Path) -> None:
    async def main() -> None:
        bench = Bench(root)
        await bench.start()
        try:
            await test(bench)
        finally:
            bench.server.stop()

    # its own thread and loop: an earlier test of the session may have left a loop running in
    # this one (asyncio.run refuses then)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the channel test did not end in 120 s"
    if errors:
        raise errors[0]


async def _reads(b: Bench) -> None:
    assert await b.fetch(b.file_url("in.txt")) == (200, b"input")
    assert await b.fetch(b.file_url("sub/deep.txt")) == (200, b"deep")
    for bad in ("leak", "outdir/secret.txt", "../outside/secret.txt", str(b.outside / "secret.txt"),
                "sub", "missing.txt", ""):  # fmt: skip
        code, body = await b.fetch(b.file_url(bad))
        assert code == 404, bad
        assert b"server secret" not in body
    unsigned = b.file_url("in.txt").replace("sig=", "sig=0")
    assert (await b.fetch(unsigned))[0] == 403


def test_a_node_reads_regular_files_of_its_job_dir_only(tmp_path: Path) -> None:
    _run(_reads, tmp_path)


async def _writes(b: Bench) -> None:
    assert (await b.fetch(b.file_url("res/out.txt"), "PUT", b"result"))[0] == 200
    assert (b.work / "res/out.txt").read_bytes() == b"result"
    assert (await b.fetch(b.file_url("res/out.txt"), "PUT", b"again"))[0] == 409  # never over it
    assert (await b.fetch(b.file_url("leak"), "PUT", b"x"))[0] == 409  # nor over a link
    assert (b.outside / "secret.txt").read_text() == "server secret"
    for bad in ("outdir/new.txt", "../outside/new.txt", str(b.outside / "new.txt"), ""):
        assert (await b.fetch(b.file_url(bad), "PUT", b"x"))[0] == 400, bad
    assert sorted(p.name for p in b.outside.iterdir()) == ["secret.txt"]
    assert not [p for p in b.work.rglob(".*part-*")]  # no temp file left behind
    b.channels.close(b.ch)  # the run is over: its URL opens nothing any more
    assert (await b.fetch(b.file_url("in.txt")))[0] == 403
    assert (await b.fetch(b.file_url("late.txt"), "PUT", b"x"))[0] == 403


def test_a_node_writes_new_files_inside_its_job_dir_only(tmp_path: Path) -> None:
    _run(_writes, tmp_path)


async def _streams(b: Bench) -> None:
    big = os.urandom(3 << 20)  # three of the channel's 1 MiB chunks, and a part
    assert (await b.fetch(b.file_url("big.bin"), "PUT", big))[0] == 200
    assert await b.fetch(b.file_url("big.bin")) == (200, big)


def test_files_of_several_chunks_go_both_ways_intact(tmp_path: Path) -> None:
    _run(_streams, tmp_path)


_PATHS = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["..", ".", "", "/", "sub", "leak", "outdir", "a", "%2e%2e", "\x00", "~"]),
             max_size=6).map("/".join),
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(paths=st.lists(_PATHS, min_size=1, max_size=8))
def test_fuzzed_paths_get_a_clear_status_and_nothing_lands_outside(tmp_path_factory: pytest.TempPathFactory,
                                                                    paths: list[str]) -> None:  # fmt: skip
    root = tmp_path_factory.mktemp("fuzz")

    async def fuzz(b: Bench) -> None:
        for path in paths:
            for method, body in (("GET", None), ("PUT", b"x")):
                code, got = await b.fetch(b.file_url(path), method, body)
                assert code in (200, 400, 404, 409), (path, method, code)
                assert b"server secret" not in got
        assert sorted(p.name for p in b.outside.iterdir()) == ["secret.txt"]
        assert (b.outside / "secret.txt").read_text() == "server secret"
        assert all(
            os.path.realpath(p).startswith(str(b.work)) for p in b.work.rglob("*") if not p.is_symlink()
        )

    _run(fuzz, root)
