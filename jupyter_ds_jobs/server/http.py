"""The HTTP side of the job server: signed blob uploads (PUT, streamed into the store) and
downloads (GET / HEAD, with Range, served by tornado's ``StaticFileHandler``).

Served by tornado on the same event loop as the gRPC server. A blob's ETag is its sha256, its
name: nothing reads a file to version it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Generator, Sequence
from typing import Any

import tornado.httpserver
import tornado.web

from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument, NotFound
from jupyter_ds_jobs.server.blobs import CHUNK, BlobStore, BlobWriter

__all__ = ["make_http_server"]


@tornado.web.stream_request_body
class BlobHandler(tornado.web.StaticFileHandler):
    """``/blobs/<sha256>``: the signature is checked in :meth:`prepare`, before any body is read."""

    store: BlobStore
    writer: BlobWriter | None = None
    failed: DsJobsError | None = None

    def initialize(self, store: BlobStore) -> None:  # type: ignore[override]  # the route's kwargs
        super().initialize(path=str(store.root))
        self.store = store

    def _fail(self, err: DsJobsError) -> None:
        self.set_status(err.http_status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(str(err) + "\n")

    def prepare(self) -> None:
        sha = self.path_args[0]
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
                    "GET", sha, self.get_query_argument("exp", None), self.get_query_argument("sig", None), None
                )  # fmt: skip
                if not self.store.exists(sha):
                    raise NotFound(f"blob {sha} not found")
        except DsJobsError as e:
            self.failed = e
            self._fail(e)

    # -- PUT ------------------------------------------------------------------
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

    # -- GET / HEAD: StaticFileHandler over the store's layout ------------------------
    def parse_url_path(self, url_path: str) -> str:
        return os.path.relpath(self.store.path(url_path), self.root)

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        return os.path.basename(abspath)  # the sha256: never hash a (5 GiB) blob to version it

    def compute_etag(self) -> str | None:
        assert self.absolute_path is not None
        return f'"{self.get_content_version(self.absolute_path)}"'

    @classmethod
    def get_content(
        cls, abspath: str, start: int | None = None, end: int | None = None
    ) -> Generator[bytes, None, None]:
        """The bytes in [start, end) in CHUNK reads (tornado's own reads 64 KiB, a flush each)."""
        with open(abspath, "rb") as f:
            f.seek(start or 0)
            left = (os.fstat(f.fileno()).st_size if end is None else end) - (start or 0)
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def get_content_type(self) -> str:
        return "application/octet-stream"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}\n")


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


def make_http_server(
    store: BlobStore, *, ssl_options: ssl.SSLContext | None = None, routes: Sequence[Any] = ()
) -> tornado.httpserver.HTTPServer:
    """The file endpoint (signed blob PUT / GET, ``/health``, an executor's ``routes``: the Ray
    executor's job channels); HTTPS with ``ssl_options``."""
    app = tornado.web.Application(
        [
            (r"/blobs/([^/?]+)", BlobHandler, {"store": store}),
            (r"/health", HealthHandler),
            *routes,
        ],
    )
    return tornado.httpserver.HTTPServer(
        app, max_body_size=6 * 2**30, idle_connection_timeout=300, ssl_options=ssl_options
    )
