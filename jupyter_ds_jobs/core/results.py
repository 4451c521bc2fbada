"""What :class:`~jupyter_ds_jobs.core.client.JobsClient` calls return besides messages: the end of
an Execute operation (:class:`ExecuteResult`) and the numbers of a create or clone
(:class:`CreateStats`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2
from jupyter_ds_jobs.common.contract import status_name
from jupyter_ds_jobs.core.transfer import LocalFile

__all__ = ["CreateStats", "ExecuteResult", "JobSource"]


@dataclass
class ExecuteResult:
    """What an Execute operation ended with.

    ``return_code`` is None when the job did not run to an exit (cancelled, failed to prepare);
    ``error`` then holds the operation's error message. ``output_files`` carry download URLs.
    """

    job: jobs_pb2.Job
    return_code: int | None
    output_files: list[jobs_pb2.StorageFile]
    file_errors: list[jobs_pb2.FileUploadError]
    op: op_pb2.Operation

    @property
    def error(self) -> str:
        return self.op.error.message if self.op.HasField("error") else ""

    @property
    def status(self) -> str:
        return status_name(self.job.status)

    @property
    def ok(self) -> bool:
        return self.job.status == jobs_pb2.SUCCESS and self.return_code == 0


@dataclass
class CreateStats:
    """Numbers of the last :meth:`JobsClient.create` / :meth:`JobsClient.clone`."""

    files: int = 0
    bytes_total: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    prepare_seconds: float = 0.0
    upload_seconds: float = 0.0
    total_seconds: float = 0.0


class JobSource(Protocol):
    """What :meth:`JobsClient.create_from_spec` takes: a job built elsewhere (a parsed
    ``config.yaml``, :class:`jupyter_ds_jobs.packaging.jobspec.JobSpec`)."""

    name: str
    desc: str
    config_text: str
    params: jobs_pb2.JobParameters
    inputs: list[LocalFile]
    local_modules: list[LocalFile]
