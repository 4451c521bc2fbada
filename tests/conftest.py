"""Shared fixtures: a real job server on free loopback ports, with its own state dir; one private
Ray head for the session and a job server with ``executor="ray"`` on it (the Ray tests skip when
``ray.job_submission`` is not importable)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from jupyter_ds_jobs.common.connection import ConnectionInfo
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.wheels import build_wheel, write_simple_index

if TYPE_CHECKING:
    from tests.rayhead import RayHead


@pytest.fixture(autouse=True, scope="session")
def _isolated_jupyter_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep connection files and state of tests out of the user's Jupyter dirs."""
    base = tmp_path_factory.mktemp("jupyter")
    old = {k: os.environ.get(k) for k in ("JUPYTER_RUNTIME_DIR", "DS_JOBS_STATE_DIR", "JUPYTER_DATA_DIR")}
    os.environ["JUPYTER_RUNTIME_DIR"] = str(base / "runtime")
    os.environ["DS_JOBS_STATE_DIR"] = str(base / "state")
    os.environ["JUPYTER_DATA_DIR"] = str(base / "data")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class RunningServer:
    def __init__(self, thread: ServerThread, info: ConnectionInfo) -> None:
        self.thread = thread
        self.info = info

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.info.token}")]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.info.endpoint)


@pytest.fixture
def server_options(tmp_path: Path) -> ServerOptions:
    return ServerOptions(
        state_dir=tmp_path / "state", token="test-token", write_runtime_file=False, sweep_interval=3600
    )


@contextlib.contextmanager
def running_server(opts: ServerOptions) -> Iterator[RunningServer]:
    """A job server with ``opts`` on its own thread, stopped on the way out."""
    thread = ServerThread(opts)
    info = thread.start()
    try:
        yield RunningServer(thread, info)
    finally:
        thread.stop()


@pytest.fixture
def server(server_options: ServerOptions) -> Iterator[RunningServer]:
    with running_server(server_options) as s:
        yield s


# One Ray head for the whole session (tests/rayhead.py: 127.0.0.1, its own temp dir and ports,
# 2 CPUs and 2 declared GPUs): starting one takes seconds to a minute.
@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    pytest.importorskip("ray.job_submission")
    from tests.rayhead import start_head

    head = start_head(num_cpus=2, num_gpus=2, resources={"ds_test": 2})  # a custom resource too
    try:
        yield head
    finally:
        head.stop()


def ray_server_options(head: RayHead, state_dir: Path) -> ServerOptions:
    """A job server's options with ``executor="ray"`` on ``head``; its own capacity declares 2
    GPUs so that GPU types are accepted at Create."""
    return ServerOptions(
        state_dir=state_dir, token="test-token", write_runtime_file=False, sweep_interval=3600,
        executor="ray", ray_address=head.address, gpus=2,
    )  # fmt: skip


@pytest.fixture(scope="session")
def ray_server(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(ray_server_options(ray_head, tmp_path_factory.mktemp("ray") / "state")) as s:
        yield s


@pytest.fixture(scope="session")
def ray_node_server(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The same with ``ray_workdir="node"``: jobs in a private dir on the node, files streamed."""
    opts = ray_server_options(ray_head, tmp_path_factory.mktemp("raynode") / "state")
    opts.ray_workdir = "node"
    with running_server(opts) as s:
        yield s


# Tiny wheels built here and a local simple index over them: job environments without a network.
@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(d, "tinypkg", "1.0", {"tinypkg": "WHO = 'tinypkg 1.0'\n"})
    build_wheel(d, "shadowme", "1.0", {"shadowme": "WHO = 'installed'\n"})
    build_wheel(d, "bigpkg", "1.0", {"bigpkg": "DATA = '" + "x" * 300_000 + "'\n"})
    build_wheel(
        d,
        "dep-user",
        "2.0",
        {"depuser/__init__.py": "import tinypkg\n\ndef main():\n    print('hello from', tinypkg.WHO)\n"},
        ["tinypkg>=1"],
        console_scripts={"dep-user-hello": "depuser:main"},
    )
    build_wheel(d, "needs-missing", "1.0", {"needsmissing": ""}, ["no-such-dependency>=1"])
    return d


@pytest.fixture(scope="session")
def index_dir(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("simple")
    write_simple_index(d, sorted(wheelhouse.glob("*.whl")))
    return d


@pytest.fixture(scope="session")
def index_url(index_dir: Path) -> str:
    return index_dir.resolve().as_uri()
