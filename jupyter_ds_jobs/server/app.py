"""Assemble and run the local job server: gRPC (grpc.aio) and HTTP (tornado) on one event loop.

Embedding::

    with ServerThread(ServerOptions(state_dir=tmp)) as info:   # a real server on free loopback ports
        client = JobsClient(info.endpoint, token=info.token)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from jupyter_ds_jobs._proto import ops_grpc, pjs_grpc, ps_grpc
from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.common.connection import (
    CONNECTION_FILE_NAME,
    ConnectionInfo,
    default_state_dir,
    runtime_dir,
)
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.server.blobs import BlobStore
from jupyter_ds_jobs.server.executors import Executor, LocalExecutor, ZygoteExecutor
from jupyter_ds_jobs.server.executors.ray_channel import RayChannels
from jupyter_ds_jobs.server.http import make_http_server
from jupyter_ds_jobs.server.jobs import Jobs
from jupyter_ds_jobs.server.logs import LogStore
from jupyter_ds_jobs.server.operations import Operations
from jupyter_ds_jobs.server.resources import (
    GIB,
    Capacity,
    Profile,
    Resources,
    default_profiles,
    load_profiles,
)
from jupyter_ds_jobs.server.runtime import JobManager
from jupyter_ds_jobs.server.sandbox import Isolation, RunAs, Sandbox
from jupyter_ds_jobs.server.service import (
    AuthInterceptor,
    DecodeInterceptor,
    JobService,
    OperationService,
    ProjectService,
)
from jupyter_ds_jobs.server.store import Store
from jupyter_ds_jobs.server.validation import DEFAULT_INSTANCE_TYPES, MAX_REQUEST_BYTES

__all__ = ["JobServer", "ServerOptions", "ServerThread", "run_server"]

log = logging.getLogger("jupyter_ds_jobs.server")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    state_dir: Path = field(default_factory=default_state_dir)
    token: str | None = None
    max_concurrent_jobs: int = 2
    default_ttl_days: float | None = 14.0
    instance_types: tuple[str, ...] = tuple(DEFAULT_INSTANCE_TYPES)
    env_cache_cap_bytes: int | None = None
    find_links: tuple[str, ...] = ()
    sweep_interval: float = 60.0
    write_runtime_file: bool = True
    python_envs: bool = True
    warm_start: bool = True  # cell jobs fork a warm interpreter (see executors/zygote.py)
    isolation: Isolation = Isolation.AUTO  # how jobs are confined (see sandbox.py)
    run_as: str | None = None  # a root server runs its jobs as this user
    sandbox_read: tuple[str, ...] = ()  # more paths sandboxed jobs may read
    #: TLS for gRPC and the HTTP file endpoint (both or neither): a PEM certificate chain and its
    #: key; ``tls_ca`` is the CA clients should trust, recorded in the connection file.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: Where job commands run: "local" (subprocesses here) or "ray" (docs/ray.md:
    #: Ray jobs on the cluster whose Jobs API is ``ray_address``, or "auto" for a local head).
    executor: str = "local"
    ray_address: str = "auto"
    #: Where a Ray job's files are: "auto", "shared" or "node" (docs/ray.md, "Files and environments").
    ray_workdir: str = "auto"
    ray_python: str = "python3"  # the Python a node runs the job wrapper with (not "shared")
    #: Resources (docs/server.md, "Resources"): instance types as profiles (None: the contract's
    #: table, or ``instance_types_file``'s), the machine's capacity as declared (None: detected).
    instance_type_profiles: dict[str, Profile] | None = None
    instance_types_file: Path | None = None
    cpus: int | None = None
    memory_gib: float | None = None
    gpus: int | None = None
    strict_resources: bool = False


class JobServer:
    def __init__(self, opts: ServerOptions) -> None:
        self.opts = opts
        self.state_dir = Path(opts.state_dir).expanduser().resolve()
        self.token = opts.token or secrets.token_urlsafe(24)
        self.info: ConnectionInfo | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.ray_channels: RayChannels | None = None  # the Ray executor's job channels

    def _build(self) -> Jobs:
        sd = self.state_dir
        run_as = RunAs.lookup(self.opts.run_as) if self.opts.run_as else None
        lay_out_state_dir(sd, run_as)
        self.sandbox = Sandbox.create(
            Isolation(self.opts.isolation),
            tmp_root=sd / "tmp",
            protected=[sd, runtime_dir()],
            read_only=[Path(p) for p in self.opts.sandbox_read],
            cache_dirs=[sd / "envs"],
            run_as=run_as,
        )
        self.store = Store(sd / "jobs.sqlite")
        self.blobs = BlobStore(sd / "blobs", BlobStore.load_secret(sd / "secret.key"))
        self.logs = LogStore(sd / "jobs")
        self.resources = _resources(self.opts)
        log.info("resources: %s; instance types that fit: %s", self.resources.capacity.describe(),
                 ", ".join(n for n in self.resources.profiles if self.resources.fitted(n)) or "none")  # fmt: skip
        environments = None
        if self.opts.python_envs:
            from jupyter_ds_jobs.server.environments import EnvironmentCache

            environments = EnvironmentCache(
                sd / "envs", size_cap_bytes=self.opts.env_cache_cap_bytes, find_links=self.opts.find_links
            )
        executor = self._executor()
        self.manager = JobManager(
            self.store,
            self.blobs,
            self.logs,
            sd / "jobs",
            sd / "projects",
            max_concurrent=self.opts.max_concurrent_jobs,
            environments=environments,
            executor=executor,
            work_root=sd / "work",
            resources=self.resources,
        )
        ttl = timedelta(days=self.opts.default_ttl_days) if self.opts.default_ttl_days else None
        return Jobs(
            self.store,
            self.blobs,
            self.logs,
            self.manager,
            instance_types=self.resources.profiles,
            default_ttl=ttl,
            resources=self.resources,
            environments=environments,
        )

    def _executor(self) -> Executor:
        if self.opts.executor == "ray":
            from jupyter_ds_jobs.server.executors.ray_executor import WORKDIR_MODES, RayExecutor

            self.ray_channels = RayChannels(self.blobs.secret)
            store = self.store
            if self.opts.ray_workdir not in WORKDIR_MODES:
                raise InvalidArgument(f"--ray-workdir: {self.opts.ray_workdir!r} is none of {WORKDIR_MODES}")
            ray = RayExecutor(
                self.opts.ray_address, self.ray_channels, store.get_job, self.sandbox,
                workdir_mode=self.opts.ray_workdir, node_python=self.opts.ray_python,
                find_links=tuple(self.opts.find_links), profiles=self.resources.profiles,
            )  # fmt: skip
            self._use_cluster_capacity(ray)
            return ray
        if self.opts.executor != "local":
            raise InvalidArgument(f"--executor: {self.opts.executor!r} is neither 'local' nor 'ray'")
        return ZygoteExecutor(self.sandbox) if self.opts.warm_start else LocalExecutor(self.sandbox)

    def _use_cluster_capacity(self, ray: Any) -> None:
        """Instance types are checked at Create against the Ray cluster's CPUs, memory and GPUs
        (what is declared with --cpus / --memory-gib / --gpus still wins), not this machine's."""
        o = self.opts
        try:
            totals = {k: t for k, (_, t) in ray.cluster().items()}
        except Exception as e:  # any failure: the cluster may come up later
            log.warning("the Ray cluster at %s did not answer (%s): instance types are checked "
                        "against this machine's resources until the server restarts", o.ray_address, e)  # fmt: skip
            return
        cpus = o.cpus if o.cpus is not None else max(1, int(totals.get("CPU", 1)))
        gpus = o.gpus if o.gpus is not None else int(totals.get("GPU", 0))
        mem = int(o.memory_gib * GIB) if o.memory_gib is not None else int(totals.get("memory", 0)) or GIB
        capacity = Capacity(tuple(range(cpus)), mem, tuple(str(i) for i in range(gpus)))
        self.resources = Resources(self.resources.profiles, capacity, strict=o.strict_resources)
        log.info("the Ray cluster has %s", capacity.describe())

    async def start(self) -> ConnectionInfo:
        self.jobs = self._build()
        interrupted = self.jobs.recover()
        if interrupted:
            log.warning("marked %d interrupted job(s) as ERROR: %s", len(interrupted), ", ".join(interrupted))
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.token), DecodeInterceptor()],  # the token first
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", 64 * 2**20),
                ("grpc.so_reuseport", 0),
            ],
        )
        ops = Operations(self.store, self.blobs)
        pjs_grpc.add_ProjectJobServiceServicer_to_server(JobService(self.jobs, ops), server)
        ops_grpc.add_OperationServiceServicer_to_server(OperationService(self.jobs, ops), server)
        ps_grpc.add_ProjectServiceServicer_to_server(ProjectService(self.store), server)
        host = self.opts.host
        bind = f"[{host}]" if ":" in host else host
        tls = _tls_credentials(self.opts)
        address = f"{bind}:{self.opts.port}"
        port = server.add_secure_port(address, tls[0]) if tls else server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{self.opts.port}")
        await server.start()
        self._grpc = server
        channels = self.ray_channels
        self._http = make_http_server(
            self.blobs, ssl_options=tls[1] if tls else None, routes=channels.routes() if channels else ()
        )
        sockets = _bind_tcp(host, self.opts.http_port)
        self._http.add_sockets(sockets)
        http_port = sockets[0].getsockname()[1]
        public = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
        pub = f"[{public}]" if ":" in public else public
        http_url = f"{'https' if tls else 'http'}://{pub}:{http_port}"
        self.blobs.base_url = http_url
        if channels is not None:
            channels.base_url = http_url
        self.info = ConnectionInfo(
            endpoint=f"{pub}:{port}",
            http_url=http_url,
            token=self.token,
            pid=os.getpid(),
            state_dir=str(self.state_dir),
            version=__version__,
            isolation=self.sandbox.describe(),
            tls=tls is not None,
            ca_file=str(Path(self.opts.tls_ca).expanduser().resolve()) if tls and self.opts.tls_ca else "",
        )
        self.info.write(self.state_dir / CONNECTION_FILE_NAME)
        if self.opts.write_runtime_file:
            with contextlib.suppress(OSError):
                self.info.write(runtime_dir() / CONNECTION_FILE_NAME)
        self._sweeper = asyncio.ensure_future(self._sweep_loop())
        log.info(
            "job server listening: grpc %s, http %s, state %s", self.info.endpoint, http_url, self.state_dir
        )
        _log_isolation(self.sandbox)
        return self.info

    async def _sweep_loop(self) -> None:
        while True:
            try:
                cleared = self.jobs.sweep()
                if cleared:
                    log.info("cleared data of expired jobs: %s", ", ".join(cleared))
            except Exception:
                log.exception("sweeper failed")
            await asyncio.sleep(self.opts.sweep_interval)

    async def stop(self, grace: float = 2.0) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.manager.shutdown()
        close = getattr(self.manager.executor, "close", None)
        if close is not None:
            await close()
        if self._http is not None:
            self._http.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self.info is not None:
            self.info.remove_from(self.state_dir / CONNECTION_FILE_NAME)
            if self.opts.write_runtime_file:
                self.info.remove_from(runtime_dir() / CONNECTION_FILE_NAME)
        self.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _resources(opts: ServerOptions) -> Resources:
    """The profiles this server accepts (``instance_types`` filters the contract's; types a file
    or ``instance_type_profiles`` adds are accepted too) and the machine's capacity."""
    profiles = opts.instance_type_profiles
    if profiles is None:
        profiles = load_profiles(opts.instance_types_file) if opts.instance_types_file else default_profiles()
    contract = default_profiles()
    accepted = {n: p for n, p in profiles.items() if n in opts.instance_types or n not in contract}
    if not accepted:
        raise InvalidArgument("--instance-types: none of them has a profile")
    capacity = Capacity.detect(opts.cpus, opts.memory_gib, opts.gpus)
    return Resources(accepted, capacity, strict=opts.strict_resources)


_PRIVATE_FILES = ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm", "secret.key", "server.log")


def lay_out_state_dir(sd: Path, run_as: RunAs | None) -> None:
    """Create the state dir's roots with their modes (docs/server.md, "State dir").

    The server's own files are 0600 in 0700 dirs. Jobs reach only ``work/`` (their working
    dirs), ``tmp/`` (their private TMPDIRs), ``envs/`` (read only) and ``projects/``; with
    ``run_as`` the state dir and those roots are 0711 (searchable, not listable) so that the
    job's user reaches them and nothing else.
    """
    reach = 0o711 if run_as is not None else 0o700
    sd.mkdir(parents=True, exist_ok=True)
    os.chmod(sd, reach)
    db = sd / "jobs.sqlite"
    if not db.exists():  # SQLite gives its -wal and -shm files the database's mode
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    for name in (*_PRIVATE_FILES, CONNECTION_FILE_NAME):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(sd / name, 0o600)
    modes = {"blobs": 0o700, "jobs": 0o700, "work": reach, "tmp": reach, "projects": reach}
    modes["envs"] = 0o755 if run_as is not None else 0o700
    for name, mode in modes.items():
        (sd / name).mkdir(exist_ok=True)
        os.chmod(sd / name, mode)
    for stale in (sd / "tmp").iterdir():  # private tmps of jobs of a server that is gone
        shutil.rmtree(stale, ignore_errors=True)


def _log_isolation(sandbox: Sandbox) -> None:
    log.info("jobs are isolated: %s", sandbox.describe())
    for mode, why in sandbox.fallback_reasons.items():
        log.log(
            logging.INFO if sandbox.mode is Isolation.LANDLOCK else logging.WARNING, "no %s: %s", mode, why
        )
    if sandbox.mode in (Isolation.PERMISSIONS, Isolation.NONE) and sandbox.run_as is None:
        log.warning("jobs run as the server's user and can read its files (token, key, database): "
                    "isolation %s", sandbox.mode.value)  # fmt: skip
    elif os.geteuid() == 0 and sandbox.run_as is None:
        log.warning("the server runs as root, and so do its jobs (without capabilities); "
                    "--run-as USER runs them as an unprivileged user")  # fmt: skip


def _tls_credentials(opts: ServerOptions) -> tuple[grpc.ServerCredentials, ssl.SSLContext] | None:
    """gRPC server credentials and the HTTPS context from ``--tls-cert`` / ``--tls-key``."""
    if opts.tls_cert is None and opts.tls_key is None:
        return None
    if opts.tls_cert is None or opts.tls_key is None:
        raise InvalidArgument("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
    cert, key = Path(opts.tls_cert).expanduser(), Path(opts.tls_key).expanduser()
    try:
        chain, private = cert.read_bytes(), key.read_bytes()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
    except OSError as e:
        raise InvalidArgument(f"cannot read {e.filename or cert}: {e.strerror or e}") from None
    except ssl.SSLError as e:
        raise InvalidArgument(f"{cert} and {key} are not a PEM certificate and its key: {e}") from None
    return grpc.ssl_server_credentials([(private, chain)]), ctx


def _bind_tcp(host: str, port: int) -> list[socket.socket]:
    from tornado.netutil import bind_sockets

    return bind_sockets(port, address=host or None, reuse_port=False)


class ServerThread:
    """Run a JobServer on its own event loop in a daemon thread (tests, embedding)."""

    def __init__(self, opts: ServerOptions) -> None:
        self.opts = opts
        self.server: JobServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> ConnectionInfo:
        self._thread = threading.Thread(target=self._main, name="ds-jobs-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self.server is not None and self.server.info is not None
        return self.server.info

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            self.server = JobServer(self.opts)
            loop.run_until_complete(self.server.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self.server.wait_stopped())
        finally:
            loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self.server is not None and self.loop is not None and self.loop.is_running():
            self.call(self.server.stop(grace), timeout=60)
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> ConnectionInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(opts: ServerOptions, announce: bool = True) -> int:
    """Run in the foreground until SIGINT / SIGTERM; return an exit code."""

    async def main() -> None:
        server = JobServer(opts)
        info = await server.start()
        if announce:
            print(
                f"ds-jobs server {__version__}\n"
                f"  grpc endpoint: {info.endpoint}\n"
                f"  http url:      {info.http_url}\n"
                f"  state dir:     {info.state_dir}\n"
                f"  isolation:     {info.isolation}\n"
                f"  connection:    {Path(info.state_dir) / CONNECTION_FILE_NAME}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if announce:
            print("stopping: cancelling running jobs", flush=True)
        await server.stop()

    asyncio.run(main())
    return 0
