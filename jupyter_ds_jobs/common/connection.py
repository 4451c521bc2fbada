"""The connection file of a job server: where it listens and with which token.

A running server writes ``ds-jobs-server.json`` (mode 0600) into its state dir (mode 0700)
and into the Jupyter runtime dir::

    {"endpoint": "127.0.0.1:40123", "http_url": "http://127.0.0.1:40124",
     "token": "...", "pid": 1234, "state_dir": "/home/u/.local/share/jupyter/ds-jobs",
     "version": "0.1.0", "isolation": "landlock (ABI 7)"}

``isolation`` says how the server confines its jobs (see ``server/sandbox.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from jupyter_core.paths import jupyter_data_dir, jupyter_runtime_dir

from jupyter_ds_jobs.common.errors import FailedPrecondition

__all__ = [
    "CONNECTION_FILE_NAME",
    "ConnectionInfo",
    "blob_path",
    "default_state_dir",
    "pid_alive",
    "runtime_dir",
    "server_alive",
]

CONNECTION_FILE_NAME = "ds-jobs-server.json"


def runtime_dir() -> Path:
    """The Jupyter runtime dir (jupyter_core's: ``JUPYTER_RUNTIME_DIR`` overrides)."""
    return Path(jupyter_runtime_dir())


def default_state_dir() -> Path:
    """Where the embedded server keeps its state (``DS_JOBS_STATE_DIR`` overrides)."""
    env = os.environ.get("DS_JOBS_STATE_DIR")
    if env:
        return Path(env)
    return Path(jupyter_data_dir()) / "ds-jobs"


def blob_path(blob_root: Path, sha256: str) -> Path:
    """Where the job server keeps the blob ``sha256`` under its ``blobs`` dir (one layout for the
    server and for clients on the same machine)."""
    return blob_root / sha256[:2] / sha256


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (of any user; a zombie counts until it is reaped)."""
    return pid > 0 and bool(psutil.pid_exists(pid))


def server_alive(pid: int) -> bool:
    """Whether the job server ``pid`` still runs (a zombie, dead but not reaped, does not)."""
    return pid_alive(pid) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@dataclass(frozen=True)
class ConnectionInfo:
    endpoint: str
    http_url: str
    token: str
    pid: int
    state_dir: str
    version: str = ""
    isolation: str = ""
    #: The server speaks TLS (gRPC and its HTTP file endpoint); ``ca_file`` is the PEM CA that
    #: signed its certificate when the operator gave one (clients trust it beside the system roots).
    tls: bool = False
    ca_file: str = ""

    def write(self, path: Path) -> None:
        """Write atomically with mode 0600."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> ConnectionInfo:
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in ("endpoint", "http_url", "token", "pid", "state_dir")},
                       version=data.get("version", ""), isolation=data.get("isolation", ""),
                       tls=bool(data.get("tls", False)), ca_file=str(data.get("ca_file") or ""))  # fmt: skip
        except FileNotFoundError:
            raise FailedPrecondition(f"no job server connection file at {path}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise FailedPrecondition(f"unreadable job server connection file {path}: {e}") from None

    @classmethod
    def find(cls, state_dir: Path | None = None) -> ConnectionInfo | None:
        """The connection of a live server: from ``state_dir`` if given, else the runtime dir."""
        path = (state_dir if state_dir else runtime_dir()) / CONNECTION_FILE_NAME
        try:
            info = cls.read(path)
        except FailedPrecondition:
            return None
        # A server that died but was not reaped (its starter, a kernel, lives on) is a zombie: gone.
        return info if server_alive(info.pid) else None

    def remove_from(self, path: Path) -> None:
        """Remove ``path`` if it still describes this server."""
        with contextlib.suppress(FailedPrecondition, OSError):
            if ConnectionInfo.read(path).pid == self.pid:
                path.unlink()
