"""The YAML side of :mod:`jupyter_ds_jobs.packaging.jobspec`: loading, node checks, small value parsers.

* :func:`load_yaml` reads config.yaml text with a base loader (every scalar a string, as the official
  CLI reads it) that refuses duplicate keys; the document must be a mapping.
* ``as_str`` / ``as_map`` / ``as_list`` / ``check_keys`` / ``single_pair`` check one node and raise a
  :class:`~jupyter_ds_jobs.common.errors.ConfigError` naming its key path.
* :func:`parse_duration`, :func:`parse_size_gb`, :func:`parse_signal`, :func:`parse_bool`: the
  values that are more than strings.
* :class:`Vars`: the ``${VAR}`` names a config declares, and where.

This module imports nothing from the rest of the package but ``common``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import PureWindowsPath
from typing import Any, TypeAlias

import yaml

from jupyter_ds_jobs.common.contract import LOCAL_MODULE_PREFIX, PROJECT_HOME, VAR_RE, is_safe_relpath
from jupyter_ds_jobs.common.errors import ConfigError

__all__ = [
    "ATTACH_PROJECT_DISK",
    "CMD_VAR",
    "VAR_SHAPE",
    "Node",
    "Vars",
    "as_list",
    "as_map",
    "as_str",
    "check_keys",
    "is_safe_relative",
    "kind",
    "load_yaml",
    "parse_bool",
    "parse_duration",
    "parse_signal",
    "parse_size_gb",
    "single_pair",
]

Node: TypeAlias = Any  # str | list[Node] | dict[str, Node], as yaml.BaseLoader builds it

#: The flag that mounts the project disk as ``${DS_PROJECT_HOME}``.
ATTACH_PROJECT_DISK = "attach-project-disk"
#: :data:`~jupyter_ds_jobs.common.contract.VAR_RE` without its anchors, for messages.
VAR_SHAPE = VAR_RE.pattern.removeprefix("^").removesuffix("$")
#: ``${NAME}`` in cmd, NAME of VAR_RE's characters at any length (a too long one is then undeclared).
CMD_VAR = re.compile(r"\$\{(" + VAR_SHAPE.partition("{")[0] + r"+)\}")

# --------------------------------------------------------------------------- small parsers

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(s: str, key: str) -> timedelta:
    """``"15s"``, ``"1m"``, ``"2h"``, ``"1d"``, ``"500ms"``, ``"1h30m"``; a bare number is seconds."""
    text = s.strip().lower().replace(" ", "") if isinstance(s, str) else ""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    pos, total, seen = 0, 0.0, False
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos, seen = m.end(), True
    if not seen or pos != len(text):
        raise ConfigError(
            f"bad duration {s!r}: expected a number with a unit ms, s, m, h or d, like '15s' or '1h30m'",
            field=key,
        )
    return timedelta(seconds=total)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)", re.IGNORECASE)
_SIZE_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size_gb(s: str, key: str) -> int:
    """``"150Gb"``, ``"150GB"``, ``"150GiB"``, ``"1Tb"`` (= 1024 GB) -> whole GB, positive.

    Units are binary (as DataSphere disks are counted); the unit is required.
    """
    m = _SIZE.fullmatch(s.strip()) if isinstance(s, str) else None
    if m is None or not (m.group(2) or m.group(4)):
        raise ConfigError(f"bad size {s!r}: expected a number with a unit, like '150Gb' or '1Tb'", field=key)
    size_bytes = float(m.group(1)) * 1024.0 ** _SIZE_POWER[m.group(2).lower()]
    gb = size_bytes / 1024.0**3
    if gb <= 0 or gb != int(gb):
        raise ConfigError(f"bad size {s!r}: must be a positive whole number of GB", field=key)
    return int(gb)


# Linux signal numbers: jobs run on Linux whatever the local OS is (so not the local ``signal`` module).
_SIGNALS: dict[str, int] = {
    "HUP": 1,
    "INT": 2,
    "QUIT": 3,
    "ILL": 4,
    "TRAP": 5,
    "ABRT": 6,
    "BUS": 7,
    "FPE": 8,
    "KILL": 9,
    "USR1": 10,
    "SEGV": 11,
    "USR2": 12,
    "PIPE": 13,
    "ALRM": 14,
    "TERM": 15,
    "STKFLT": 16,
    "CHLD": 17,
    "CONT": 18,
    "STOP": 19,
    "TSTP": 20,
    "TTIN": 21,
    "TTOU": 22,
    "URG": 23,
    "XCPU": 24,
    "XFSZ": 25,
    "VTALRM": 26,
    "PROF": 27,
    "WINCH": 28,
    "IO": 29,
    "PWR": 30,
    "SYS": 31,
}


def parse_signal(s: str, key: str) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15`` -> the Linux signal number."""
    text = s.strip()
    if text.isdigit():
        num = int(text)
        if 1 <= num <= 64:
            return num
    else:
        name = text.upper()
        name = name.removeprefix("SIG")
        if name in _SIGNALS:
            return _SIGNALS[name]
    raise ConfigError(f"bad signal {s!r}: expected a name like SIGTERM or a number 1-64", field=key)


def parse_bool(s: str, key: str) -> bool:
    low = s.strip().lower()
    if low in ("true", "yes", "on", "1", "y"):
        return True
    if low in ("false", "no", "off", "0", "n", ""):
        return False
    raise ConfigError(f"expected true or false, got {s!r}", field=key)


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.BaseLoader):
    """The base loader (every scalar a string) that refuses duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ConfigError(f"line {key_node.start_mark.line + 1}: keys must be plain strings")
        if key in result:
            raise ConfigError(f"duplicate key (line {key_node.start_mark.line + 1})", field=key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> dict[str, Node]:
    """The top-level mapping of config.yaml ``text`` (empty text: ``{}``)."""
    try:
        root = yaml.load(text, Loader=_Loader)  # a BaseLoader: strings only
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}") from exc
    if root is None or root == "":
        root = {}
    if not isinstance(root, dict):
        raise ConfigError(f"the config must be a mapping of keys, got {kind(root)}")
    return root


def kind(node: Node) -> str:
    """What a node is, for messages."""
    if isinstance(node, dict):
        return "a mapping"
    if isinstance(node, list):
        return "a list"
    return f"the string {node!r}"


def as_str(node: Node, key: str, *, nonempty: bool = True) -> str:
    if not isinstance(node, str):
        raise ConfigError(f"expected a string, got {kind(node)}", field=key)
    if nonempty and not node.strip():
        raise ConfigError("must not be empty", field=key)
    return node


def as_map(node: Node, key: str) -> dict[str, Node]:
    if not isinstance(node, dict):
        raise ConfigError(f"expected a mapping, got {kind(node)}", field=key)
    return node


def as_list(node: Node, key: str, *, allow_scalar: bool = False) -> list[Node]:
    if allow_scalar and isinstance(node, str):
        return [node] if node.strip() else []
    if not isinstance(node, list):
        raise ConfigError(f"expected a list, got {kind(node)}", field=key)
    return node


def check_keys(mapping: Mapping[str, Node], known: Sequence[str], where: str) -> None:
    """Refuse a key not in ``known``, suggesting the closest known one."""
    for k in mapping:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key {k!r}{hint}", field=f"{where}.{k}" if where else k)


def single_pair(node: dict[str, Node], key: str) -> tuple[str, Node]:
    if len(node) != 1:
        raise ConfigError(f"expected one 'name: value' pair, got {len(node)} keys", field=key)
    return next(iter(node.items()))


def is_safe_relative(path: str) -> bool:
    """A safe relative path (:func:`~jupyter_ds_jobs.common.contract.is_safe_relpath`), on Windows too."""
    return is_safe_relpath(path) and not PureWindowsPath(path).is_absolute()


# --------------------------------------------------------------------------- variables


class Vars:
    """Declared variables and where each was declared."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def declare(self, name: str, key: str) -> None:
        if not VAR_RE.match(name):
            raise ConfigError(f"bad variable name {name!r}: it must match {VAR_SHAPE}", field=key)
        if name == PROJECT_HOME:
            raise ConfigError(
                f"variable name {PROJECT_HOME} is reserved (use flags: [{ATTACH_PROJECT_DISK}] to get it)",
                field=key,
            )
        if name.startswith(LOCAL_MODULE_PREFIX):
            raise ConfigError(
                f"variable name {name!r} is reserved (the {LOCAL_MODULE_PREFIX}<i> names are for local modules)",
                field=key,
            )
        if name in self.where:
            raise ConfigError(f"variable {name!r} is already declared by {self.where[name]}", field=key)
        self.where[name] = key
