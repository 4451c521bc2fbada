"""Checks of ``JobParameters`` and of the other request fields at Create / Clone; each error names
the field and never echoes more than :data:`SHOWN` characters of what it refuses.

What one request may hold (stated in docs/server.md): the gRPC server reads at most
:data:`MAX_REQUEST_BYTES` of a message; a job's parameters serialize to at most
:data:`MAX_PARAMETERS_BYTES`; no string of them holds a NUL byte; each is at most
:data:`MAX_STRING_BYTES` long, except ``cmd``, argument values, env var values and the conda YAML
(:data:`MAX_LONG_STRING_BYTES`); ``cmd`` with its ``${VAR}``s replaced, argument values and env
vars together stay under :data:`MAX_EXEC_BYTES` (far below the OS's ``ARG_MAX``, and each string
below its 128 KiB ``MAX_ARG_STRLEN``); paths are at most :data:`MAX_PATH_BYTES`, each segment at
most :data:`MAX_SEGMENT_BYTES`; an input file is never the parent of another input or output.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import (
    CMD_VAR_RE,
    ENV_NAME_RE,
    INSTANCE_TYPES,
    LOCAL_MODULE_PREFIX,
    MAX_FILE_BYTES,
    MAX_ITEMS,
    MAX_TOTAL_INPUT_BYTES,
    PROJECT_HOME,
    VAR_RE,
    cmd_vars,
    is_safe_relpath,
)
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument
from jupyter_ds_jobs.server.blobs import SHA256_RE

__all__ = [
    "DEFAULT_INSTANCE_TYPES",
    "MAX_CONFIG_BYTES",
    "MAX_DESC_BYTES",
    "MAX_DURATION_S",
    "MAX_EXEC_BYTES",
    "MAX_ID_BYTES",
    "MAX_LONG_STRING_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PARAMETERS_BYTES",
    "MAX_PATH_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_SEGMENT_BYTES",
    "MAX_STRING_BYTES",
    "check_archives",
    "check_duration",
    "check_length",
    "check_parameters",
    "check_project_id",
    "placed",
    "shown",
]

#: The instance types this server accepts unless told otherwise: all of the contract's.
DEFAULT_INSTANCE_TYPES: tuple[str, ...] = tuple(INSTANCE_TYPES)

#: A gRPC message the server reads at most (``grpc.max_receive_message_length``; a larger one gets
#: RESOURCE_EXHAUSTED before it is parsed). gRPC's own default, and what clients accept.
MAX_REQUEST_BYTES = 4 * 2**20
#: ``JobParameters`` serialized, at most.
MAX_PARAMETERS_BYTES = 2**20
#: A job's name; a project, job or operation id (a project id also names a directory).
MAX_NAME_BYTES = 1024
MAX_ID_BYTES = 255
#: A job's description and config (the config.yaml text).
MAX_DESC_BYTES = 64 * 2**10
MAX_CONFIG_BYTES = 256 * 2**10
#: Any string of JobParameters, except the long ones below.
MAX_STRING_BYTES = 1024
#: ``cmd`` (also with its ``${VAR}``s replaced), each argument value, each env var, the conda YAML.
MAX_LONG_STRING_BYTES = 64 * 2**10
#: ``cmd`` with its ``${VAR}``s replaced, argument values and env vars (``NAME=value``) together.
MAX_EXEC_BYTES = 256 * 2**10
#: A path of an input, output or local module; one segment of it (the file systems' NAME_MAX).
MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
#: The largest valid ``google.protobuf.Duration`` (10,000 years).
MAX_DURATION_S = 315_576_000_000
#: Characters of a refused value an error message shows.
SHOWN = 80

#: Compression methods zipfile reads.
ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})

#: String fields (their path without indices) that may hold MAX_LONG_STRING_BYTES.
_LONG_FIELDS = frozenset({"cmd", "arguments.value", "env.vars.value", "env.python_env.conda_yaml"})


def shown(value: str) -> str:
    """``repr`` of at most :data:`SHOWN` characters of ``value`` (an error message stays short)."""
    if len(value) <= SHOWN:
        return repr(value)
    return f"{value[:SHOWN]!r}... ({len(value)} characters)"


def _clip(value: str) -> str:
    """At most :data:`SHOWN` characters of ``value``, unquoted (for names in a list)."""
    return value if len(value) <= SHOWN else f"{value[:SHOWN]}..."


def check_length(value: str, limit: int, field: str) -> None:
    """InvalidArgument naming ``field`` if ``value`` is over ``limit`` bytes of UTF-8."""
    if len(value) > limit or len(value.encode()) > limit:
        raise InvalidArgument(f"{len(value.encode())} bytes, at most {limit}", field=field)


def check_project_id(project_id: str) -> None:
    """A project id of a new job: it names the project's directory, so one plain path segment."""
    if not project_id:
        raise InvalidArgument("project_id is empty", field="project_id")
    check_length(project_id, MAX_ID_BYTES, "project_id")
    if any(c in project_id for c in "/\\\x00") or project_id in (".", ".."):
        raise InvalidArgument(
            f"{shown(project_id)} must not contain '/', '\\' or NUL, nor be '.' or '..'", field="project_id"
        )


def check_duration(seconds: int, nanos: int, field: str) -> None:
    """A valid, non-negative ``google.protobuf.Duration``; else InvalidArgument naming ``field``."""
    if not -999_999_999 <= nanos <= 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument(f"nanos {nanos} is not a valid Duration with seconds {seconds}", field=field)
    if seconds < 0 or nanos < 0:
        raise InvalidArgument("is negative", field=field)
    if seconds > MAX_DURATION_S:
        raise InvalidArgument(
            f"{seconds} seconds is past the Duration range ({MAX_DURATION_S} seconds, 10,000 years)",
            field=field,
        )


def placed(path: str, var: str, kind: str) -> PurePosixPath:
    """Where an input (``kind`` "inputs") or output ("outputs") lands, relative to the job's dir:
    what :func:`jupyter_ds_jobs.server.runtime.place` does, without a disk."""
    if is_safe_relpath(path):
        return PurePosixPath(path)
    return PurePosixPath(f"_{kind}", var, PurePosixPath(path).name or var)


def _strings(msg: Message, field: str, key: str) -> Iterator[tuple[str, str, str]]:
    """(field, field without indices, value) of every string set in ``msg``, nested ones too."""
    for fd, value in msg.ListFields():
        name, k = f"{field}.{fd.name}", f"{key}.{fd.name}" if key else fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for map_key, item in value.items():
                yield f"{name}[{shown(map_key)}]", f"{k}.key", map_key
                if isinstance(item, str):
                    yield f"{name}[{shown(map_key)}]", f"{k}.value", item
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            for i, m in enumerate(value) if fd.is_repeated else [(-1, value)]:
                yield from _strings(m, f"{name}[{i}]" if i >= 0 else name, k)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            for i, s in enumerate(value) if fd.is_repeated else [(-1, value)]:
                yield f"{name}[{i}]" if i >= 0 else name, k, s


def _check_strings(p: jobs_pb2.JobParameters) -> None:
    """Sizes first (before any message shows a value): the whole, then each string; no NUL."""
    size = p.ByteSize()
    if size > MAX_PARAMETERS_BYTES:
        raise InvalidArgument(
            f"{size} bytes serialized, at most {MAX_PARAMETERS_BYTES}", field="job_parameters"
        )
    for field, key, value in _strings(p, "job_parameters", ""):
        check_length(value, MAX_LONG_STRING_BYTES if key in _LONG_FIELDS else MAX_STRING_BYTES, field)
        if "\x00" in value:
            raise InvalidArgument("contains a NUL byte", field=field)


def _check_path(path: str, where: PurePosixPath | None, field: str) -> None:
    """A path that names a file: not empty, and (``where`` it lands) each segment a real name."""
    if not path:
        raise InvalidArgument("path is empty", field=field)
    for part in where.parts if where is not None else ():
        if part == "..":
            raise InvalidArgument(f"{shown(path)} must name a file, not '..'", field=field)
        if len(part.encode()) > MAX_SEGMENT_BYTES:
            raise InvalidArgument(
                f"a segment of {len(part.encode())} bytes, at most {MAX_SEGMENT_BYTES}", field=field
            )


def _check_file(f: jobs_pb2.File, field: str, need_relative: bool) -> None:
    if need_relative and f.desc.path and not is_safe_relpath(f.desc.path):
        raise InvalidArgument(
            f"{shown(f.desc.path)} must be a relative path without '..'", field=f"{field}.desc.path"
        )
    if f.desc.var and not VAR_RE.match(f.desc.var):
        raise InvalidArgument(
            f"{shown(f.desc.var)} must match [0-9a-zA-Z_-]{{1,50}}", field=f"{field}.desc.var"
        )
    if not SHA256_RE.match(f.sha256):
        raise InvalidArgument(f"{shown(f.sha256)} is not a lowercase hex sha256", field=f"{field}.sha256")
    if f.size_bytes < 0:
        raise InvalidArgument(f"{f.size_bytes} is negative", field=f"{field}.size_bytes")
    if f.size_bytes > MAX_FILE_BYTES:
        raise InvalidArgument(f"{f.size_bytes} bytes is over the 5 GiB limit", field=f"{field}.size_bytes")


def _unique(names: Iterable[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for field, var in names:
        if not var:
            continue
        if var in seen:
            raise InvalidArgument(f"variable {var!r} is declared twice (also by {seen[var]})", field=field)
        seen[var] = field


def check_parameters(p: jobs_pb2.JobParameters, instance_types: Iterable[str]) -> None:
    """Raise InvalidArgument / FailedPrecondition for parameters this server cannot run."""
    _check_counts(p)
    _check_strings(p)
    if not p.cmd.strip():
        raise InvalidArgument("cmd is empty", field="job_parameters.cmd")
    _check_inputs(p)
    _check_outputs(p)
    _check_layout(p)
    _check_arguments(p)
    _check_variables(p)
    _check_env_and_shutdown(p)
    _check_exec_size(p)
    _check_resources(p, instance_types)
    _refuse_unsupported(p)


def _check_counts(p: jobs_pb2.JobParameters) -> None:
    for name, items in (
        ("input_files", p.input_files),
        ("output_files", p.output_files),
        ("s3_mount_ids", p.s3_mount_ids),
        ("dataset_ids", p.dataset_ids),
        ("arguments", p.arguments),
        ("env.python_env.local_modules", p.env.python_env.local_modules),
    ):
        if len(items) > MAX_ITEMS:
            raise InvalidArgument(
                f"{len(items)} entries, at most {MAX_ITEMS}", field=f"job_parameters.{name}"
            )


def _check_inputs(p: jobs_pb2.JobParameters) -> None:
    """Input files and local modules: each well-formed, no place twice, 10 GiB in all."""
    total = 0
    where: dict[PurePosixPath, str] = {}
    for i, f in enumerate(p.input_files):
        field = f"job_parameters.input_files[{i}]"
        _check_file(f, field, need_relative=not f.desc.var)
        dest = placed(f.desc.path, f.desc.var, "inputs")
        _check_path(f.desc.path, dest, f"{field}.desc.path")
        total += f.size_bytes
        if dest in where:
            raise InvalidArgument(
                f"path {shown(f.desc.path)} is given twice (also {where[dest]})", field=field
            )
        where[dest] = field
    for i, f in enumerate(p.env.python_env.local_modules):
        field = f"job_parameters.env.python_env.local_modules[{i}]"
        _check_file(f, field, need_relative=False)
        _check_path(f.desc.path, None, f"{field}.desc.path")
        total += f.size_bytes
    if total > MAX_TOTAL_INPUT_BYTES:
        raise InvalidArgument(
            f"inputs and local modules total {total} bytes, over the 10 GiB limit",
            field="job_parameters.input_files",
        )


def _check_outputs(p: jobs_pb2.JobParameters) -> None:
    where: set[PurePosixPath] = set()
    for i, d in enumerate(p.output_files):
        field = f"job_parameters.output_files[{i}]"
        if d.path and not d.var and not is_safe_relpath(d.path):
            raise InvalidArgument(
                f"{shown(d.path)} must be a relative path without '..'", field=f"{field}.path"
            )
        if d.var and not VAR_RE.match(d.var):
            raise InvalidArgument(f"{shown(d.var)} must match [0-9a-zA-Z_-]{{1,50}}", field=f"{field}.var")
        dest = placed(d.path, d.var, "outputs")
        _check_path(d.path, dest, f"{field}.path")
        if dest in where:
            raise InvalidArgument(f"path {shown(d.path)} is given twice", field=f"{field}.path")
        where.add(dest)


def _check_layout(p: jobs_pb2.JobParameters) -> None:
    """No input or output lands below an input file (a ZIP input is a directory: that is fine)."""
    files = {
        placed(f.desc.path, f.desc.var, "inputs"): f"job_parameters.input_files[{i}]"
        for i, f in enumerate(p.input_files)
        if f.compression_type != jobs_pb2.ZIP
    }
    below = [
        (f"job_parameters.input_files[{i}].desc.path", placed(f.desc.path, f.desc.var, "inputs"))
        for i, f in enumerate(p.input_files)
    ]
    below += [
        (f"job_parameters.output_files[{i}].path", placed(d.path, d.var, "outputs"))
        for i, d in enumerate(p.output_files)
    ]
    for field, dest in below:
        for parent in dest.parents:
            if parent in files:
                raise InvalidArgument(
                    f"{shown(str(dest))} would be inside {shown(str(parent))}, the input file of {files[parent]}",
                    field=field,
                )


def _check_arguments(p: jobs_pb2.JobParameters) -> None:
    arg_names: set[str] = set()
    for i, a in enumerate(p.arguments):
        if not VAR_RE.match(a.name):
            raise InvalidArgument(
                f"{shown(a.name)} must match [0-9a-zA-Z_-]{{1,50}}",
                field=f"job_parameters.arguments[{i}].name",
            )
        if a.name in arg_names:
            raise InvalidArgument(
                f"argument {a.name!r} is given twice", field=f"job_parameters.arguments[{i}].name"
            )
        arg_names.add(a.name)


def _check_variables(p: jobs_pb2.JobParameters) -> None:
    """Each ``${VAR}`` is declared once, none is the reserved one, and cmd uses only declared ones."""
    declared = [
        (f"job_parameters.input_files[{i}].desc.var", f.desc.var) for i, f in enumerate(p.input_files)
    ]
    declared += [(f"job_parameters.output_files[{i}].var", d.var) for i, d in enumerate(p.output_files)]
    declared += [(f"job_parameters.arguments[{i}].name", a.name) for i, a in enumerate(p.arguments)]
    declared += [(f"job_parameters.output_datasets[{i}].var", d.var) for i, d in enumerate(p.output_datasets)]
    _unique(declared)
    for field, var in declared:
        if var == PROJECT_HOME:
            raise InvalidArgument(f"{PROJECT_HOME} is reserved", field=field)
    names = {v for _, v in declared if v}
    names.update(f"{LOCAL_MODULE_PREFIX}{i}" for i in range(len(p.env.python_env.local_modules)))
    names.update(f.desc.var for f in p.env.python_env.local_modules if f.desc.var)
    names.update(p.s3_mount_ids)
    names.update(p.dataset_ids)
    if p.attach_project_disk:
        names.add(PROJECT_HOME)
    for var in cmd_vars(p.cmd):
        if var not in names:
            raise InvalidArgument(
                f"${{{_clip(var)}}} is used in cmd but not declared", field="job_parameters.cmd"
            )


def _check_env_and_shutdown(p: jobs_pb2.JobParameters) -> None:
    for name in p.env.vars:
        if not ENV_NAME_RE.match(name):
            raise InvalidArgument(
                f"{shown(name)} is not a valid environment variable name", field="job_parameters.env.vars"
            )
    gsp = p.graceful_shutdown_parameters
    if gsp.signal and not 1 <= gsp.signal <= 64:
        raise InvalidArgument(
            f"{gsp.signal} is not a signal number", field="job_parameters.graceful_shutdown_parameters.signal"
        )
    check_duration(
        gsp.timeout.seconds, gsp.timeout.nanos, "job_parameters.graceful_shutdown_parameters.timeout"
    )


def _quoted_bytes(value: str) -> int:
    """Bytes ``value`` may take in cmd once quoted for its place (``server.substitute``): each
    quote, backslash, ``$`` or backquote as up to 5 characters, plus the enclosing quotes."""
    if not value:
        return 2
    specials = sum(value.count(c) for c in "'\"\\$`")
    return len(value.encode()) + 4 * specials + 2


def _check_exec_size(p: jobs_pb2.JobParameters) -> None:
    """What the job's process gets (cmd as one argument, env vars) stays far below the OS's limits.

    A ``${VAR}`` counts as its value quoted: an argument's, the path an input or output lands at,
    or (the project disk, a local module) a bound of :data:`MAX_PATH_BYTES`."""
    values = {a.name: _quoted_bytes(a.value) for a in p.arguments}
    for kind, descs in (("inputs", [f.desc for f in p.input_files]), ("outputs", list(p.output_files))):
        values.update({d.var: _quoted_bytes(str(placed(d.path, d.var, kind))) for d in descs if d.var})
    expanded = len(CMD_VAR_RE.sub("", p.cmd).encode())
    expanded += sum(values.get(var, MAX_PATH_BYTES) for var in cmd_vars(p.cmd))
    if expanded > MAX_LONG_STRING_BYTES:
        raise InvalidArgument(
            f"{expanded} bytes with its variables replaced and quoted, at most {MAX_LONG_STRING_BYTES}",
            field="job_parameters.cmd",
        )
    parts = {
        "job_parameters.cmd": expanded,
        "job_parameters.arguments": sum(len(a.value.encode()) for a in p.arguments),
        "job_parameters.env.vars": sum(len(k.encode()) + len(v.encode()) + 2 for k, v in p.env.vars.items()),
    }
    total = sum(parts.values())
    if total > MAX_EXEC_BYTES:
        raise InvalidArgument(
            f"cmd (variables replaced), arguments and env vars total {total} bytes, at most {MAX_EXEC_BYTES}",
            field=max(parts, key=lambda k: parts[k]),
        )


def _check_resources(p: jobs_pb2.JobParameters, instance_types: Iterable[str]) -> None:
    known = set(instance_types)
    for i, t in enumerate(p.cloud_instance_types):
        if t.name not in known:
            raise InvalidArgument(
                f"unknown instance type {shown(t.name)}; this server knows {', '.join(sorted(known))}",
                field=f"job_parameters.cloud_instance_types[{i}].name",
            )
    if p.extended_working_storage.size_gb < 0:
        raise InvalidArgument("size_gb is negative", field="job_parameters.extended_working_storage.size_gb")


def _refuse_unsupported(p: jobs_pb2.JobParameters) -> None:
    """What this server cannot do is refused, never silently ignored."""
    if p.env.WhichOneof("docker_image"):
        raise FailedPrecondition(
            "docker images are not supported by the local job server (job_parameters.env.docker_image)"
        )
    if p.spark_parameters.connector_id:
        raise FailedPrecondition(
            f"spark connector {shown(p.spark_parameters.connector_id)} is not supported by the local job server"
        )
    if p.s3_mount_ids:
        raise FailedPrecondition(
            f"unknown s3 mount ids: {_clip(', '.join(p.s3_mount_ids))} (the local server has none)"
        )
    if p.dataset_ids:
        raise FailedPrecondition(
            f"unknown dataset ids: {_clip(', '.join(p.dataset_ids))} (the local server has none)"
        )
    if p.output_datasets:
        raise FailedPrecondition("output datasets are not supported by the local job server")


# -- at Execute: the archives' contents -----------------------------------------------------------


def check_archives(p: jobs_pb2.JobParameters, blob: Callable[[str], Path]) -> None:
    """FailedPrecondition naming the file for a local module or ZIP input that zipfile cannot
    extract (not a ZIP, truncated, encrypted, an unknown compression method), or whose entries
    would land where an input file goes, below one, or as a file above an input or output
    (``blob``: sha256 -> the uploaded file). Read from the central directories only."""
    files = {
        placed(f.desc.path, f.desc.var, "inputs"): f.desc.path
        for f in p.input_files
        if f.compression_type != jobs_pb2.ZIP
    }
    archives = [(f, PurePosixPath()) for f in p.env.python_env.local_modules]  # into the job dir
    archives += [
        (f, placed(f.desc.path, f.desc.var, "inputs"))
        for f in p.input_files
        if f.compression_type == jobs_pb2.ZIP
    ]
    below = [*files, *(placed(d.path, d.var, "outputs") for d in p.output_files)]
    for f, dest in archives:
        try:
            _check_landing(_zip_entries(blob(f.sha256)), dest, files, below)
        except ValueError as e:
            raise FailedPrecondition(f"ZIP archive {shown(f.desc.path)} cannot be extracted: {e}") from None


def _zip_entries(path: Path) -> list[tuple[PurePosixPath, bool]]:
    """(name, is a directory) of each entry; ValueError saying why zipfile could not extract it."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except Exception as e:  # zipfile raises many kinds for bytes that are not a ZIP (BadZipFile, EOFError...)
        raise ValueError(f"{type(e).__name__}: {e}") from None
    for info in infos:
        if info.flag_bits & 0x1:
            raise ValueError(f"entry {shown(info.filename)} is encrypted")
        if info.compress_type not in ZIP_METHODS:
            raise ValueError(f"entry {shown(info.filename)} uses compression method {info.compress_type}")
    return [(PurePosixPath(i.filename), i.is_dir()) for i in infos if i.filename.strip("/")]


def _check_landing(
    entries: list[tuple[PurePosixPath, bool]],
    dest: PurePosixPath,
    files: dict[PurePosixPath, str],
    below: list[PurePosixPath],
) -> None:
    """Where the entries land (as ``bundle.extract_as`` puts them; a local module: the job dir)
    meets no input file (none lands on one as a directory or below one) and no entry is a file
    where an input or output (``below``) needs a directory."""
    rooted = bool(dest.parts) and all(name.parts[:1] == (dest.name,) for name, _ in entries)
    base = dest.parent if rooted else dest
    landed_files = set()
    for name, is_dir in entries:
        where = base / name
        for parent in where.parents:
            if parent in files:
                raise ValueError(
                    f"entry {shown(str(name))} would be inside the input file {shown(files[parent])}"
                )
        if is_dir and where in files:
            raise ValueError(
                f"entry {shown(str(name))} would be a directory where the input file {shown(files[where])} goes"
            )
        if not is_dir:
            landed_files.add(where)
    for path in below:
        for parent in path.parents:
            if parent in landed_files:
                raise ValueError(
                    f"entry {shown(str(parent))} is a file where {shown(str(path))} needs a directory"
                )
