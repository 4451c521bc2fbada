"""The job server's side of a Ray job: one signed HTTP channel per run, served on the file port.

``/ray/<key>/<action>?exp=..&sig=..`` (HMAC-SHA256 of the key and expiry with the server's
secret; a random key per run, never the job id):

- ``GET spec``: the command's argv, working dir, environment and GPU count (never put on the
  Ray job's command line, which the Ray dashboard shows to anyone who can reach it);
- ``POST out?source=1|2&offset=N``: a chunk of stdout / stderr at byte offset N of that stream.
  Bytes already received are skipped (a retried post is never doubled); a gap is refused (409).
  Answers the stream's new offset;
- ``GET signal``: a long poll (up to 25 s) for the signals to send to the job's process group;
- ``POST exit?code=N[&memory=1]``: the command ended (after both streams were drained);
  ``memory=1``: the wrapper killed it over its instance type's memory;
- ``GET wrapper`` / ``GET apply``: the wrapper's own source and the sandbox's exec wrapper, for a
  node that has nothing of this package (the entrypoint only bootstraps from here);
- ``GET file?path=P``: streams file ``P`` of the job's working dir (a regular file, no link
  followed); ``PUT file?path=P``: streams an output of the job into its working dir (a new
  regular file; an existing link or a path through one is refused). Only while the job runs.

``POST out?source=3`` appends to the job's progress file (``job_progress.jsonl``) the way stdout
and stderr are appended to the log: a node-local job's progress reaches the server as it is
written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tornado.http1connection
import tornado.web

from jupyter_ds_jobs.common.contract import MAX_FILE_BYTES, is_safe_relpath
from jupyter_ds_jobs.server.executors import _ray_wrapper, _sandbox_apply
from jupyter_ds_jobs.server.executors.base import PROGRESS_FILE, OutputSink

__all__ = ["Channel", "RayChannels"]

POLL_S = 25.0
PROGRESS_SOURCE = 3
CHUNK = 1 << 20
_SOURCES: dict[str, str] = {}


def _source(module: Any) -> str:
    """A module's source text, read once."""
    path = str(module.__file__)
    if path not in _SOURCES:
        _SOURCES[path] = Path(path).read_text(encoding="utf-8")
    return _SOURCES[path]


@dataclass
class Channel:
    key: str
    spec: dict[str, Any]
    sink: OutputSink
    offsets: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, PROGRESS_SOURCE: 0})
    signals: list[int] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    exit: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    fetched: bool = False
    memory_exceeded: bool = False  # the wrapper killed the job over its memory

    @property
    def workdir(self) -> Path:
        return Path(self.spec["cwd"])

    def send(self, signum: int) -> None:
        self.signals.append(signum)
        self.wake.set()


class RayChannels:
    """The open channels, by key; ``base_url`` is the server's HTTP address (set at start)."""

    def __init__(self, secret: bytes, url_ttl: float = 30 * 86400) -> None:
        self.secret = secret
        self.url_ttl = url_ttl
        self.base_url = ""
        self._open: dict[str, Channel] = {}

    def _sig(self, key: str, exp: int) -> str:
        return hmac.new(self.secret, f"ray\n{key}\n{exp}".encode(), hashlib.sha256).hexdigest()

    def open(self, spec: dict[str, Any], sink: OutputSink) -> tuple[Channel, str]:
        """A new channel and its signed URL."""
        ch = Channel(secrets.token_hex(16), spec, sink)
        self._open[ch.key] = ch
        exp = int(time.time() + self.url_ttl)
        return ch, f"{self.base_url}/ray/{ch.key}?exp={exp}&sig={self._sig(ch.key, exp)}"

    def close(self, ch: Channel) -> None:
        self._open.pop(ch.key, None)

    def lookup(self, key: str, exp: str | None, sig: str | None) -> Channel | None:
        try:
            exp_i = int(exp or "")
        except ValueError:
            return None
        if not sig or not hmac.compare_digest(self._sig(key, exp_i), sig) or exp_i < time.time():
            return None
        return self._open.get(key)

    def routes(self) -> list[Any]:
        return [
            (r"/ray/([0-9a-f]{32})/(spec|out|signal|exit|wrapper|apply)", ChannelHandler, {"channels": self}),
            (r"/ray/([0-9a-f]{32})/file", FileHandler, {"channels": self}),
        ]


def _lookup(handler: tornado.web.RequestHandler, channels: RayChannels, key: str) -> Channel | None:
    ch = channels.lookup(
        key, handler.get_query_argument("exp", None), handler.get_query_argument("sig", None)
    )
    if ch is None:
        handler.send_error(403)
    return ch


class ChannelHandler(tornado.web.RequestHandler):
    channels: RayChannels

    def initialize(self, channels: RayChannels) -> None:  # type: ignore[override]  # route kwargs
        self.channels = channels

    def _channel(self, key: str) -> Channel | None:
        return _lookup(self, self.channels, key)

    async def get(self, key: str, action: str) -> None:
        ch = self._channel(key)
        if ch is None:
            return
        if action == "spec":
            ch.fetched = True
            self.finish(json.dumps(ch.spec))
        elif action in ("wrapper", "apply"):
            self.set_header("Content-Type", "text/x-python; charset=utf-8")
            self.finish(_source(_ray_wrapper if action == "wrapper" else _sandbox_apply))
        elif action == "signal":
            if not ch.signals:
                ch.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ch.wake.wait(), POLL_S)
            sigs, ch.signals[:] = list(ch.signals), []
            self.finish({"signals": sigs})
        else:
            self.send_error(405)

    def post(self, key: str, action: str) -> None:
        ch = self._channel(key)
        if ch is None:
            return
        if action == "out":
            source, offset = int(self.get_query_argument("source")), int(self.get_query_argument("offset"))
            have = ch.offsets.get(source)
            if have is None or offset > have:
                self.send_error(409 if have is not None else 400)
                return
            chunk = self.request.body[have - offset :]
            if chunk and source == PROGRESS_SOURCE:
                with open(ch.workdir / PROGRESS_FILE, "ab") as f:
                    f.write(chunk)
            elif chunk:
                ch.sink(source, chunk)
            ch.offsets[source] = have + len(chunk)
            self.finish({"offset": ch.offsets[source]})
        elif action == "exit":
            if not ch.exit.done():
                ch.memory_exceeded = self.get_query_argument("memory", "") == "1"
                ch.exit.set_result(int(self.get_query_argument("code")))
            self.finish({})
        else:
            self.send_error(405)


def _safe_target(root: Path, rel: str) -> Path | None:
    """``root/rel`` when ``rel`` is a safe relative path and no dir on the way is a link."""
    if not is_safe_relpath(rel):
        return None
    here = root
    for part in Path(rel).parts[:-1]:
        here = here / part
        try:
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                return None
        except FileNotFoundError:
            break
    return root / rel


@tornado.web.stream_request_body
class FileHandler(tornado.web.RequestHandler):
    """A job's files, streamed both ways (never whole in memory): inputs out to a node, outputs
    back from it. Writes go to a temp file, linked into place when the body is complete."""

    channels: RayChannels

    def initialize(self, channels: RayChannels) -> None:  # type: ignore[override]  # route kwargs
        self.channels = channels
        self._out: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._dest: Path | None = None
        self._size = 0

    def prepare(self) -> None:
        if self.request.method != "PUT":
            return
        ch = _lookup(self, self.channels, self.path_args[0])
        if ch is None:
            return
        rel = self.get_query_argument("path", "")
        dest = _safe_target(ch.workdir, rel)
        if dest is None or (dest.exists() or dest.is_symlink()):
            self.send_error(400 if dest is None else 409, reason="bad or existing output path")
            return
        conn = self.request.connection
        if isinstance(conn, tornado.http1connection.HTTP1Connection):
            conn.set_max_body_size(MAX_FILE_BYTES)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._dest, self._tmp = dest, dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
        self._out = open(self._tmp, "xb")  # noqa: SIM115  # closed in put / on_finish

    def data_received(self, chunk: bytes) -> None:
        if self._out is not None:
            self._size += len(chunk)
            self._out.write(chunk)

    def put(self, key: str) -> None:
        if self._out is None or self._tmp is None or self._dest is None:
            return
        self._out.close()
        self._out = None
        try:
            os.link(self._tmp, self._dest)  # never over what is there (a link the job left, say)
        except FileExistsError:
            self.send_error(409, reason="the output path exists")
            return
        finally:
            self._tmp.unlink(missing_ok=True)
        self.finish({"size": self._size})

    def on_finish(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def on_connection_close(self) -> None:
        self.on_finish()

    async def get(self, key: str) -> None:
        ch = _lookup(self, self.channels, key)
        if ch is None:
            return
        dest = _safe_target(ch.workdir, self.get_query_argument("path", ""))
        try:
            fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW) if dest is not None else -1
        except OSError:
            fd = -1
        if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd >= 0:
                os.close(fd)
            self.send_error(404)
            return
        with os.fdopen(fd, "rb") as f:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            while chunk := f.read(CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()
