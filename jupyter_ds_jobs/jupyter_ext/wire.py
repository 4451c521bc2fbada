"""The REST contract's data (``api/openapi.yaml``): jobs as JSON, error bodies, request parsing.

* :func:`error_reply` is the one place where an exception becomes an HTTP status and a body
  ``{"message": ..., "field": ...}``: a :class:`~jupyter_ds_jobs.common.errors.DsJobsError` by its
  ``http_status`` (the one table, ``STATUS_TABLE``), a tornado ``HTTPError`` by its code, anything
  else is a bug (500, logged with its traceback by the handler).
* :func:`job_json` renders a ``Job`` with protobuf's JSON mapping (proto field names, enum names,
  int64 as strings, default values left out) plus ``origin`` parsed from its ``desc``.
* Bodies and query values are checked here; a bad one is :class:`InvalidArgument` naming the
  field, so it answers 400, never 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from tornado.web import HTTPError, MissingArgumentError

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import DsJobsError, InvalidArgument
from jupyter_ds_jobs.common.origin import parse_origin

__all__ = [
    "ACTIVE_STATUSES",
    "LogPosition",
    "error_reply",
    "job_json",
    "message_json",
    "parse_body",
    "parse_log_position",
    "parse_page_size",
    "parse_statuses",
    "parse_ttl_days",
    "string_map",
]

#: Statuses in which a job may still change (the events watcher polls these whatever their age).
ACTIVE_STATUSES = (
    jobs_pb2.CREATING,
    jobs_pb2.PREPARING,
    jobs_pb2.EXECUTING,
    jobs_pb2.UPLOADING_OUTPUT,
    jobs_pb2.CANCELLING,
)
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def error_reply(exc: BaseException | None, status: int = 500) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for ``exc`` (``status`` when it is neither kind we know)."""
    if isinstance(exc, DsJobsError):
        return exc.http_status, {"message": str(exc), "field": exc.field}
    if isinstance(exc, MissingArgumentError):
        return 400, {"message": f"missing query argument {exc.arg_name!r}", "field": exc.arg_name}
    if isinstance(exc, HTTPError):
        return exc.status_code, {"message": exc.log_message or exc.reason or str(exc), "field": None}
    if exc is None:
        return status, {"message": f"HTTP {status}", "field": None}
    return 500, {
        "message": f"internal error ({type(exc).__name__}); see the Jupyter server log",
        "field": None,
    }


def message_json(msg: Message) -> dict[str, Any]:
    """A protobuf message as the REST API renders it (proto field names, enum names)."""
    return MessageToDict(msg, preserving_proto_field_name=True)


def job_json(job: jobs_pb2.Job) -> dict[str, Any]:
    """A ``Job`` as JSON, with ``origin`` (``notebook``, ``count``, ``cell_id``) when its desc has one."""
    out = message_json(job)
    origin = parse_origin(job.desc)
    if origin is not None:
        out["origin"] = {"notebook": origin.notebook, "count": origin.count, "cell_id": origin.cell_id}
    return out


def parse_body(raw: bytes, fields: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A JSON object body with only ``fields`` (each of its type); an empty body is ``{}``."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"not JSON: {e}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"expected a JSON object, got {type(data).__name__}", field="body")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgument(
            f"unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}", field=unknown[0]
        )
    for key, value in data.items():
        want = fields[key]
        # bool is an int in Python, never a number here
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in _types(want)):
            names = " or ".join(t.__name__ for t in _types(want))
            raise InvalidArgument(f"expected {names}, got {json.dumps(value)[:80]}", field=key)
    return data


def _types(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def string_map(value: Any, field: str) -> dict[str, str]:
    """A JSON object of strings (``args``, ``env_vars``); numbers and booleans are taken as text."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"expected an object, got {json.dumps(value)[:80]}", field=field)
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, int | float):
            v = json.dumps(v)
        if not isinstance(v, str):
            raise InvalidArgument(f"expected a string, got {json.dumps(v)[:80]}", field=f"{field}.{k}")
        out[k] = v
    return out


def parse_statuses(text: str) -> list[int]:
    """``status=A,B``: job status names (any case), comma separated."""
    out: list[int] = []
    for part in text.split(","):
        name = part.strip().upper()
        if not name:
            continue
        try:
            out.append(jobs_pb2.JobStatus.Value(name))
        except ValueError:
            known = ", ".join(n for n, _ in jobs_pb2.JobStatus.items() if n != "JOB_STATUS_UNSPECIFIED")
            raise InvalidArgument(
                f"unknown job status {part.strip()!r}; known: {known}", field="status"
            ) from None
    return out


def parse_page_size(text: str | None) -> int:
    if text is None or not text.strip():
        return DEFAULT_PAGE_SIZE
    try:
        n = int(text)
    except ValueError:
        raise InvalidArgument(f"expected an integer, got {text!r}", field="page_size") from None
    if not 1 <= n <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"must be between 1 and {MAX_PAGE_SIZE}, got {n}", field="page_size")
    return n


def parse_ttl_days(value: Any) -> float | None:
    """``days``: a number of days from now (>= 0), or ``"infinity"`` (None: keep forever)."""
    if isinstance(value, str) and value.strip().lower() in ("infinity", "inf", "never"):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"expected a number of days or 'infinity', got {json.dumps(value)}", field="days"
        )
    if not 0 <= value <= 36500:
        raise InvalidArgument(f"must be between 0 and 36500, got {value}", field="days")
    return float(value)


class LogPosition:
    """Where a log stream starts: ``offset`` (a position the job server gave, -1: from now), then
    ``skip`` messages. Written ``N`` or ``N:K``; it is what each log event's ``id`` says."""

    def __init__(self, offset: int, skip: int = 0) -> None:
        self.offset = offset
        self.skip = skip

    def __str__(self) -> str:
        return f"{self.offset}:{self.skip}" if self.skip else str(self.offset)


def parse_log_position(text: str, field: str) -> LogPosition:
    parts = text.strip().split(":")
    try:
        if len(parts) > 2:
            raise ValueError
        offset = int(parts[0])
        skip = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise InvalidArgument(f"expected N or N:K (integers), got {text[:40]!r}", field=field) from None
    if offset < -1 or skip < 0 or (offset == -1 and skip):
        raise InvalidArgument(f"out of range: {text[:40]!r}", field=field)
    return LogPosition(offset, skip)
