"""The parts of a job's conda environment YAML this server honours: ``python`` and ``pip:``.

``dependencies`` may hold ``python=X.Y`` (the job's python version), ``pip`` itself, and one
``pip:`` list of requirement lines and pip options (``--index-url``, ``--extra-index-url``,
``--trusted-host``, ``--no-deps``). Any other dependency is a conda package, which cannot be
installed here: the job is refused with ``FailedPrecondition`` naming every such package, never
run without it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument
from jupyter_ds_jobs.common.requirements import apply_pip_option, split_pip_option
from jupyter_ds_jobs.server.interpreters import python_major_minor

__all__ = ["CONDA_FIELD", "CondaParts", "parse_conda_yaml"]

CONDA_FIELD = "env.python_env.conda_yaml"

# Conda match specs ("conda-forge::numpy >=1.2 py_0", "python=3.11.*") are not PEP 508, so pypa
# packaging cannot read them: the name and the python pin are picked out by hand.
_MATCH_SPEC = re.compile(r"(?:[^\s:]+::)?([A-Za-z0-9_.\-]+)\s*(.*)")
_PYTHON_PIN = re.compile(r"(?:==?)?\s*(\d+\.\d+)(?:\.[\d*]+|\.?\*)?(?:\s+\S+)?")


@dataclass
class CondaParts:
    python_version: str = ""
    requirements: list[str] = field(default_factory=list)
    pip: jobs_pb2.PipOptions = field(default_factory=jobs_pb2.PipOptions)


def _parse_pip_lines(lines: Sequence[object], parts: CondaParts) -> None:
    for raw in lines:
        if not isinstance(raw, str):
            raise InvalidArgument(f"pip entry {raw!r} is not a string", field=CONDA_FIELD)
        line = raw.strip()
        if not line.startswith("-"):
            parts.requirements.append(line)
            continue
        try:
            apply_pip_option(parts.pip, *split_pip_option(line))
        except ValueError as exc:
            raise InvalidArgument(f"{line!r}: {exc}", field=CONDA_FIELD) from None


def _python_pin(spec: str, constraint: str) -> str:
    vm = _PYTHON_PIN.fullmatch(constraint)
    if vm is None:
        raise InvalidArgument(
            f"{spec!r}: pin python as python=3.X (ranges are not supported)", field=CONDA_FIELD
        )
    return python_major_minor(vm.group(1), CONDA_FIELD)


def _dependencies(text: str) -> list[object]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"not valid YAML: {exc}", field=CONDA_FIELD) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise InvalidArgument("must be a mapping with a 'dependencies' list", field=CONDA_FIELD)
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise InvalidArgument("'dependencies' must be a list", field=CONDA_FIELD)
    return deps


def parse_conda_yaml(text: str) -> CondaParts:
    """The python version, pip requirements and pip options of a conda environment YAML.

    Malformed YAML is ``InvalidArgument``; conda-only packages are ``FailedPrecondition`` naming them.
    """
    parts = CondaParts()
    conda_only: list[str] = []
    for dep in _dependencies(text):
        if isinstance(dep, dict):
            if set(dep) != {"pip"} or not isinstance(dep["pip"], list):
                raise InvalidArgument(f"dependency {dep!r}: only a 'pip:' list is allowed", field=CONDA_FIELD)
            _parse_pip_lines(dep["pip"], parts)
            continue
        if not isinstance(dep, (str, int, float)):
            raise InvalidArgument(f"dependency {dep!r} is not a string", field=CONDA_FIELD)
        spec = str(dep).strip()
        m = _MATCH_SPEC.match(spec)
        if m is None:
            raise InvalidArgument(f"cannot parse dependency {spec!r}", field=CONDA_FIELD)
        name, constraint = m.group(1).lower(), m.group(2).strip()
        if name == "python":
            if constraint:
                parts.python_version = _python_pin(spec, constraint)
        elif name != "pip":
            conda_only.append(spec)
    if conda_only:
        raise FailedPrecondition(
            "conda packages cannot be installed here, only pip ones; move these to the 'pip:' section "
            f"of conda_yaml or to requirements: {', '.join(conda_only)}"
        )
    return parts
