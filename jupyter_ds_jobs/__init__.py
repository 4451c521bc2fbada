"""jupyter_ds_jobs: run notebook code as DataSphere jobs, locally or remotely."""

from jupyter_ds_jobs._version import __version__

__all__ = ["__version__"]
