"""The HTTP side of the job server: signed blob uploads (PUT) and downloads (GET, with Range).

Served by tornado on the same event loop as the gRPC server.
"""

from __future__ import annotations

import re
from typing import Any

import tornado.httpserver
import tornado.web

from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument, NotFound
from jupyter_ds_jobs.server.blobs import CHUNK, BlobStore, BlobWriter

__all__ = ["make_http_server"]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@tornado.web.stream_request_body
class BlobHandler(tornado.web.RequestHandler):
    store: BlobStore
    writer: BlobWriter | None = None
    failed: DsJobsError | None = None

    def initialize(self, store: BlobStore) -> None:
        self.store = store

    def _fail(self, err: DsJobsError) -> None:
        self.set_status(err.http_status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(str(err) + "\n")

    def prepare(self) -> None:
        sha = self.path_kwargs["sha"]
        try:
            if self.request.method == "PUT":
                size = self.store.verify(
                    "PUT", sha, self.get_query_argument("exp", None), self.get_query_argument("sig", None),
                    self.get_query_argument("size", None),
                )  # fmt: skip
                declared = self.request.headers.get("Content-Length")
                if declared is not None and size is not None and int(declared) != size:
                    raise InvalidArgument(f"Content-Length {declared} differs from the file's size {size}")
                if self.store.exists(sha):
                    return  # already have it: accept and discard the body
                self.writer = self.store.writer(expect_sha=sha, expect_size=size)
            elif self.request.method in ("GET", "HEAD"):
                self.store.verify(
                    "GET",
                    sha,
                    self.get_query_argument("exp", None),
                    self.get_query_argument("sig", None),
                    None,
                )
        except DsJobsError as e:
            self.failed = e
            self._fail(e)

    def data_received(self, chunk: bytes) -> None:
        if self.writer is None or self.failed is not None:
            return
        try:
            self.writer.write(chunk)
        except DsJobsError as e:
            self.writer.abort()
            self.writer = None
            self.failed = e

    def on_connection_close(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def put(self, sha: str) -> None:
        if self.failed is not None:
            if not self._finished:
                self._fail(self.failed)
            return
        if self.writer is not None:
            try:
                self.writer.commit()
            except DsJobsError as e:
                self._fail(e)
                return
            finally:
                self.writer = None
        self.set_status(201)
        self.finish()

    async def get(self, sha: str) -> None:
        await self._serve(sha, body=True)

    async def head(self, sha: str) -> None:
        await self._serve(sha, body=False)

    async def _serve(self, sha: str, body: bool) -> None:
        if self._finished:
            return
        try:
            path = self.store.path(sha)
            if not path.is_file():
                raise NotFound(f"blob {sha} not found")
        except DsJobsError as e:
            self._fail(e)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.request.headers.get("Range")
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("ETag", f'"{sha}"')
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                self.finish()
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: last N bytes
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                self.finish()
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        length = end - start + 1 if size else 0
        self.set_header("Content-Length", str(length))
        if not body:
            self.finish()
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                self.write(chunk)
                await self.flush()
        self.finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}\n")


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


def make_http_server(store: BlobStore) -> tornado.httpserver.HTTPServer:
    app = tornado.web.Application(
        [
            (r"/blobs/(?P<sha>[^/?]+)", BlobHandler, {"store": store}),
            (r"/health", HealthHandler),
        ],
    )
    return tornado.httpserver.HTTPServer(app, max_body_size=6 * 2**30, idle_connection_timeout=300)
