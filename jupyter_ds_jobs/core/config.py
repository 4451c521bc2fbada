"""User settings of the client: which server, which project, which token, defaults.

Kept per user as JSON (mode 0600, since it may hold a token) in the Jupyter config dir::

    ~/.jupyter/ds_jobs.json
    {"endpoint": "datasphere", "project": "bt1...", "token": null,
     "defaults": {"cloud_instance_type": "c1.4", "data_ttl_days": 14}}

Environment variables win over the file: ``DS_JOBS_ENDPOINT``, ``DS_JOBS_TOKEN``,
``DS_JOBS_PROJECT`` (and ``DS_JOBS_CONFIG`` names another file). ``endpoint`` is
``host:port`` (``grpcs://`` / ``grpc://`` force TLS or not), or ``datasphere`` for the
DataSphere profile, or empty for the embedded local server.

Used by the CLI and by ``%ds_config``; imports nothing from IPython.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from jupyter_ds_jobs.common.errors import InvalidArgument

__all__ = ["ENV_ENDPOINT", "ENV_PROJECT", "ENV_TOKEN", "Settings", "settings_path"]

ENV_ENDPOINT = "DS_JOBS_ENDPOINT"
ENV_TOKEN = "DS_JOBS_TOKEN"
ENV_PROJECT = "DS_JOBS_PROJECT"
ENV_CONFIG = "DS_JOBS_CONFIG"
FILE_NAME = "ds_jobs.json"


def settings_path() -> Path:
    """``DS_JOBS_CONFIG``, else ``ds_jobs.json`` in the Jupyter config dir."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    try:
        from jupyter_core.paths import jupyter_config_dir

        return Path(jupyter_config_dir()) / FILE_NAME
    except ImportError:  # pragma: no cover - jupyter_core comes with nbformat
        return Path.home() / ".jupyter" / FILE_NAME


@dataclass
class Settings:
    """What the user configured. Empty strings / None mean "not set"."""

    endpoint: str = ""
    project: str = ""
    token: str | None = None
    operation_endpoint: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
        """The file (missing: empty settings), then environment overrides."""
        s = cls.load_file(path)
        e = os.environ if env is None else env
        if e.get(ENV_ENDPOINT):
            s.endpoint = e[ENV_ENDPOINT]
        if e.get(ENV_TOKEN):
            s.token = e[ENV_TOKEN]
        if e.get(ENV_PROJECT):
            s.project = e[ENV_PROJECT]
        return s

    @classmethod
    def load_file(cls, path: Path | None = None) -> Settings:
        """Only what the file says (no environment); missing file: empty settings."""
        p = path or settings_path()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"cannot read settings file {p}: {e}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"settings file {p} must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"settings file {p}: unknown key(s) {', '.join(unknown)}")
        s = cls(**data)
        if not isinstance(s.defaults, dict):
            raise InvalidArgument(f"settings file {p}: 'defaults' must be an object")
        return s

    def save(self, path: Path | None = None) -> Path:
        """Write atomically, mode 0600; return the path."""
        p = path or settings_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
        os.replace(tmp, p)
        return p

    def public(self) -> dict[str, Any]:
        """As a dict with the token masked (for display)."""
        d = asdict(self)
        if d.get("token"):
            d["token"] = "***"
        return d
