"""jupyter_ds_jobs: run notebook code as DataSphere jobs, locally or remotely."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupyter_ds_jobs._version import __version__

if TYPE_CHECKING:
    from jupyter_ds_jobs.notebooks import run_notebook

__all__ = ["__version__", "load_ipython_extension", "run_notebook"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_ds_jobs``: registers ``%%ds_job`` and the ``%ds_*`` magics."""
    from jupyter_ds_jobs.magics import load_ipython_extension as load

    load(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The JupyterLab extension built into ``labextension/`` here (``jupyter labextension develop``)."""
    return [{"src": "labextension", "dest": "jupyter_ds_jobs"}]


def __getattr__(name: str) -> Any:
    """``jupyter_ds_jobs.run_notebook`` (:mod:`jupyter_ds_jobs.notebooks`), imported on first use."""
    if name == "run_notebook":
        from jupyter_ds_jobs.notebooks import run_notebook

        return run_notebook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
