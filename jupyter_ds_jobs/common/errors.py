"""Exceptions of jupyter_ds_jobs, and their one mapping to gRPC status codes.

::

    DsJobsError                     base of everything this package raises on purpose
    ├── InvalidArgument             bad input; names the field           (INVALID_ARGUMENT, HTTP 400)
    ├── FailedPrecondition          valid, but not now / not here        (FAILED_PRECONDITION, HTTP 409)
    ├── NotFound                    no such job, operation, blob, file   (NOT_FOUND, HTTP 404)
    ├── Unauthenticated             missing or wrong bearer token        (UNAUTHENTICATED, HTTP 401)
    ├── PermissionDenied            signed URL expired or forged         (PERMISSION_DENIED, HTTP 403)
    ├── Unavailable                 server not reachable                 (UNAVAILABLE, HTTP 503)
    ├── ConfigError                 a config.yaml that cannot be used (an InvalidArgument)
    └── JobFailed                   a job ended in ERROR / non-zero exit; carries the job
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "ConfigError",
    "DsJobsError",
    "FailedPrecondition",
    "InvalidArgument",
    "JobFailed",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class DsJobsError(Exception):
    """Base class; ``code`` is the gRPC status code and ``http_status`` the HTTP one."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidArgument(DsJobsError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ConfigError(InvalidArgument):
    """A job config file (config.yaml) that cannot be used; the message names the key."""


class FailedPrecondition(DsJobsError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class NotFound(DsJobsError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Unauthenticated(DsJobsError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(DsJobsError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unavailable(DsJobsError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class JobFailed(DsJobsError):
    """A job that ended in ERROR, or with a non-zero return code."""

    def __init__(self, message: str, job: Any = None, return_code: int | None = None) -> None:
        super().__init__(message)
        self.job = job
        self.return_code = return_code


_BY_CODE: dict[grpc.StatusCode, type[DsJobsError]] = {
    cls.code: cls
    for cls in (InvalidArgument, FailedPrecondition, NotFound, Unauthenticated, PermissionDenied, Unavailable)
}


def from_rpc_error(err: grpc.RpcError) -> DsJobsError:
    """Turn a client-side ``grpc.RpcError`` into the matching ``DsJobsError``."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, DsJobsError)
    exc = cls(details or code.name)
    exc.code = code
    return exc
