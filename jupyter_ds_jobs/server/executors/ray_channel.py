"""The job server's side of a Ray job: one signed HTTP channel per run, served on the file port.

``/ray/<key>/<action>?exp=..&sig=..`` (HMAC-SHA256 of the key and expiry with the server's
secret; a random key per run, never the job id):

- ``GET spec``: the command's argv, working dir, environment and GPU count (never put on the
  Ray job's command line, which the Ray dashboard shows to anyone who can reach it);
- ``POST out?source=1|2&offset=N``: a chunk of stdout / stderr at byte offset N of that stream.
  Bytes already received are skipped (a retried post is never doubled); a gap is refused (409).
  Answers the stream's new offset;
- ``GET signal``: a long poll (up to 25 s) for the signals to send to the job's process group;
- ``POST exit?code=N``: the command ended (after both streams were drained).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.web

from jupyter_ds_jobs.server.executors.base import OutputSink

__all__ = ["Channel", "RayChannels"]

POLL_S = 25.0


@dataclass
class Channel:
    key: str
    spec: dict[str, Any]
    sink: OutputSink
    offsets: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    signals: list[int] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    exit: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    fetched: bool = False

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
        return [(r"/ray/([0-9a-f]{32})/(spec|out|signal|exit)", ChannelHandler, {"channels": self})]


class ChannelHandler(tornado.web.RequestHandler):
    channels: RayChannels

    def initialize(self, channels: RayChannels) -> None:  # type: ignore[override]  # route kwargs
        self.channels = channels

    def _channel(self, key: str) -> Channel | None:
        ch = self.channels.lookup(
            key, self.get_query_argument("exp", None), self.get_query_argument("sig", None)
        )
        if ch is None:
            self.send_error(403)
        return ch

    async def get(self, key: str, action: str) -> None:
        ch = self._channel(key)
        if ch is None:
            return
        if action == "spec":
            ch.fetched = True
            self.finish(json.dumps(ch.spec))
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
            if chunk:
                ch.sink(source, chunk)
                ch.offsets[source] = have + len(chunk)
            self.finish({"offset": ch.offsets[source]})
        elif action == "exit":
            if not ch.exit.done():
                ch.exit.set_result(int(self.get_query_argument("code")))
            self.finish({})
        else:
            self.send_error(405)
