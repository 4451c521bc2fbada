"""Exceptions of jupyter_ds_jobs, and the one table that maps them to gRPC and HTTP status codes.

::

    DsJobsError                     base of everything this package raises on purpose
    ├── InvalidArgument             bad input; names the field           (INVALID_ARGUMENT, HTTP 400)
    │   └── ConfigError             a config.yaml that cannot be used; names the key
    ├── FailedPrecondition          valid, but not now / not here        (FAILED_PRECONDITION, HTTP 409)
    ├── NotFound                    no such job, operation, blob, file   (NOT_FOUND, HTTP 404)
    ├── Unauthenticated             missing or wrong bearer token        (UNAUTHENTICATED, HTTP 401)
    ├── PermissionDenied            signed URL expired or forged         (PERMISSION_DENIED, HTTP 403)
    ├── ResourceExhausted           out of disk, a request too large     (RESOURCE_EXHAUSTED, HTTP 507)
    ├── Cancelled                   the work was cancelled               (CANCELLED, HTTP 409)
    ├── Aborted                     interrupted (a server stopped)       (ABORTED, HTTP 409)
    ├── Unavailable                 server not reachable                 (UNAVAILABLE, HTTP 503)
    └── JobFailed                   a job ended in ERROR / non-zero exit; carries the job (INTERNAL, 500)

:data:`STATUS_TABLE` is the only place where a class meets its codes: the server aborts an RPC
with ``exc.code`` and answers HTTP with ``exc.http_status``; clients turn a ``grpc.RpcError``
(:func:`from_rpc_error`), a ``google.rpc.Status`` of an operation (:func:`from_status`) or an HTTP
answer (:func:`from_http`) back into the class.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "STATUS_TABLE",
    "Aborted",
    "Cancelled",
    "ConfigError",
    "DsJobsError",
    "FailedPrecondition",
    "InvalidArgument",
    "JobFailed",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_http",
    "from_rpc_error",
    "from_status",
    "rpc_code",
]


class DsJobsError(Exception):
    """Base class; ``code`` is the gRPC status code and ``http_status`` the HTTP one (from
    :data:`STATUS_TABLE`)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    field: str | None = None


class InvalidArgument(DsJobsError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ConfigError(InvalidArgument):
    """A job config file (config.yaml) that cannot be used; the message names the key."""


class FailedPrecondition(DsJobsError):
    pass


class NotFound(DsJobsError):
    pass


class Unauthenticated(DsJobsError):
    pass


class PermissionDenied(DsJobsError):
    pass


class ResourceExhausted(DsJobsError):
    pass


class Cancelled(DsJobsError):
    pass


class Aborted(DsJobsError):
    pass


class Unavailable(DsJobsError):
    pass


class JobFailed(DsJobsError):
    """A job that ended in ERROR, or with a non-zero return code."""

    def __init__(self, message: str, job: Any = None, return_code: int | None = None) -> None:
        super().__init__(message)
        self.job = job
        self.return_code = return_code


#: (class, gRPC status code, HTTP status): the one mapping. A code that no row names is a
#: plain :class:`DsJobsError` on the client side.
STATUS_TABLE: tuple[tuple[type[DsJobsError], grpc.StatusCode, int], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (NotFound, grpc.StatusCode.NOT_FOUND, 404),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 507),
    (Cancelled, grpc.StatusCode.CANCELLED, 409),
    (Aborted, grpc.StatusCode.ABORTED, 409),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
)
for _cls, _code, _http in STATUS_TABLE:
    _cls.code = _code
    _cls.http_status = _http
del _cls, _code, _http

_BY_CODE: dict[grpc.StatusCode, type[DsJobsError]] = {code: cls for cls, code, _ in STATUS_TABLE}
_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}
# HTTP -> class: the first row of a status wins (409 is FailedPrecondition).
_BY_HTTP: dict[int, type[DsJobsError]] = {}
for _cls, _code, _http in STATUS_TABLE:
    _BY_HTTP.setdefault(_http, _cls)
del _cls, _code, _http


def rpc_code(code: grpc.StatusCode) -> int:
    """The number of a gRPC status code, as ``google.rpc.Status.code`` carries it."""
    return int(code.value[0])


def _make(code: grpc.StatusCode, message: str) -> DsJobsError:
    cls = _BY_CODE.get(code, DsJobsError)
    exc = cls(message or code.name)
    exc.code = code
    return exc


def from_rpc_error(err: grpc.RpcError) -> DsJobsError:
    """Turn a client-side ``grpc.RpcError`` into the matching ``DsJobsError``."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _make(code, details or "")


def from_status(code: int, message: str) -> DsJobsError:
    """Turn a ``google.rpc.Status`` (an operation's ``error``) into the matching ``DsJobsError``."""
    status = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _make(status, message or f"failed with code {code} ({status.name})")


def from_http(status: int, body: bytes, what: str) -> DsJobsError:
    """Turn an HTTP error answer into the matching ``DsJobsError``: ``what: HTTP 404: <first line>``."""
    text = body.decode("utf-8", "replace").strip().splitlines()
    detail = text[0][:300] if text else ""
    return _BY_HTTP.get(status, DsJobsError)(f"{what}: HTTP {status}{': ' + detail if detail else ''}")
