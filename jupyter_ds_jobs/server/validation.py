"""Checks of ``JobParameters`` at Create / Clone.  Each error names the field."""

from __future__ import annotations

from collections.abc import Iterable

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import (
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

__all__ = ["DEFAULT_INSTANCE_TYPES", "check_parameters"]

#: The instance types this server accepts unless told otherwise: all of the contract's.
DEFAULT_INSTANCE_TYPES: tuple[str, ...] = tuple(INSTANCE_TYPES)


def _check_file(f: jobs_pb2.File, field: str, need_relative: bool) -> None:
    if not f.desc.path:
        raise InvalidArgument("path is empty", field=f"{field}.desc.path")
    if need_relative and not is_safe_relpath(f.desc.path):
        raise InvalidArgument(
            f"{f.desc.path!r} must be a relative path without '..'", field=f"{field}.desc.path"
        )
    if f.desc.var and not VAR_RE.match(f.desc.var):
        raise InvalidArgument(f"{f.desc.var!r} must match [0-9a-zA-Z_-]{{1,50}}", field=f"{field}.desc.var")
    if not SHA256_RE.match(f.sha256):
        raise InvalidArgument(f"{f.sha256!r} is not a lowercase hex sha256", field=f"{field}.sha256")
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
    if not p.cmd.strip():
        raise InvalidArgument("cmd is empty", field="job_parameters.cmd")
    _check_counts(p)
    _check_inputs(p)
    _check_outputs(p)
    _check_arguments(p)
    _check_variables(p)
    _check_env_and_shutdown(p)
    _check_resources(p, instance_types)
    _refuse_unsupported(p)


def _check_counts(p: jobs_pb2.JobParameters) -> None:
    for name, items in (
        ("input_files", p.input_files),
        ("output_files", p.output_files),
        ("s3_mount_ids", p.s3_mount_ids),
        ("dataset_ids", p.dataset_ids),
        ("arguments", p.arguments),
    ):
        if len(items) > MAX_ITEMS:
            raise InvalidArgument(
                f"{len(items)} entries, at most {MAX_ITEMS}", field=f"job_parameters.{name}"
            )


def _check_inputs(p: jobs_pb2.JobParameters) -> None:
    """Input files and local modules: each well-formed, no path twice, 10 GiB in all."""
    total = 0
    paths: dict[str, str] = {}
    for i, f in enumerate(p.input_files):
        field = f"job_parameters.input_files[{i}]"
        _check_file(f, field, need_relative=not f.desc.var)
        total += f.size_bytes
        key = f.desc.path if not f.desc.var else f"var:{f.desc.var}"
        if key in paths:
            raise InvalidArgument(f"path {f.desc.path!r} is given twice (also {paths[key]})", field=field)
        paths[key] = field
    for i, f in enumerate(p.env.python_env.local_modules):
        field = f"job_parameters.env.python_env.local_modules[{i}]"
        _check_file(f, field, need_relative=False)
        total += f.size_bytes
    if total > MAX_TOTAL_INPUT_BYTES:
        raise InvalidArgument(
            f"inputs and local modules total {total} bytes, over the 10 GiB limit",
            field="job_parameters.input_files",
        )


def _check_outputs(p: jobs_pb2.JobParameters) -> None:
    out_paths: set[str] = set()
    for i, d in enumerate(p.output_files):
        field = f"job_parameters.output_files[{i}]"
        if not d.path:
            raise InvalidArgument("path is empty", field=f"{field}.path")
        if not d.var and not is_safe_relpath(d.path):
            raise InvalidArgument(f"{d.path!r} must be a relative path without '..'", field=f"{field}.path")
        if d.var and not VAR_RE.match(d.var):
            raise InvalidArgument(f"{d.var!r} must match [0-9a-zA-Z_-]{{1,50}}", field=f"{field}.var")
        if d.path in out_paths:
            raise InvalidArgument(f"path {d.path!r} is given twice", field=f"{field}.path")
        out_paths.add(d.path)


def _check_arguments(p: jobs_pb2.JobParameters) -> None:
    arg_names: set[str] = set()
    for i, a in enumerate(p.arguments):
        if not VAR_RE.match(a.name):
            raise InvalidArgument(
                f"{a.name!r} must match [0-9a-zA-Z_-]{{1,50}}", field=f"job_parameters.arguments[{i}].name"
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
            raise InvalidArgument(f"${{{var}}} is used in cmd but not declared", field="job_parameters.cmd")


def _check_env_and_shutdown(p: jobs_pb2.JobParameters) -> None:
    for name in p.env.vars:
        if not ENV_NAME_RE.match(name):
            raise InvalidArgument(
                f"{name!r} is not a valid environment variable name", field="job_parameters.env.vars"
            )
    gsp = p.graceful_shutdown_parameters
    if gsp.signal and not 1 <= gsp.signal <= 64:
        raise InvalidArgument(
            f"{gsp.signal} is not a signal number", field="job_parameters.graceful_shutdown_parameters.signal"
        )
    if gsp.timeout.seconds < 0 or gsp.timeout.nanos < 0:
        raise InvalidArgument(
            "timeout is negative", field="job_parameters.graceful_shutdown_parameters.timeout"
        )


def _check_resources(p: jobs_pb2.JobParameters, instance_types: Iterable[str]) -> None:
    known = set(instance_types)
    for i, t in enumerate(p.cloud_instance_types):
        if t.name not in known:
            raise InvalidArgument(
                f"unknown instance type {t.name!r}; this server knows {', '.join(sorted(known))}",
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
            f"spark connector {p.spark_parameters.connector_id!r} is not supported by the local job server"
        )
    if p.s3_mount_ids:
        raise FailedPrecondition(
            f"unknown s3 mount ids: {', '.join(p.s3_mount_ids)} (the local server has none)"
        )
    if p.dataset_ids:
        raise FailedPrecondition(
            f"unknown dataset ids: {', '.join(p.dataset_ids)} (the local server has none)"
        )
    if p.output_datasets:
        raise FailedPrecondition("output datasets are not supported by the local job server")
