"""User settings of the client: which server, which project, which token, defaults.

Kept per user as JSON (mode 0600, since it may hold a token) in the Jupyter config dir::

    ~/.jupyter/ds_jobs.json
    {"endpoint": "datasphere", "project": "bt1...", "token": null, "operation_endpoint": "",
     "defaults": {"instance_type": "c1.4", "graceful_timeout": 30.0, "data_ttl_days": 14.0}}

Environment variables win over the file: ``DS_JOBS_ENDPOINT``, ``DS_JOBS_TOKEN``,
``DS_JOBS_PROJECT`` (and ``DS_JOBS_CONFIG`` names another file). ``endpoint`` is
``host:port`` (``grpcs://`` / ``grpc://`` force TLS or not), or ``datasphere`` for the
DataSphere profile, or empty for the embedded local server.

Invariants: the known ``defaults.NAME`` are the fields of :class:`Defaults`, one table of their
types, meanings and checks. A value is converted and checked when it is set
(:meth:`Settings.update_file`, behind ``%ds_config``) and again when the file is read, so a
hand-edited bad value is an :class:`InvalidArgument` naming the key and the file, never a
string where a number belongs. Unknown keys, top-level or in ``defaults``, are refused with the
list of the known ones. ``defaults.cloud_instance_type`` (older files) is read as
``defaults.instance_type`` and written back under the new name.

Used by the CLI and by ``%ds_config``; imports nothing from IPython.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_config_dir

from jupyter_ds_jobs.common.contract import INSTANCE_TYPES
from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument

__all__ = ["ENV_ENDPOINT", "ENV_PROJECT", "ENV_TOKEN", "Defaults", "Settings", "settings_path"]

ENV_ENDPOINT = "DS_JOBS_ENDPOINT"
ENV_TOKEN = "DS_JOBS_TOKEN"
ENV_PROJECT = "DS_JOBS_PROJECT"
ENV_CONFIG = "DS_JOBS_CONFIG"
FILE_NAME = "ds_jobs.json"
#: ``data_ttl_days`` spelled as "keep forever" (read case-insensitively; written as the first).
FOREVER_WORDS = ("infinity", "inf", "never")
#: Older names of defaults, read as the new ones.
ALIASES = {"cloud_instance_type": "instance_type"}


def settings_path() -> Path:
    """``DS_JOBS_CONFIG``, else ``ds_jobs.json`` in the Jupyter config dir."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return Path(jupyter_config_dir()) / FILE_NAME


# --------------------------------------------------------------------------- value checks
# Each takes what %ds_config gives (a string) or what the JSON file holds, and returns the typed
# value or raises ValueError saying what was expected.


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value.strip()


def _instance_type(value: object) -> str:
    name = _text(value)
    if name not in INSTANCE_TYPES:
        raise ValueError(f"expected one of {', '.join(INSTANCE_TYPES)}, got {name!r}")
    return name


def _requirements(value: object) -> str:
    text = _text(value)
    return text.lower() if text.lower() in ("auto", "none") else text


def _python(value: object) -> str:
    text = _text(value) if isinstance(value, str) else value
    if not isinstance(text, str) or not re.fullmatch(r"\d+\.\d+", text):
        raise ValueError(f"expected MAJOR.MINOR as a string, e.g. '3.12', got {value!r}")
    return text


def _number(value: object, unit: str, *, forever: bool = False) -> float:
    if forever and isinstance(value, str) and value.strip().lower() in FOREVER_WORDS:
        return math.inf
    expected = f"a number of {unit} >= 0" + (" or 'infinity'" if forever else "")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {expected}, got {value!r}")
    try:
        n = float(value)
    except ValueError:
        raise ValueError(f"expected {expected}, got {value!r}") from None
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"expected {expected}, got {value!r}")
    return n


def _seconds(value: object) -> float:
    return _number(value, "seconds")


def _days(value: object) -> float:
    return _number(value, "days", forever=True)


def _json_value(value: object) -> str | float:
    """A checked value as the file holds it: keep-forever as ``"infinity"`` (JSON has no inf)."""
    if value == math.inf:
        return FOREVER_WORDS[0]
    assert isinstance(value, str | float), value
    return value


@dataclass(frozen=True)
class _Known:
    meaning: str
    check: Callable[[object], object]


def _known(meaning: str, check: Callable[[object], object]) -> dict[str, _Known]:
    return {"known": _Known(meaning, check)}


@dataclass(frozen=True)
class Defaults:
    """The known ``defaults.NAME``: what the magic uses when its option is not given.

    None: not set (the option's own default applies). The metadata of each field is its meaning
    and its check: this class is the one table of them.
    """

    instance_type: str | None = field(
        default=None,
        metadata=_known(f"cloud instance type: {', '.join(INSTANCE_TYPES)}", _instance_type),
    )
    requirements: str | None = field(
        default=None,
        metadata=_known("auto, none, or a requirements file (relative: beside the notebook)", _requirements),
    )
    python: str | None = field(
        default=None, metadata=_known("the job's Python, MAJOR.MINOR (default: the kernel's)", _python)
    )
    graceful_timeout: float | None = field(
        default=None,
        metadata=_known("seconds between the graceful-shutdown signal and SIGKILL, >= 0", _seconds),
    )
    data_ttl_days: float | None = field(
        default=None,
        metadata=_known("days the job's data is kept, >= 0, or infinity (default: the server's)", _days),
    )

    @staticmethod
    def known() -> dict[str, str]:
        """``{name: meaning}`` of every known default, in table order."""
        return {f.name: f.metadata["known"].meaning for f in fields(Defaults)}

    @staticmethod
    def check(name: str, value: object) -> object:
        """``value`` of ``defaults.<name>`` converted to its type; ValueError says what is expected."""
        known: _Known = next(f.metadata["known"] for f in fields(Defaults) if f.name == name)
        return known.check(value)

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: Path) -> Defaults:
        """From the file's ``defaults`` object (aliases read); errors name the key and ``where``."""
        known = cls.known()
        unknown = sorted(k for k in data if k not in known and k not in ALIASES)
        if unknown:
            raise InvalidArgument(
                f"settings file {where}: unknown key(s) {', '.join(f'defaults.{k}' for k in unknown)}; "
                f"known: {_known_keys()}"
            )
        values: dict[str, Any] = {}  # each checked to its field's type
        for key, value in data.items():
            name = ALIASES.get(key, key)
            if name in values and key != name:
                continue  # the new name wins over an alias
            try:
                values[name] = cls.check(name, value)
            except ValueError as e:
                raise InvalidArgument(
                    f"{e} (in the settings file {where})", field=f"defaults.{key}"
                ) from None
        return cls(**values)

    def to_json(self) -> dict[str, str | float]:
        """The set values as the file holds them (keep-forever as ``"infinity"``)."""
        out: dict[str, str | float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _json_value(value)
        return out

    @property
    def data_ttl(self) -> timedelta | None:
        """``data_ttl_days`` for a job's Create; None when not set or when kept forever."""
        if self.data_ttl_days is None or self.data_ttl_days == math.inf:
            return None
        return timedelta(days=self.data_ttl_days)

    @property
    def keep_data_forever(self) -> bool:
        """``data_ttl_days=infinity``: Create cannot say so; ``SetDataTtl`` without a ttl after it does."""
        return self.data_ttl_days == math.inf


#: Top-level keys whose value is a string; an empty one means "not set".
_TEXT_KEYS = ("endpoint", "project", "operation_endpoint", "auth", "yc_profile", "iam_endpoint", "ca_file")


def _known_keys() -> str:
    return ", ".join(
        ["endpoint", "project", "token", *_TEXT_KEYS[2:], *(f"defaults.{k}" for k in Defaults.known())]
    )


def _read(p: Path) -> dict[str, object]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"cannot read settings file {p}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"settings file {p} must hold a JSON object")
    return data


def _assign(data: dict[str, object], key: str, value: str) -> None:
    """Set (or, with an empty value, remove) ``key`` in the file's raw ``data``, checked."""
    if key.startswith("defaults."):
        name = ALIASES.get(key[len("defaults.") :], key[len("defaults.") :])
        if name in Defaults.known():
            raw = data.get("defaults")
            d = dict(raw) if isinstance(raw, dict) else {}
            for old in [name, *(a for a, new in ALIASES.items() if new == name)]:
                d.pop(old, None)
            if value.strip():
                try:
                    d[name] = _json_value(Defaults.check(name, value))
                except ValueError as e:
                    raise InvalidArgument(str(e), field=key) from None
            data["defaults"] = d
            return
    elif key in _TEXT_KEYS:
        if key == "auth" and value.strip():
            from jupyter_ds_jobs.core.credentials import parse_order

            try:
                value = ",".join(m.value for m in parse_order(value))
            except DsJobsError as e:
                raise InvalidArgument(str(e), field=key) from None
        data[key] = value
        return
    elif key == "token":
        data[key] = value or None
        return
    raise InvalidArgument(f"unknown setting {key!r}; known: {_known_keys()}")


@dataclass
class Settings:
    """What the user configured. Empty strings / None mean "not set"."""

    endpoint: str = ""
    project: str = ""
    token: str | None = None
    operation_endpoint: str = ""
    #: DataSphere sign-in: the order of the sources after YC_IAM_TOKEN ("oauth,md,yc", the
    #: official CLI's), the `yc` profile, and the IAM token service (default: Yandex Cloud's).
    auth: str = ""
    yc_profile: str = ""
    iam_endpoint: str = ""
    #: A PEM CA trusted beside the system roots for TLS job servers (``DS_JOBS_CA_FILE`` wins).
    ca_file: str = ""
    defaults: Defaults = field(default_factory=Defaults)

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
        return cls._from_json(_read(p), p)

    @classmethod
    def _from_json(cls, data: Mapping[str, object], p: Path) -> Settings:
        unknown = sorted(set(data) - {"defaults", "token", *_TEXT_KEYS})
        if unknown:
            raise InvalidArgument(
                f"settings file {p}: unknown key(s) {', '.join(unknown)}; known: {_known_keys()}"
            )
        s = cls()
        for key in _TEXT_KEYS:
            value = data.get(key, "")
            if not isinstance(value, str):
                raise InvalidArgument(
                    f"expected a string, got {value!r} (in the settings file {p})", field=key
                )
            setattr(s, key, value)
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise InvalidArgument(f"expected a string or null (in the settings file {p})", field="token")
        s.token = token or None
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise InvalidArgument(f"settings file {p}: 'defaults' must be an object")
        s.defaults = Defaults.from_json(defaults, p)
        return s

    @classmethod
    def update_file(cls, changes: Mapping[str, str], path: Path | None = None) -> Path:
        """Set ``{KEY: VALUE}`` (``endpoint``, ``defaults.graceful_timeout``...; an empty value
        unsets) in the file and save it; return its path.

        Each value is checked before anything is written (all or nothing). A key being set may
        hold a bad value in the file: setting it repairs the file.
        """
        p = path or settings_path()
        data = _read(p)
        for key, value in changes.items():
            _assign(data, key, value)
        s = cls._from_json(data, p)
        return s.save(p)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {key: getattr(self, key) for key in _TEXT_KEYS}
        out["token"] = self.token
        out["defaults"] = self.defaults.to_json()
        return out

    def save(self, path: Path | None = None) -> Path:
        """Write atomically, mode 0600; return the path."""
        p = path or settings_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1, sort_keys=True)
        os.replace(tmp, p)
        return p

    def public(self) -> dict[str, object]:
        """As a dict with the token masked (for display)."""
        d = self.to_json()
        if d.get("token"):
            d["token"] = "***"
        return d

    def shown(self) -> list[tuple[str, str]]:
        """``(key, value)`` lines for display: token masked, every known default, typed."""
        rows: list[tuple[str, str]] = [
            (key, str(value) if value not in (None, "") else "(not set)")
            for key, value in self.public().items()
            if key != "defaults"
        ]
        for name in Defaults.known():
            value = getattr(self.defaults, name)
            rows.append((f"defaults.{name}", "(not set)" if value is None else str(_json_value(value))))
        return rows
