"""The REST handlers under ``/ds-jobs/`` (the contract: ``api/openapi.yaml``): thin, ``@authenticated``
by Jupyter's token, each one call of the client in the pool.

Every handler derives from :class:`DsJobsHandler`, whose ``write_error`` is the one place where an
exception becomes a status and a JSON ``{"message", "field"}`` (:func:`~.wire.error_reply`): a
handler raises the error classes and never catches them to answer.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from jupyter_ds_jobs.common.contract import FINAL_STATUSES, RUNNING_STATUSES
from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.reads import list_page, run_return_code, running_progress
from jupyter_ds_jobs.jupyter_ext.backend import JobsBackend
from jupyter_ds_jobs.jupyter_ext.watcher import JobWatcher
from jupyter_ds_jobs.jupyter_ext.wire import (
    error_reply,
    job_json,
    message_json,
    parse_body,
    parse_page_size,
    parse_statuses,
    parse_ttl_days,
    string_map,
)
from jupyter_ds_jobs.packaging.jobspec import fork_overrides

__all__ = ["DsJobsHandler"]

#: ``authorized``'s resource name for every route (a custom Authorizer can refuse it).
AUTH_RESOURCE = "ds_jobs"


class DsJobsHandler(APIHandler):
    """The base: the backend, JSON bodies, and the errors of every route."""

    auth_resource = AUTH_RESOURCE

    @property
    def backend(self) -> JobsBackend:
        backend: JobsBackend = self.settings["ds_jobs_backend"]
        return backend

    @property
    def watcher(self) -> JobWatcher:
        watcher: JobWatcher = self.settings["ds_jobs_watcher"]
        return watcher

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        status, body = error_reply(exc_info[1] if exc_info else None, status_code)
        self.set_status(status)
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if isinstance(value, DsJobsError) and value.http_status < 500:
            self.log.info("ds-jobs: %s %s: %s", value.http_status, self._request_summary(), value)
        elif isinstance(value, DsJobsError):  # the job server unreachable, or its own error: no traceback
            self.log.warning("ds-jobs: %s %s: %s", value.http_status, self._request_summary(), value)
        else:
            super().log_exception(typ, value, tb)

    def body(self, **fields: type | tuple[type, ...]) -> dict[str, Any]:
        return parse_body(self.request.body, fields)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))


class NotFoundHandler(DsJobsHandler):
    """Any other path under ``/ds-jobs/``: a JSON 404 (not Jupyter's HTML page)."""

    def prepare(self) -> None:  # type: ignore[override]
        raise web.HTTPError(404, f"no such route: {self.request.path}")


class StatusHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.backend.in_pool(self.backend.status))


class JobsHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        statuses = parse_statuses(self.get_query_argument("status", ""))
        size = parse_page_size(self.get_query_argument("page_size", None))
        token = self.get_query_argument("page_token", "")
        page = await self.backend.run(list_page, statuses, size, token)
        self.reply({"jobs": [job_json(j) for j in page.jobs], "next_page_token": page.next_page_token})


def _job_with_progress(client: JobsClient, job_id: str) -> dict[str, Any]:
    job = client.get(job_id)
    out = job_json(job)
    if job.status in RUNNING_STATUSES:  # executed: Execute answers with that run's operation
        try:
            progress = running_progress(client, job_id)
        except DsJobsError:  # it ended meanwhile, or a server that does not say
            progress = None
        if progress is not None:
            out["progress"] = message_json(progress)
    elif job.status in FINAL_STATUSES and job.HasField("started_at"):  # it ran: its run's result
        try:
            code = run_return_code(client, job_id)
        except DsJobsError:
            code = None
        if code is not None:
            out["return_code"] = code
    return out


class JobHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.reply(await self.backend.run(_job_with_progress, job_id))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        await self.backend.run(JobsClient.delete, job_id)
        self.set_status(204)
        self.finish()


class CancelHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        body = self.body(graceful=bool, reason=str)
        graceful, reason = body.get("graceful", False), body.get("reason", "cancelled from JupyterLab")
        await self.backend.run(JobsClient.cancel, job_id, graceful, reason)
        self.reply({"id": job_id}, 202)


def _clone_and_execute(client: JobsClient, job_id: str, body: dict[str, Any]) -> str:
    src = client.get(job_id)
    try:
        overrides, _ = fork_overrides(
            args=string_map(body.get("args"), "args"),
            env_vars=string_map(body.get("env_vars"), "env_vars"),
            instance_type=body.get("cloud_instance_type") or None,
            base=src.job_parameters,
        )
    except InvalidArgument as e:  # fork_overrides names the CLI's options: name the body's keys
        raise _rest_field(e) from None
    new_id = client.clone(job_id, overrides, name=body.get("name", ""), desc=body.get("desc", ""))
    client.execute(new_id)
    return new_id


def _rest_field(e: InvalidArgument) -> InvalidArgument:
    cli = e.field or ""
    option, _, name = cli.partition(" ")
    key = {"--arg": "args", "--env-var": "env_vars", "--cloud-instance-type": "cloud_instance_type"}.get(
        option
    )
    message = str(e).removeprefix(f"{cli}: ")
    return InvalidArgument(message, field=f"{key}.{name}" if key and name else key or e.field)


class CloneHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        body = self.body(args=dict, env_vars=dict, name=str, desc=str, cloud_instance_type=str)
        new_id = await self.backend.run(_clone_and_execute, job_id, body)
        self.reply({"id": new_id}, 201)


class DeleteDataHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        await self.backend.run(JobsClient.delete_data, job_id)
        self.set_status(204)
        self.finish()


class TtlHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def put(self, job_id: str) -> None:
        body = self.body(days=(int, float, str))
        if "days" not in body:
            raise InvalidArgument("required: a number of days or 'infinity'", field="days")
        days = parse_ttl_days(body["days"])
        ttl = None if days is None else timedelta(days=days)
        await self.backend.run(JobsClient.set_data_ttl, job_id, ttl)
        self.set_status(204)
        self.finish()


class RunNotebookHandler(DsJobsHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body(path=str, parameters=dict)
        path = self.backend.notebook_path(body.get("path", ""))
        job_id = await self.backend.in_pool(self.backend.run_notebook, path, body.get("parameters", {}))
        self.reply({"id": job_id}, 201)
