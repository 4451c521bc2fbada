"""The Jupyter server extension: :class:`DsJobsApp`, its configuration and its route table.

Enabled on install (``jupyter-config/server-config/jupyter_ds_jobs.json`` in the wheel's shared
data). Configure it as any Jupyter app, e.g. in ``jupyter_server_config.py``::

    c.DsJobsApp.endpoint = "datasphere"      # else DS_JOBS_ENDPOINT / the settings file / embedded
    c.DsJobsApp.project = "bt1..."
    c.DsJobsApp.events_poll_interval = 2.0
"""

from __future__ import annotations

from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, Unicode

from jupyter_ds_jobs.jupyter_ext import handlers as h
from jupyter_ds_jobs.jupyter_ext import stream_handlers as s
from jupyter_ds_jobs.jupyter_ext.backend import BackendOptions, JobsBackend
from jupyter_ds_jobs.jupyter_ext.watcher import JobWatcher

__all__ = ["ROUTES", "DsJobsApp"]

_ID = r"([^/]+)"
#: The routes under the server's base URL (the contract: ``api/openapi.yaml``).
ROUTES: list[tuple[str, type[Any]]] = [
    (r"/ds-jobs/status", h.StatusHandler),
    (r"/ds-jobs/jobs", h.JobsHandler),
    (rf"/ds-jobs/jobs/{_ID}", h.JobHandler),
    (rf"/ds-jobs/jobs/{_ID}/cancel", h.CancelHandler),
    (rf"/ds-jobs/jobs/{_ID}/clone", h.CloneHandler),
    (rf"/ds-jobs/jobs/{_ID}/delete-data", h.DeleteDataHandler),
    (rf"/ds-jobs/jobs/{_ID}/ttl", h.TtlHandler),
    (rf"/ds-jobs/jobs/{_ID}/logs", s.LogsHandler),
    (rf"/ds-jobs/jobs/{_ID}/files", s.FilesHandler),
    (rf"/ds-jobs/jobs/{_ID}/files/(.+)", s.FileHandler),
    (r"/ds-jobs/events", s.EventsHandler),
    (r"/ds-jobs/notebooks/run", h.RunNotebookHandler),
    (r"/ds-jobs(?:/.*)?", h.NotFoundHandler),
]


class DsJobsApp(ExtensionApp):
    """DataSphere Jobs in JupyterLab: the REST API the DS Jobs panel uses."""

    name = "jupyter_ds_jobs"
    description = "DataSphere Jobs API v2 jobs for the JupyterLab DS Jobs panel"
    load_other_extensions = True

    endpoint = Unicode(
        "",
        config=True,
        help="The job server (host:port, grpc:// or grpcs://, or 'datasphere'); empty: DS_JOBS_ENDPOINT, "
        "the settings file, else the embedded local server, found or started (as %%ds_job does).",
    )
    token = Unicode("", config=True, help="The job server's bearer token; empty: DS_JOBS_TOKEN / settings.")
    project = Unicode("", config=True, help="The project; empty: DS_JOBS_PROJECT / settings / 'local'.")
    state_dir = Unicode("", config=True, help="The embedded server's state dir; empty: the default one.")
    start_server = Bool(True, config=True, help="Start the embedded local server when none runs.")
    events_poll_interval = Float(
        1.0, config=True, help="Seconds between the job polls behind /ds-jobs/events."
    )
    max_workers = Int(8, config=True, help="Threads for blocking calls of the job client.")

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        backend = JobsBackend(
            BackendOptions(
                endpoint=self.endpoint,
                token=self.token,
                project=self.project,
                state_dir=self.state_dir,
                start_server=self.start_server,
                max_workers=self.max_workers,
            ),
            root_dir=self.serverapp.root_dir,
        )
        self.settings.update(
            ds_jobs_backend=backend, ds_jobs_watcher=JobWatcher(backend, self.events_poll_interval)
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(ROUTES)

    async def stop_extension(self) -> None:
        watcher: JobWatcher | None = self.settings.get("ds_jobs_watcher")
        if watcher is not None:
            await watcher.close()
        backend: JobsBackend | None = self.settings.get("ds_jobs_backend")
        if backend is not None:
            backend.close()
