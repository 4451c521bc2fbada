"""The Jupyter server extension of jupyter_ds_jobs: REST and server-sent events under ``/ds-jobs/``
for the JupyterLab DS Jobs panel (the contract: ``api/openapi.yaml``; user docs: ``docs/panel.md``).

A face like the magic and the CLI: it reaches the job service only through the client library.
"""

from __future__ import annotations

from typing import Any

from jupyter_ds_jobs.jupyter_ext.app import DsJobsApp

__all__ = ["DsJobsApp"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "jupyter_ds_jobs.jupyter_ext", "app": DsJobsApp}]
