"""jupyter_ds_jobs: run notebook code as DataSphere jobs, locally or remotely."""

from __future__ import annotations

from typing import Any

from jupyter_ds_jobs._version import __version__

__all__ = ["__version__", "load_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_ds_jobs``: registers ``%%ds_job`` and the ``%ds_*`` magics."""
    from jupyter_ds_jobs.magics import load_ipython_extension as load

    load(ipython)
