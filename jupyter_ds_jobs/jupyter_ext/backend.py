"""The extension's way to the job service: one :class:`JobsClient` and a thread pool.

The client is made as the magic makes it (:meth:`JobsClient.connect`: the configured endpoint and
token, ``DS_JOBS_*`` / the settings file, else the embedded local server, found or started), on
first use and in a pool thread, never on the event loop. Every blocking call runs in the pool
(:meth:`JobsBackend.run`); streams (logs, events) run in their own threads (``streams.py``). When
the embedded server stops answering, the client is dropped and the next call finds (or starts)
the server again, at whatever port it now has.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument, NotFound, Unavailable
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.config import Settings
from jupyter_ds_jobs.core.reads import list_page

__all__ = ["BackendOptions", "JobsBackend"]

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendOptions:
    """What the extension's traits say (empty: as the magic decides)."""

    endpoint: str = ""
    token: str = ""
    project: str = ""
    state_dir: str = ""
    start_server: bool = True
    max_workers: int = 8


class JobsBackend:
    """The client, the pool, and the notebook runs started here (followed to their end so the
    executed notebook lands beside the original)."""

    def __init__(self, options: BackendOptions, root_dir: str) -> None:
        self.options = options
        self.root_dir = Path(root_dir).expanduser().resolve()
        self._pool = ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="ds-jobs-ext")
        self._lock = threading.Lock()
        self._client: JobsClient | None = None
        self._local = False
        self.closed = False
        self.notebook_threads: list[threading.Thread] = []

    # -- the client -------------------------------------------------------------------
    def client(self) -> JobsClient:
        """The client, connected on first use (blocking: call it in a pool or stream thread)."""
        with self._lock:
            if self._client is None:
                if self.closed:
                    raise Unavailable("the Jupyter server extension is stopping")
                o = self.options
                settings = Settings.load()
                self._local = not (o.endpoint or settings.endpoint)
                self._client = JobsClient.connect(
                    o.endpoint or None,
                    o.token or None,
                    o.project or None,
                    start=o.start_server,
                    settings=settings,
                    state_dir=Path(o.state_dir).expanduser() if o.state_dir else None,
                )
            return self._client

    def forget(self, client: JobsClient) -> None:
        """Drop ``client`` after it lost an embedded server (the next call finds it again)."""
        with self._lock:
            if self._client is client and self._local:
                self._client = None
                client.close()

    def call(self, fn: Callable[Concatenate[JobsClient, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(client, ...)`` in this thread."""
        client = self.client()
        try:
            return fn(client, *args, **kwargs)
        except Unavailable:
            self.forget(client)
            raise

    async def run(self, fn: Callable[Concatenate[JobsClient, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(client, ...)`` in the pool, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self.call, fn, *args, **kwargs))

    async def in_pool(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Any blocking ``fn`` in the pool, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def status(self) -> dict[str, Any]:
        """Which job server, and whether it answers (blocking)."""
        o = self.options
        out: dict[str, Any] = {"endpoint": o.endpoint, "local": not o.endpoint, "project": o.project}
        try:
            settings = Settings.load()
            out["local"] = not (o.endpoint or settings.endpoint)
            out["endpoint"] = o.endpoint or settings.endpoint
            client = self.client()
            out.update(endpoint=client.endpoint, project=client.project_id, tls=client.tls)
            if self._local and client.local_blobs is not None:
                out["state_dir"] = str(client.local_blobs.parent)
            self.call(list_page, page_size=1)
        except DsJobsError as e:
            out.update(reachable=False, message=str(e))
            return out
        out.update(reachable=True, message="")
        return out

    # -- notebooks --------------------------------------------------------------------
    def notebook_path(self, path: str) -> Path:
        """``path`` (relative to the Jupyter root, ``/``-separated) as a notebook file under it."""
        if not path.strip():
            raise InvalidArgument("must name a notebook", field="path")
        if path.startswith(("/", "\\")) or "\x00" in path:
            raise InvalidArgument("must be relative to the Jupyter server's root", field="path")
        full = (self.root_dir / path).resolve()
        if not full.is_relative_to(self.root_dir):
            raise InvalidArgument(f"{path!r} is outside the Jupyter server's root", field="path")
        if not full.is_file():
            err = NotFound(f"no such notebook: {path!r}")
            err.field = "path"
            raise err
        if full.suffix != ".ipynb":
            raise InvalidArgument(f"{path!r} is not a notebook (.ipynb)", field="path")
        return full

    def run_notebook(self, path: Path, parameters: Mapping[str, Any]) -> str:
        """Create and start the notebook job (blocking); a thread follows it to its end and puts the
        executed notebook and the files it wrote beside the notebook, as ``run-notebook`` does."""
        from jupyter_ds_jobs.notebooks import run_notebook

        run = self.call(lambda c: run_notebook(path, parameters, wait=False, quiet=True, client=c))

        def finish() -> None:
            try:
                run.wait()
            except Exception as e:  # logged: nobody awaits this thread
                log.warning("ds-jobs: notebook job %s of %s: %s", run.job_id, path, e)
            finally:
                run.close()

        t = threading.Thread(target=finish, name=f"ds-jobs-notebook-{run.job_id}", daemon=True)
        t.start()
        self.notebook_threads.append(t)
        return run.job_id

    # -- the end ----------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
