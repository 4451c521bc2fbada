"""The wire contract of the DataSphere Jobs API v2 as this project reads it: one place for each constant.

Client, packaging and server import these; the cell runner shipped into jobs keeps its own copies
(it must stay a single self-contained file) and a test pins them to this module.

* Job statuses: which are final, which mean a job is running.
* Instance types: the names DataSphere offers and what each is made of (cpus, gpus, memory); the
  client refuses a name this table lacks and the local server accepts exactly these by default.
* Variables: names of ``${VAR}`` in ``cmd`` (``[0-9a-zA-Z_-]{1,50}``), the reserved
  ``DS_PROJECT_HOME``, and the ``_LOCAL_MODULE_<i>`` names the official client gives local modules.
* Limits: 5 GiB per file, 10 GiB of inputs and local modules together, 100 entries per list.
* Safe relative paths: what an input or output path without a variable may be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from jupyter_ds_jobs._proto import jobs_pb2

__all__ = [
    "CMD_VAR_RE",
    "DEFAULT_INSTANCE_TYPE",
    "ENV_NAME_RE",
    "FINAL_STATUSES",
    "FINAL_STATUS_NAMES",
    "INSTANCE_TYPES",
    "LOCAL_MODULE_PREFIX",
    "MAX_FILE_BYTES",
    "MAX_ITEMS",
    "MAX_TOTAL_INPUT_BYTES",
    "PROJECT_HOME",
    "RUNNING_STATUSES",
    "VAR_RE",
    "InstanceType",
    "cmd_vars",
    "is_safe_relpath",
    "status_name",
]

#: A job in one of these statuses will not change any more.
FINAL_STATUSES = frozenset({jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED})
#: The same, by name (what faces that show statuses compare with).
FINAL_STATUS_NAMES = frozenset({"SUCCESS", "ERROR", "CANCELLED"})
#: A job in one of these statuses has a process (or is about to, or is stopping one).
RUNNING_STATUSES = frozenset(
    {jobs_pb2.PREPARING, jobs_pb2.EXECUTING, jobs_pb2.UPLOADING_OUTPUT, jobs_pb2.CANCELLING}
)


def status_name(status: int) -> str:
    """``JobStatus`` number -> name (``EXECUTING``); an unknown number as its digits."""
    try:
        return str(jobs_pb2.JobStatus.Name(status))  # type: ignore[arg-type]
    except ValueError:
        return str(status)


@dataclass(frozen=True)
class InstanceType:
    """What one DataSphere instance type is made of."""

    name: str
    cpus: int
    gpus: int
    memory_gib: int


def _types(*rows: tuple[str, int, int, int]) -> dict[str, InstanceType]:
    return {name: InstanceType(name, cpus, gpus, mem) for name, cpus, gpus, mem in rows}


#: The instance types DataSphere offers (name -> cpus, gpus, memory in GiB).
INSTANCE_TYPES: dict[str, InstanceType] = _types(
    ("c1.4", 4, 0, 32),
    ("c1.8", 8, 0, 64),
    ("c1.32", 32, 0, 256),
    ("c1.80", 80, 0, 640),
    ("g1.1", 8, 1, 96),
    ("g1.2", 16, 2, 192),
    ("g1.4", 32, 4, 384),
    ("g1.8", 64, 8, 768),
    ("g2.1", 28, 1, 119),
    ("g2.2", 56, 2, 238),
    ("g2.4", 112, 4, 476),
    ("g2.8", 224, 8, 952),
    ("gt4.1", 8, 1, 48),
    ("gt4.2", 16, 2, 96),
)
#: What a job without ``cloud_instance_types`` runs on (the official CLI's default).
DEFAULT_INSTANCE_TYPE = "c1.4"

#: Names of variables: arguments, input and output vars (``${NAME}`` in cmd).
VAR_RE = re.compile(r"^[0-9a-zA-Z_-]{1,50}$")
#: ``${NAME}`` references in cmd.
CMD_VAR_RE = re.compile(r"\$\{([^}]*)\}")
#: Environment variable names.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The variable of the project disk (``flags: [attach-project-disk]``); never declared by a job.
PROJECT_HOME = "DS_PROJECT_HOME"
#: ``_LOCAL_MODULE_<i>``: the var the official client gives each local-module ZIP.
LOCAL_MODULE_PREFIX = "_LOCAL_MODULE_"

#: One uploaded file at most (DataSphere refuses larger ones).
MAX_FILE_BYTES = 5 * 2**30
#: Inputs and local modules of one job together at most.
MAX_TOTAL_INPUT_BYTES = 10 * 2**30
#: Entries of each list (inputs, outputs, s3 mounts, datasets, arguments) at most.
MAX_ITEMS = 100


def cmd_vars(cmd: str) -> list[str]:
    """The names referenced as ``${NAME}`` in ``cmd``, in order (repeats kept)."""
    return CMD_VAR_RE.findall(cmd)


def is_safe_relpath(path: str) -> bool:
    """A relative POSIX path without ``..``, NUL or backslashes, naming something below its root."""
    if not path or "\x00" in path or "\\" in path:
        return False
    p = PurePosixPath(path)
    return not p.is_absolute() and ".." not in p.parts and p.parts not in ((), (".",))
