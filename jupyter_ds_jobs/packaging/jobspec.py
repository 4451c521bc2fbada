"""Read an official DataSphere ``config.yaml`` and turn it into what the client uploads and sends.

:func:`load_config` / :func:`parse_config` give a :class:`JobSpec`: the ``JobParameters`` of
``CreateProjectJobRequest`` (everything except ``input_files`` and ``env.python_env.local_modules``,
which the client fills after hashing and zipping) plus the local files behind them.
:func:`fork_overrides` builds the ``job_parameters_overrides`` of ``CloneProjectJobRequest``.

Every value of the YAML is a string (the official CLI loads it with a base loader). Every problem is a
:class:`~jupyter_ds_jobs.common.errors.ConfigError` whose message starts with the key path, e.g.
``inputs[2]: path '../x' must be relative and must not contain '..'``.

One function here reads each top-level section into the job being built; :data:`_SECTIONS` runs them
in order (the first error wins). The YAML loader, node checks and small value parsers are in
:mod:`.jobspec_nodes`; the ``env.python`` section (entry script, auto / manual) in :mod:`.jobspec_python`.

This module imports nothing from IPython or the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import (
    DEFAULT_INSTANCE_TYPE,
    ENV_NAME_RE,
    INSTANCE_TYPES,
    MAX_ITEMS,
    PROJECT_HOME,
)
from jupyter_ds_jobs.common.errors import ConfigError
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.packaging.jobspec_nodes import (
    ATTACH_PROJECT_DISK,
    CMD_VAR,
    Node,
    Vars,
    as_list,
    as_map,
    as_str,
    check_keys,
    is_safe_relative,
    kind,
    load_yaml,
    parse_duration,
    parse_signal,
    parse_size_gb,
    single_pair,
)
from jupyter_ds_jobs.packaging.jobspec_python import (
    Analyze,
    entry_script_input,
    local_module_files,
    parse_python,
)

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
ENV_KEYS = ("vars", "docker", "python")
DOCKER_KEYS = ("image", "username", "password")


@dataclass
class JobSpec:
    name: str
    desc: str
    config_text: str
    base_dir: Path
    params: jobs_pb2.JobParameters
    inputs: list[LocalFile] = field(default_factory=list)
    local_modules: list[LocalFile] = field(default_factory=list)


@dataclass
class _Build:
    """The job being built from one config: what the sections read and what they fill."""

    root: dict[str, Node]
    cmd: str
    base_dir: Path
    local_env: Mapping[str, str]
    analyze: Analyze | None
    instance_types: Sequence[str] | None
    params: jobs_pb2.JobParameters = field(default_factory=jobs_pb2.JobParameters)
    vars: Vars = field(default_factory=Vars)
    replace: dict[str, str] = field(default_factory=dict)  # ${VAR} -> ${<id>} of s3-mounts, datasets
    inputs: list[LocalFile] = field(default_factory=list)
    local_modules: list[LocalFile] = field(default_factory=list)


# --------------------------------------------------------------------------- args, files, ids


def _args(b: _Build) -> None:
    if "args" in b.root:
        for k, v in as_map(b.root["args"], "args").items():
            b.vars.declare(k, f"args.{k}")
            b.params.arguments.add(name=k, value=as_str(v, f"args.{k}", nonempty=False))


def _file_item(item: Node, ikey: str) -> tuple[str, str]:
    """One ``inputs`` / ``outputs`` item: ``path``, ``{path: VAR}`` or ``{path: {var: VAR}}``."""
    if isinstance(item, str):
        return item, ""
    if not isinstance(item, dict):
        raise ConfigError(
            f"expected 'path', 'path: VAR' or 'path: {{var: VAR}}', got {kind(item)}", field=ikey
        )
    path, spec = single_pair(item, ikey)
    if isinstance(spec, str):
        return path, as_str(spec, f"{ikey}.{path}")
    spec_map = as_map(spec, f"{ikey}.{path}")
    check_keys(spec_map, ("var",), f"{ikey}.{path}")
    return path, as_str(spec_map.get("var", ""), f"{ikey}.{path}.var")


def _file_items(
    node: Node, key: str, vars_: Vars, base_dir: Path, *, must_exist: bool
) -> list[tuple[str, str, Path]]:
    """``inputs`` / ``outputs``: (path as written, var, local path) of each item."""
    items = as_list(node, key)
    if len(items) > MAX_ENTRIES:
        raise ConfigError(f"at most {MAX_ENTRIES} entries are allowed, got {len(items)}", field=key)
    out: list[tuple[str, str, Path]] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]"
        path, var = _file_item(item, ikey)
        if not path.strip():
            raise ConfigError("path must not be empty", field=ikey)
        if var:
            vars_.declare(var, ikey)
        elif not is_safe_relative(path):
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


def _inputs_outputs(b: _Build) -> None:
    if "inputs" in b.root:
        for path, var, local in _file_items(b.root["inputs"], "inputs", b.vars, b.base_dir, must_exist=True):
            b.inputs.append(LocalFile(local_path=local, desc_path=path, var=var, zip=local.is_dir()))
    if "outputs" in b.root:
        for path, var, _local in _file_items(
            b.root["outputs"], "outputs", b.vars, b.base_dir, must_exist=False
        ):
            b.params.output_files.add(path=path, var=var)


def _ids(node: Node, key: str, vars_: Vars) -> list[tuple[str, str]]:
    """``s3-mounts`` / ``datasets``: items ``<id>: VAR`` (or a bare ``<id>``)."""
    items = as_list(node, key)
    if len(items) > MAX_ENTRIES:
        raise ConfigError(f"at most {MAX_ENTRIES} entries are allowed, got {len(items)}", field=key)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]"
        if isinstance(item, str):
            rid, var = item, ""
        elif isinstance(item, dict):
            rid, var_node = single_pair(item, ikey)
            var = as_str(var_node, f"{ikey}.{rid}")
        else:
            raise ConfigError(f"expected '<id>: VAR', got {kind(item)}", field=ikey)
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


def _mounts_datasets(b: _Build) -> None:
    """``s3-mounts`` / ``datasets``: ids into the job; ``${VAR}`` in cmd becomes ``${<id>}``."""
    for key, target in (("s3-mounts", b.params.s3_mount_ids), ("datasets", b.params.dataset_ids)):
        if key in b.root:
            for rid, var in _ids(b.root[key], key, b.vars):
                target.append(rid)
                if var:
                    b.replace[var] = rid


def _output_datasets(b: _Build) -> None:
    okey = "output-datasets"
    if okey not in b.root:
        return
    for i, item in enumerate(as_list(b.root[okey], okey)):
        ikey = f"{okey}[{i}]"
        spec = as_map(item, ikey)
        check_keys(spec, ("name", "description", "labels", "var", "size"), ikey)
        for req in ("name", "var", "size"):
            if req not in spec:
                raise ConfigError(f"{req} is required", field=f"{ikey}.{req}")
        ds = b.params.output_datasets.add(
            name=as_str(spec["name"], f"{ikey}.name").strip(),
            description=as_str(spec.get("description", ""), f"{ikey}.description", nonempty=False),
            size_gb=parse_size_gb(as_str(spec["size"], f"{ikey}.size"), f"{ikey}.size"),
        )
        var = as_str(spec["var"], f"{ikey}.var").strip()
        b.vars.declare(var, ikey)
        ds.var = var
        if "labels" in spec:
            for lk, lv in as_map(spec["labels"], f"{ikey}.labels").items():
                ds.labels[lk] = as_str(lv, f"{ikey}.labels.{lk}", nonempty=False)


# --------------------------------------------------------------------------- flags, cmd


def _flags(b: _Build) -> None:
    flags: list[str] = []
    if "flags" in b.root:
        for i, f in enumerate(as_list(b.root["flags"], "flags", allow_scalar=True)):
            flag = as_str(f, f"flags[{i}]").strip()
            if flag not in KNOWN_FLAGS:
                raise ConfigError(
                    f"unknown flag {flag!r}; known flags: {', '.join(KNOWN_FLAGS)}", field=f"flags[{i}]"
                )
            flags.append(flag)
    b.params.attach_project_disk = ATTACH_PROJECT_DISK in flags


def _cmd_vars(b: _Build) -> None:
    """Every ``${VAR}`` of cmd declared; those of s3-mounts and datasets replaced by their ids."""
    for m in CMD_VAR.finditer(b.cmd):
        var = m.group(1)
        if var == PROJECT_HOME:
            if not b.params.attach_project_disk:
                raise ConfigError(f"${{{PROJECT_HOME}}} needs flags: [{ATTACH_PROJECT_DISK}]", field="cmd")
        elif var not in b.vars.where:
            raise ConfigError(
                f"variable ${{{var}}} is not declared "
                "(declare it in inputs, outputs, args, s3-mounts, datasets or output-datasets)",
                field="cmd",
            )
    b.params.cmd = CMD_VAR.sub(lambda m: "${" + b.replace.get(m.group(1), m.group(1)) + "}", b.cmd)


# --------------------------------------------------------------------------- env


def _parse_env_vars(node: Node, key: str, local_env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    items: list[tuple[str, str, Node | None]] = []
    if isinstance(node, dict):
        items = [(f"{key}.{k}", k, v) for k, v in node.items()]
    else:
        for i, item in enumerate(as_list(node, key)):
            ikey = f"{key}[{i}]"
            if isinstance(item, str):
                items.append((ikey, item.strip(), None))
            elif isinstance(item, dict):
                name, value = single_pair(item, ikey)
                items.append((ikey, name, value))
            else:
                raise ConfigError(f"expected NAME or 'NAME: value', got {kind(item)}", field=ikey)
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
            out[name] = as_str(value, ikey, nonempty=False)
    return out


def _parse_docker(node: Node, env: jobs_pb2.Environment) -> None:
    key = "env.docker"
    if isinstance(node, str):
        env.docker_image_resource_id = as_str(node, key).strip()
        return
    spec = as_map(node, key)
    check_keys(spec, DOCKER_KEYS, key)
    if "image" not in spec:
        raise ConfigError("image is required", field=f"{key}.image")
    d = jobs_pb2.DockerImageSpec(image_url=as_str(spec["image"], f"{key}.image").strip())
    if "username" in spec:
        d.username = as_str(spec["username"], f"{key}.username", nonempty=False)
    if "password" in spec:
        pkey = f"{key}.password"
        pw = spec["password"]
        if isinstance(pw, str):
            d.password_plain_text = pw
        else:
            pmap = as_map(pw, pkey)
            check_keys(pmap, ("secret-id",), pkey)
            if "secret-id" not in pmap:
                raise ConfigError("expected a plain password or {secret-id: NAME}", field=pkey)
            d.password_ds_secret_name = as_str(pmap["secret-id"], f"{pkey}.secret-id").strip()
    env.docker_image_spec.CopyFrom(d)


def _env(b: _Build) -> None:
    """``env``: vars, docker, python (local modules, and the entry script as an input)."""
    if "env" not in b.root:
        return
    espec = as_map(b.root["env"], "env")
    check_keys(espec, ENV_KEYS, "env")
    penv = jobs_pb2.Environment()
    if "vars" in espec:
        for k, v in _parse_env_vars(espec["vars"], "env.vars", b.local_env).items():
            penv.vars[k] = v
    if "docker" in espec:
        _parse_docker(espec["docker"], penv)
    if "python" in espec:
        py, modules, entry = parse_python(espec["python"], b.cmd, b.base_dir, b.analyze)
        penv.python_env.CopyFrom(py)
        b.local_modules = local_module_files(modules)
        script = entry_script_input(entry, b.inputs)
        if script is not None:
            b.inputs.insert(0, script)
    b.params.env.CopyFrom(penv)


# --------------------------------------------------------------------------- resources


def _check_instance_type(name: str, key: str, known: Sequence[str] | None) -> None:
    if known is not None and name not in known:
        raise ConfigError(f"unknown instance type {name!r}; known types: {', '.join(known)}", field=key)


def _instance_types(b: _Build) -> None:
    """``cloud-instance-types`` (a list) or ``cloud-instance-type`` (one); default ``DEFAULT_INSTANCE_TYPE``."""
    root, ckey = b.root, "cloud-instance-types"
    if ckey in root and "cloud-instance-type" in root:
        raise ConfigError("give either cloud-instance-type or cloud-instance-types, not both", field=ckey)
    if ckey in root:
        names = [
            (as_str(v, f"{ckey}[{i}]").strip(), f"{ckey}[{i}]")
            for i, v in enumerate(as_list(root[ckey], ckey, allow_scalar=True))
        ]
        if not names:
            raise ConfigError("must list at least one instance type", field=ckey)
    elif "cloud-instance-type" in root:
        names = [(as_str(root["cloud-instance-type"], "cloud-instance-type").strip(), "cloud-instance-type")]
    else:
        names = [(DEFAULT_INSTANCE_TYPE, "cloud-instance-type")]
    seen: set[str] = set()
    for n, nkey in names:
        _check_instance_type(n, nkey, b.instance_types)
        if n in seen:
            raise ConfigError(f"instance type {n!r} is listed twice", field=nkey)
        seen.add(n)
        b.params.cloud_instance_types.add(name=n)


def _working_storage(b: _Build) -> None:
    wkey = "working-storage"
    if wkey not in b.root:
        return
    wspec = as_map(b.root[wkey], wkey)
    check_keys(wspec, ("type", "size"), wkey)
    wtype = as_str(wspec.get("type", "SSD"), f"{wkey}.type").strip().upper()
    if wtype != "SSD":
        raise ConfigError(f"unknown storage type {wtype!r}; known: SSD", field=f"{wkey}.type")
    if "size" not in wspec:
        raise ConfigError("size is required", field=f"{wkey}.size")
    b.params.extended_working_storage.type = jobs_pb2.ExtendedWorkingStorage.SSD
    b.params.extended_working_storage.size_gb = parse_size_gb(
        as_str(wspec["size"], f"{wkey}.size"), f"{wkey}.size"
    )


def _graceful_shutdown(b: _Build) -> None:
    gkey = "graceful-shutdown"
    if gkey not in b.root:
        return
    gspec = as_map(b.root[gkey], gkey)
    check_keys(gspec, ("signal", "timeout"), gkey)
    g = b.params.graceful_shutdown_parameters
    g.signal = (
        parse_signal(as_str(gspec["signal"], f"{gkey}.signal"), f"{gkey}.signal") if "signal" in gspec else 15
    )
    if "timeout" in gspec:
        g.timeout.FromTimedelta(
            parse_duration(as_str(gspec["timeout"], f"{gkey}.timeout"), f"{gkey}.timeout")
        )


def _spark(b: _Build) -> None:
    skey = "spark"
    if skey not in b.root:
        return
    sspec = as_map(b.root[skey], skey)
    check_keys(sspec, ("connector",), skey)
    if "connector" not in sspec:
        raise ConfigError("connector is required", field=f"{skey}.connector")
    b.params.spark_parameters.connector_id = as_str(sspec["connector"], f"{skey}.connector").strip()


# --------------------------------------------------------------------------- the config

#: The sections in the order they are read: a later one may need what an earlier one declared.
_SECTIONS: tuple[Callable[[_Build], None], ...] = (
    _args,
    _inputs_outputs,
    _mounts_datasets,
    _output_datasets,
    _flags,
    _cmd_vars,  # after every declaration and the flags
    _env,  # after inputs: the entry script is not sent twice
    _instance_types,
    _working_storage,
    _graceful_shutdown,
    _spark,
)


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
    root = load_yaml(text)
    check_keys(root, TOP_LEVEL_KEYS, "")
    name = as_str(root.get("name", ""), "name", nonempty=False).strip()
    desc = as_str(root.get("desc", ""), "desc", nonempty=False)
    if "cmd" not in root:
        raise ConfigError("cmd is required", field="cmd")
    b = _Build(
        root=root,
        cmd=as_str(root["cmd"], "cmd").strip(),
        base_dir=base_dir,
        local_env=os.environ if env is None else env,
        analyze=analyze,
        instance_types=instance_types,
    )
    for section in _SECTIONS:
        section(b)
    return JobSpec(
        name=name,
        desc=desc,
        config_text=text,
        base_dir=base_dir,
        params=b.params,
        inputs=b.inputs,
        local_modules=b.local_modules,
    )


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
