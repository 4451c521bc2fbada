"""Deprecated alias of :mod:`jupyter_ds_jobs.packaging.jobspec` (config.yaml -> job), kept so that
``from jupyter_ds_jobs.core.jobspec import load_config`` goes on working.

Reading a ``config.yaml`` runs the static analysis for ``python: auto``, which is packaging's job;
the client (``core``) takes the job it builds. This one module is exempt from the floors contract
(``pyproject.toml``); nothing in the package imports it.
"""

from __future__ import annotations

import warnings

from jupyter_ds_jobs.packaging.jobspec import JobSpec, fork_overrides, load_config, parse_config

__all__ = ["JobSpec", "fork_overrides", "load_config", "parse_config"]

warnings.warn(
    "jupyter_ds_jobs.core.jobspec moved to jupyter_ds_jobs.packaging.jobspec",
    DeprecationWarning,
    stacklevel=2,
)
