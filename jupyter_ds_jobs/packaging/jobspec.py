"""Read an official DataSphere ``config.yaml`` and turn it into what the client uploads and sends.

:func:`load_config` / :func:`parse_config` give a :class:`JobSpec`: the ``JobParameters`` of
``CreateProjectJobRequest`` (everything except ``input_files`` and ``env.python_env.local_modules``,
which the client fills after hashing and zipping) plus the local files behind them.
:func:`fork_overrides` builds the ``job_parameters_overrides`` of ``CloneProjectJobRequest``.

Every value of the YAML is a string (the official CLI loads it with a base loader). Every problem is a
:class:`~jupyter_ds_jobs.common.errors.ConfigError` whose message starts with the key path, e.g.
``inputs[2]: path '../x' must be relative and must not contain '..'``.

This module imports nothing from IPython or the server.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeAlias

import yaml

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import (
    DEFAULT_INSTANCE_TYPE,
    ENV_NAME_RE,
    INSTANCE_TYPES,
    LOCAL_MODULE_PREFIX,
    MAX_ITEMS,
    PROJECT_HOME,
    VAR_RE,
    is_safe_relpath,
)
from jupyter_ds_jobs.common.errors import ConfigError
from jupyter_ds_jobs.common.requirements import read_requirements_file
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.packaging.analysis import analyze_script

__all__ = [
    "KNOWN_INSTANCE_TYPES",
    "MAX_ENTRIES",
    "ConfigError",
    "JobSpec",
    "LocalFile",
    "fork_overrides",
    "load_config",
    "local_module_files",
    "parse_config",
    "parse_duration",
    "parse_size_gb",
]

KNOWN_INSTANCE_TYPES: tuple[str, ...] = tuple(INSTANCE_TYPES)
MAX_ENTRIES = MAX_ITEMS  # inputs, outputs, s3-mounts, datasets: each at most this many
DS_PROJECT_HOME = PROJECT_HOME
ATTACH_PROJECT_DISK = "attach-project-disk"
LOCAL_MODULE_VAR_PREFIX = LOCAL_MODULE_PREFIX

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name",
    "desc",
    "cmd",
    "args",
    "inputs",
    "outputs",
    "s3-mounts",
    "datasets",
    "env",
    "flags",
    "cloud-instance-types",
    "cloud-instance-type",
    "working-storage",
    "graceful-shutdown",
    "spark",
    "output-datasets",
)
KNOWN_FLAGS: tuple[str, ...] = (ATTACH_PROJECT_DISK,)

_CMD_VAR = re.compile(r"\$\{([0-9a-zA-Z_-]+)\}")
_PY_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_PYTHON_EXE = re.compile(r"python(\d+(\.\d+)?)?(\.exe)?")

# Linux signal numbers: jobs run on Linux whatever the local OS is.
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

Node: TypeAlias = Any  # str | list[Node] | dict[str, Node], as yaml.BaseLoader builds it
Analyze: TypeAlias = Callable[[Path, Path], tuple[list[Path], list[str]]]


@dataclass
class JobSpec:
    name: str
    desc: str
    config_text: str
    base_dir: Path
    params: jobs_pb2.JobParameters
    inputs: list[LocalFile] = field(default_factory=list)
    local_modules: list[LocalFile] = field(default_factory=list)


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


def _parse_signal(s: str, key: str) -> int:
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


def _parse_bool(s: str, key: str) -> bool:
    low = s.strip().lower()
    if low in ("true", "yes", "on", "1", "y"):
        return True
    if low in ("false", "no", "off", "0", "n", ""):
        return False
    raise ConfigError(f"expected true or false, got {s!r}", field=key)


# --------------------------------------------------------------------------- YAML helpers


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


def _kind(node: Node) -> str:
    if isinstance(node, dict):
        return "a mapping"
    if isinstance(node, list):
        return "a list"
    return f"the string {node!r}"


def _str(node: Node, key: str, *, nonempty: bool = True) -> str:
    if not isinstance(node, str):
        raise ConfigError(f"expected a string, got {_kind(node)}", field=key)
    if nonempty and not node.strip():
        raise ConfigError("must not be empty", field=key)
    return node


def _map(node: Node, key: str) -> dict[str, Node]:
    if not isinstance(node, dict):
        raise ConfigError(f"expected a mapping, got {_kind(node)}", field=key)
    return node


def _list(node: Node, key: str, *, allow_scalar: bool = False) -> list[Node]:
    if allow_scalar and isinstance(node, str):
        return [node] if node.strip() else []
    if not isinstance(node, list):
        raise ConfigError(f"expected a list, got {_kind(node)}", field=key)
    return node


def _check_keys(mapping: Mapping[str, Node], known: Sequence[str], where: str) -> None:
    for k in mapping:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key {k!r}{hint}", field=f"{where}.{k}" if where else k)


def _single_pair(node: dict[str, Node], key: str) -> tuple[str, Node]:
    if len(node) != 1:
        raise ConfigError(f"expected one 'name: value' pair, got {len(node)} keys", field=key)
    return next(iter(node.items()))


# --------------------------------------------------------------------------- variables


class _Vars:
    """Declared variables and where each was declared."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def declare(self, name: str, key: str) -> None:
        if not VAR_RE.match(name):
            raise ConfigError(
                f"bad variable name {name!r}: it must match [0-9a-zA-Z_-]{{1,50}}",
                field=key,
            )
        if name == DS_PROJECT_HOME:
            raise ConfigError(
                f"variable name {DS_PROJECT_HOME} is reserved (use flags: [{ATTACH_PROJECT_DISK}] to get it)",
                field=key,
            )
        if name.startswith(LOCAL_MODULE_VAR_PREFIX):
            raise ConfigError(
                f"variable name {name!r} is reserved (the {LOCAL_MODULE_VAR_PREFIX}<i> names are for local modules)",
                field=key,
            )
        if name in self.where:
            raise ConfigError(f"variable {name!r} is already declared by {self.where[name]}", field=key)
        self.where[name] = key


def _is_safe_relative(path: str) -> bool:
    return is_safe_relpath(path) and not PureWindowsPath(path).is_absolute()


# --------------------------------------------------------------------------- files


def _file_items(
    node: Node, key: str, vars_: _Vars, base_dir: Path, *, must_exist: bool
) -> list[tuple[str, str, Path]]:
    """``inputs`` / ``outputs``: items ``path``, ``{path: VAR}`` or ``{path: {var: VAR}}``."""
    items = _list(node, key)
    if len(items) > MAX_ENTRIES:
        raise ConfigError(f"at most {MAX_ENTRIES} entries are allowed, got {len(items)}", field=key)
    out: list[tuple[str, str, Path]] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]"
        var = ""
        if isinstance(item, str):
            path = item
        elif isinstance(item, dict):
            path, spec = _single_pair(item, ikey)
            if isinstance(spec, str):
                var = _str(spec, f"{ikey}.{path}")
            else:
                spec_map = _map(spec, f"{ikey}.{path}")
                _check_keys(spec_map, ("var",), f"{ikey}.{path}")
                var = _str(spec_map.get("var", ""), f"{ikey}.{path}.var")
        else:
            raise ConfigError(
                f"expected 'path', 'path: VAR' or 'path: {{var: VAR}}', got {_kind(item)}", field=ikey
            )
        if not path.strip():
            raise ConfigError("path must not be empty", field=ikey)
        if var:
            vars_.declare(var, ikey)
        elif not _is_safe_relative(path):
            raise ConfigError(f"path {path!r} must be relative and must not contain '..'", field=ikey)
        if path in seen:
            raise ConfigError(f"path {path!r} is already listed at {seen[path]}", field=ikey)
        seen[path] = ikey
        local = (base_dir / Path(path).expanduser()).resolve()
        if must_exist:
            if not local.exists():
                raise ConfigError(f"no such file or directory: {path!r} (looked at {local})", field=ikey)
            if not (local.is_file() or local.is_dir()):
                raise ConfigError(f"{path!r} is neither a regular file nor a directory", field=ikey)
        out.append((path, var, local))
    return out


def _ids(node: Node, key: str, vars_: _Vars) -> list[tuple[str, str]]:
    """``s3-mounts`` / ``datasets``: items ``<id>: VAR`` (or a bare ``<id>``)."""
    items = _list(node, key)
    if len(items) > MAX_ENTRIES:
        raise ConfigError(f"at most {MAX_ENTRIES} entries are allowed, got {len(items)}", field=key)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]"
        if isinstance(item, str):
            rid, var = item, ""
        elif isinstance(item, dict):
            rid, var_node = _single_pair(item, ikey)
            var = _str(var_node, f"{ikey}.{rid}")
        else:
            raise ConfigError(f"expected '<id>: VAR', got {_kind(item)}", field=ikey)
        rid = rid.strip()
        if not rid:
            raise ConfigError("id must not be empty", field=ikey)
        if rid in seen:
            raise ConfigError(f"id {rid!r} is listed twice", field=ikey)
        seen.add(rid)
        if var:
            vars_.declare(var, ikey)
        out.append((rid, var))
    return out


# --------------------------------------------------------------------------- python env


@dataclass
class _Entry:
    script: Path | None  # the file to analyze (a .py file)
    module_path: Path | None  # what travels as a local module (script file or top package dir)
    input_path: str  # relative path as in cmd, for the input copy ("" if not to be sent)


def _find_entry(cmd: str, base_dir: Path) -> _Entry | None:
    """The entry of ``python [opts] script.py`` or ``python [opts] -m pkg.mod`` in cmd, if any."""
    try:
        tokens = shlex.split(cmd, comments=False, posix=True)
    except ValueError:
        tokens = cmd.split()
    for i, tok in enumerate(tokens):
        if not _PYTHON_EXE.fullmatch(PurePosixPath(tok).name):
            continue
        j = i + 1
        while j < len(tokens):
            t = tokens[j]
            if t.startswith("--"):  # --check-hash-based-pycs takes a value; other long options none
                j += 2 if t == "--check-hash-based-pycs" else 1
                continue
            if t.startswith("-") and t != "-":  # a cluster of short options, like -u, -OO, -um pkg
                for k, ch in enumerate(t[1:], start=2):
                    if ch in "mcWX":
                        value = t[k:] or (tokens[j + 1] if j + 1 < len(tokens) else "")
                        if ch == "m":
                            return _module_entry(value, base_dir)
                        if ch == "c":
                            return None
                        if not t[k:]:
                            j += 1
                        break
                j += 1
                continue
            if "${" in t:
                return None
            script = (base_dir / t).resolve()
            rel = t if _is_safe_relative(t) else ""
            return _Entry(script=script, module_path=script, input_path=rel)
        return None
    return None


def _module_entry(mod: str, base_dir: Path) -> _Entry | None:
    if not mod or "${" in mod:
        return None
    parts = mod.split(".")
    target = base_dir.joinpath(*parts)
    top = base_dir / parts[0]
    if target.is_dir():
        script: Path | None = target / "__main__.py"
    elif target.with_suffix(".py").is_file():
        script = target.with_suffix(".py")
    else:
        script = None
    if top.is_dir():
        module_path: Path | None = top.resolve()
    elif top.with_suffix(".py").is_file():
        module_path = top.with_suffix(".py").resolve()
    else:
        module_path = None
    return _Entry(script=script.resolve() if script else None, module_path=module_path, input_path="")


def _default_analyze(entry: Path, root: Path) -> tuple[list[Path], list[str]]:
    result = analyze_script(entry, root)
    return list(result.local_modules), list(result.requirements)


def _python_version(node: Node, key: str) -> str:
    text = _str(node, key).strip()
    m = _PY_VERSION.fullmatch(text)
    if m is None:
        raise ConfigError(f"bad python version {text!r}: expected like '3.11' or '3.11.4'", field=key)
    return f"{m.group(1)}.{m.group(2)}"


PYTHON_KEYS = ("type", "version", "requirements-file", "local-paths", "root-paths", "pip")
PIP_KEYS = ("index-url", "extra-index-urls", "trusted-hosts", "no-deps")


def _parse_python(
    node: Node,
    cmd: str,
    base_dir: Path,
    analyze: Analyze | None,
) -> tuple[jobs_pb2.PythonEnv, list[Path], _Entry | None]:
    key = "env.python"
    py = jobs_pb2.PythonEnv()
    pip = jobs_pb2.PipOptions()
    if isinstance(node, str):
        if node.strip() != "auto":
            raise ConfigError(f"expected 'auto' or a mapping with type: auto|manual, got {node!r}", field=key)
        spec: dict[str, Node] = {"type": "auto"}
    else:
        spec = _map(node, key)
        _check_keys(spec, PYTHON_KEYS, key)
    if "type" in spec:
        kind = _str(spec["type"], f"{key}.type").strip()
        if kind not in ("auto", "manual"):
            raise ConfigError(f"expected auto or manual, got {kind!r}", field=f"{key}.type")
    else:
        kind = "manual" if ("requirements-file" in spec or "local-paths" in spec) else "auto"
    if kind == "auto":
        for bad in ("requirements-file", "local-paths"):
            if bad in spec:
                raise ConfigError(
                    f"{bad} is for type: manual; in auto mode the client finds them", field=f"{key}.{bad}"
                )
    elif "root-paths" in spec:
        raise ConfigError(
            "root-paths is for type: auto; in manual mode list local-paths", field=f"{key}.root-paths"
        )

    py.python_version = (
        _python_version(spec["version"], f"{key}.version")
        if "version" in spec
        else f"{sys.version_info.major}.{sys.version_info.minor}"
    )

    if "pip" in spec:
        pkey = f"{key}.pip"
        pspec = _map(spec["pip"], pkey)
        _check_keys(pspec, PIP_KEYS, pkey)
        if "index-url" in pspec:
            pip.index_url = _str(pspec["index-url"], f"{pkey}.index-url").strip()
        for k, target in (("extra-index-urls", pip.extra_index_urls), ("trusted-hosts", pip.trusted_hosts)):
            if k in pspec:
                for i, v in enumerate(_list(pspec[k], f"{pkey}.{k}", allow_scalar=True)):
                    target.append(_str(v, f"{pkey}.{k}[{i}]").strip())
        if "no-deps" in pspec:
            pip.no_deps = _parse_bool(
                _str(pspec["no-deps"], f"{pkey}.no-deps", nonempty=False), f"{pkey}.no-deps"
            )

    modules: list[Path] = []
    entry = _find_entry(cmd, base_dir)
    if kind == "manual":
        if "requirements-file" in spec:
            rkey = f"{key}.requirements-file"
            rel = _str(spec["requirements-file"], rkey)
            py.requirements.extend(read_requirements_file(base_dir / rel, pip, field=rkey))
        if "local-paths" in spec:
            lkey = f"{key}.local-paths"
            for i, p in enumerate(_list(spec["local-paths"], lkey, allow_scalar=True)):
                rel = _str(p, f"{lkey}[{i}]")
                local = (base_dir / rel).resolve()
                if not local.exists():
                    raise ConfigError(
                        f"no such file or directory: {rel!r} (looked at {local})", field=f"{lkey}[{i}]"
                    )
                modules.append(local)
    else:
        if entry is None or entry.script is None or not entry.script.is_file():
            what = (
                f"entry script {entry.script} does not exist"
                if entry is not None and entry.script is not None
                else "cmd runs no local python script ('python main.py' or 'python -m pkg')"
            )
            raise ConfigError(f"python: auto needs the entry script of cmd: {what}", field=key)
        scripts: list[tuple[Path, str]] = [(entry.script, key)]
        if entry.module_path is not None:
            modules.append(entry.module_path)
        if "root-paths" in spec:
            rkey = f"{key}.root-paths"
            for i, p in enumerate(_list(spec["root-paths"], rkey, allow_scalar=True)):
                rel = _str(p, f"{rkey}[{i}]")
                local = (base_dir / rel).resolve()
                if not local.is_file():
                    raise ConfigError(f"no such file: {rel!r} (looked at {local})", field=f"{rkey}[{i}]")
                scripts.append((local, f"{rkey}[{i}]"))
                modules.append(local)
        run = analyze or _default_analyze
        requirements: list[str] = []
        for script, skey in scripts:
            try:
                found, reqs = run(script, base_dir)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"cannot analyze {script.name}: {type(exc).__name__}: {exc}", field=skey
                ) from exc
            modules += [(base_dir / m).resolve() for m in found]
            requirements += [r for r in reqs if r not in requirements]
        py.requirements.extend(requirements)

    if pip.ListFields():
        py.pip_options.CopyFrom(pip)
    unique: list[Path] = []
    for m in modules:
        if m not in unique:
            unique.append(m)
    return py, unique, entry


def local_module_files(paths: list[Path]) -> list[LocalFile]:
    """One ZIP input per local module, with the official client's ``_LOCAL_MODULE_<i>`` vars."""
    out: list[LocalFile] = []
    used: set[str] = set()
    for i, p in enumerate(paths):
        desc = f"{p.name}.zip"
        if desc in used:
            desc = f"{p.name}-{i}.zip"
        used.add(desc)
        out.append(LocalFile(local_path=p, desc_path=desc, var=f"{LOCAL_MODULE_VAR_PREFIX}{i}", zip=True))
    return out


# --------------------------------------------------------------------------- env


ENV_KEYS = ("vars", "docker", "python")
DOCKER_KEYS = ("image", "username", "password")


def _parse_env_vars(node: Node, key: str, local_env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    items: list[tuple[str, str, Node | None]] = []
    if isinstance(node, dict):
        items = [(f"{key}.{k}", k, v) for k, v in node.items()]
    else:
        for i, item in enumerate(_list(node, key)):
            ikey = f"{key}[{i}]"
            if isinstance(item, str):
                items.append((ikey, item.strip(), None))
            elif isinstance(item, dict):
                name, value = _single_pair(item, ikey)
                items.append((ikey, name, value))
            else:
                raise ConfigError(f"expected NAME or 'NAME: value', got {_kind(item)}", field=ikey)
    for ikey, name, value in items:
        if not ENV_NAME_RE.match(name):
            raise ConfigError(f"bad environment variable name {name!r}", field=ikey)
        if name in out:
            raise ConfigError(f"environment variable {name!r} is listed twice", field=ikey)
        if value is None:
            if name not in local_env:
                raise ConfigError(f"environment variable {name!r} is not set locally", field=ikey)
            out[name] = local_env[name]
        else:
            out[name] = _str(value, ikey, nonempty=False)
    return out


def _parse_docker(node: Node, env: jobs_pb2.Environment) -> None:
    key = "env.docker"
    if isinstance(node, str):
        env.docker_image_resource_id = _str(node, key).strip()
        return
    spec = _map(node, key)
    _check_keys(spec, DOCKER_KEYS, key)
    if "image" not in spec:
        raise ConfigError("image is required", field=f"{key}.image")
    d = jobs_pb2.DockerImageSpec(image_url=_str(spec["image"], f"{key}.image").strip())
    if "username" in spec:
        d.username = _str(spec["username"], f"{key}.username", nonempty=False)
    if "password" in spec:
        pkey = f"{key}.password"
        pw = spec["password"]
        if isinstance(pw, str):
            d.password_plain_text = pw
        else:
            pmap = _map(pw, pkey)
            _check_keys(pmap, ("secret-id",), pkey)
            if "secret-id" not in pmap:
                raise ConfigError("expected a plain password or {secret-id: NAME}", field=pkey)
            d.password_ds_secret_name = _str(pmap["secret-id"], f"{pkey}.secret-id").strip()
    env.docker_image_spec.CopyFrom(d)


# --------------------------------------------------------------------------- the config


def load_config(
    path: Path,
    *,
    analyze: Analyze | None = None,
    env: Mapping[str, str] | None = None,
    instance_types: Sequence[str] | None = KNOWN_INSTANCE_TYPES,
) -> JobSpec:
    """Read ``path`` (a DataSphere ``config.yaml``); relative paths resolve against its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    return parse_config(text, path.resolve().parent, analyze=analyze, env=env, instance_types=instance_types)


def parse_config(
    text: str,
    base_dir: Path,
    *,
    analyze: Analyze | None = None,
    env: Mapping[str, str] | None = None,
    instance_types: Sequence[str] | None = KNOWN_INSTANCE_TYPES,
) -> JobSpec:
    """Parse config.yaml text.

    ``analyze(entry_script, root) -> (local module paths, pinned requirements)`` serves ``python: auto``
    (default: :func:`jupyter_ds_jobs.packaging.analysis.analyze_script`). ``env`` is the local environment
    for bare names in ``env.vars`` (default: ``os.environ``). ``instance_types`` are the accepted
    ``cloud-instance-type(s)`` (None: accept any).
    """
    base_dir = Path(base_dir).resolve()
    local_env: Mapping[str, str] = os.environ if env is None else env
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
        raise ConfigError(f"the config must be a mapping of keys, got {_kind(root)}")
    _check_keys(root, TOP_LEVEL_KEYS, "")

    name = _str(root.get("name", ""), "name", nonempty=False).strip()
    desc = _str(root.get("desc", ""), "desc", nonempty=False)
    if "cmd" not in root:
        raise ConfigError("cmd is required", field="cmd")
    cmd = _str(root["cmd"], "cmd").strip()

    params = jobs_pb2.JobParameters()
    vars_ = _Vars()

    # args
    if "args" in root:
        for k, v in _map(root["args"], "args").items():
            vars_.declare(k, f"args.{k}")
            params.arguments.add(name=k, value=_str(v, f"args.{k}", nonempty=False))

    # inputs / outputs
    inputs: list[LocalFile] = []
    if "inputs" in root:
        for path, var, local in _file_items(root["inputs"], "inputs", vars_, base_dir, must_exist=True):
            inputs.append(LocalFile(local_path=local, desc_path=path, var=var, zip=local.is_dir()))
    if "outputs" in root:
        for path, var, _local in _file_items(root["outputs"], "outputs", vars_, base_dir, must_exist=False):
            params.output_files.add(path=path, var=var)

    # s3-mounts / datasets: ${VAR} -> ${<id>}
    replace: dict[str, str] = {}
    for key, target in (("s3-mounts", params.s3_mount_ids), ("datasets", params.dataset_ids)):
        if key in root:
            for rid, var in _ids(root[key], key, vars_):
                target.append(rid)
                if var:
                    replace[var] = rid

    # output-datasets
    if "output-datasets" in root:
        okey = "output-datasets"
        items = _list(root[okey], okey)
        for i, item in enumerate(items):
            ikey = f"{okey}[{i}]"
            spec = _map(item, ikey)
            _check_keys(spec, ("name", "description", "labels", "var", "size"), ikey)
            for req in ("name", "var", "size"):
                if req not in spec:
                    raise ConfigError(f"{req} is required", field=f"{ikey}.{req}")
            ds = params.output_datasets.add(
                name=_str(spec["name"], f"{ikey}.name").strip(),
                description=_str(spec.get("description", ""), f"{ikey}.description", nonempty=False),
                size_gb=parse_size_gb(_str(spec["size"], f"{ikey}.size"), f"{ikey}.size"),
            )
            var = _str(spec["var"], f"{ikey}.var").strip()
            vars_.declare(var, ikey)
            ds.var = var
            if "labels" in spec:
                for lk, lv in _map(spec["labels"], f"{ikey}.labels").items():
                    ds.labels[lk] = _str(lv, f"{ikey}.labels.{lk}", nonempty=False)

    # flags
    flags: list[str] = []
    if "flags" in root:
        for i, f in enumerate(_list(root["flags"], "flags", allow_scalar=True)):
            flag = _str(f, f"flags[{i}]").strip()
            if flag not in KNOWN_FLAGS:
                raise ConfigError(
                    f"unknown flag {flag!r}; known flags: {', '.join(KNOWN_FLAGS)}", field=f"flags[{i}]"
                )
            flags.append(flag)
    params.attach_project_disk = ATTACH_PROJECT_DISK in flags

    # cmd variables
    for m in _CMD_VAR.finditer(cmd):
        var = m.group(1)
        if var == DS_PROJECT_HOME:
            if not params.attach_project_disk:
                raise ConfigError(f"${{{DS_PROJECT_HOME}}} needs flags: [{ATTACH_PROJECT_DISK}]", field="cmd")
        elif var not in vars_.where:
            raise ConfigError(
                f"variable ${{{var}}} is not declared "
                "(declare it in inputs, outputs, args, s3-mounts, datasets or output-datasets)",
                field="cmd",
            )
    params.cmd = _CMD_VAR.sub(lambda m: "${" + replace.get(m.group(1), m.group(1)) + "}", cmd)

    # env
    local_modules: list[LocalFile] = []
    if "env" in root:
        espec = _map(root["env"], "env")
        _check_keys(espec, ENV_KEYS, "env")
        penv = jobs_pb2.Environment()
        if "vars" in espec:
            for k, v in _parse_env_vars(espec["vars"], "env.vars", local_env).items():
                penv.vars[k] = v
        if "docker" in espec:
            _parse_docker(espec["docker"], penv)
        if "python" in espec:
            py, modules, entry = _parse_python(espec["python"], cmd, base_dir, analyze)
            penv.python_env.CopyFrom(py)
            local_modules = local_module_files(modules)
            if (
                entry is not None
                and entry.input_path
                and entry.script is not None
                and entry.script.is_file()
                and all(f.local_path != entry.script for f in inputs)
            ):
                inputs.insert(
                    0, LocalFile(local_path=entry.script, desc_path=entry.input_path, var="", zip=False)
                )
        params.env.CopyFrom(penv)

    # cloud instance types
    if "cloud-instance-types" in root and "cloud-instance-type" in root:
        raise ConfigError(
            "give either cloud-instance-type or cloud-instance-types, not both", field="cloud-instance-types"
        )
    if "cloud-instance-types" in root:
        ckey = "cloud-instance-types"
        names = [
            (_str(v, f"{ckey}[{i}]").strip(), f"{ckey}[{i}]")
            for i, v in enumerate(_list(root[ckey], ckey, allow_scalar=True))
        ]
        if not names:
            raise ConfigError("must list at least one instance type", field=ckey)
    elif "cloud-instance-type" in root:
        names = [(_str(root["cloud-instance-type"], "cloud-instance-type").strip(), "cloud-instance-type")]
    else:
        names = [(DEFAULT_INSTANCE_TYPE, "cloud-instance-type")]
    seen_types: set[str] = set()
    for n, nkey in names:
        _check_instance_type(n, nkey, instance_types)
        if n in seen_types:
            raise ConfigError(f"instance type {n!r} is listed twice", field=nkey)
        seen_types.add(n)
        params.cloud_instance_types.add(name=n)

    # working-storage
    if "working-storage" in root:
        wkey = "working-storage"
        wspec = _map(root[wkey], wkey)
        _check_keys(wspec, ("type", "size"), wkey)
        wtype = _str(wspec.get("type", "SSD"), f"{wkey}.type").strip().upper()
        if wtype != "SSD":
            raise ConfigError(f"unknown storage type {wtype!r}; known: SSD", field=f"{wkey}.type")
        if "size" not in wspec:
            raise ConfigError("size is required", field=f"{wkey}.size")
        params.extended_working_storage.type = jobs_pb2.ExtendedWorkingStorage.SSD
        params.extended_working_storage.size_gb = parse_size_gb(
            _str(wspec["size"], f"{wkey}.size"), f"{wkey}.size"
        )

    # graceful-shutdown
    if "graceful-shutdown" in root:
        gkey = "graceful-shutdown"
        gspec = _map(root[gkey], gkey)
        _check_keys(gspec, ("signal", "timeout"), gkey)
        g = params.graceful_shutdown_parameters
        g.signal = (
            _parse_signal(_str(gspec["signal"], f"{gkey}.signal"), f"{gkey}.signal")
            if "signal" in gspec
            else 15
        )
        if "timeout" in gspec:
            g.timeout.FromTimedelta(
                parse_duration(_str(gspec["timeout"], f"{gkey}.timeout"), f"{gkey}.timeout")
            )

    # spark
    if "spark" in root:
        skey = "spark"
        sspec = _map(root[skey], skey)
        _check_keys(sspec, ("connector",), skey)
        if "connector" not in sspec:
            raise ConfigError("connector is required", field=f"{skey}.connector")
        params.spark_parameters.connector_id = _str(sspec["connector"], f"{skey}.connector").strip()

    return JobSpec(
        name=name,
        desc=desc,
        config_text=text,
        base_dir=base_dir,
        params=params,
        inputs=inputs,
        local_modules=local_modules,
    )


def _check_instance_type(name: str, key: str, known: Sequence[str] | None) -> None:
    if known is not None and name not in known:
        raise ConfigError(f"unknown instance type {name!r}; known types: {', '.join(known)}", field=key)


# --------------------------------------------------------------------------- fork


def fork_overrides(
    *,
    args: Mapping[str, str] | None = None,
    vars: Mapping[str, Path] | None = None,
    env_vars: Mapping[str, str] | None = None,
    instance_type: str | None = None,
    base: jobs_pb2.JobParameters,
    instance_types: Sequence[str] | None = KNOWN_INSTANCE_TYPES,
) -> tuple[jobs_pb2.JobParameters, list[LocalFile]]:
    """``CloneProjectJobRequest.job_parameters_overrides`` for ``fork``, and the new input files.

    The overrides hold only what changes, keyed like the source job's entries (arguments by name, env
    vars by name, input files by var, the instance type list whole); the server merges them into the
    source job's parameters. ``input_files`` is left for the client to fill from the returned
    :class:`LocalFile` list (after hashing/zipping), one per ``--var``.
    """
    out = jobs_pb2.JobParameters()
    files: list[LocalFile] = []
    base_args = {a.name for a in base.arguments}
    for name, value in (args or {}).items():
        if name not in base_args:
            known = ", ".join(sorted(base_args)) or "none"
            raise ConfigError(
                f"the job has no argument {name!r} (its arguments: {known})", field=f"--arg {name}"
            )
        out.arguments.add(name=name, value=value)
    base_vars = {f.desc.var for f in base.input_files if f.desc.var}
    for name, path in (vars or {}).items():
        if name not in base_vars:
            known = ", ".join(sorted(base_vars)) or "none"
            raise ConfigError(
                f"the job has no input variable {name!r} (its input vars: {known})", field=f"--var {name}"
            )
        local = Path(path).expanduser().resolve()
        if not local.exists():
            raise ConfigError(f"no such file or directory: {str(path)!r}", field=f"--var {name}")
        files.append(LocalFile(local_path=local, desc_path=str(path), var=name, zip=local.is_dir()))
    for name, value in (env_vars or {}).items():
        if not ENV_NAME_RE.match(name):
            raise ConfigError(f"bad environment variable name {name!r}", field=f"--env-var {name}")
        out.env.vars[name] = value
    if instance_type is not None:
        _check_instance_type(instance_type, "--cloud-instance-type", instance_types)
        out.cloud_instance_types.add(name=instance_type)
    return out, files
