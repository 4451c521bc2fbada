"""Reads for faces that page, stream and proxy on their own (the Jupyter server extension's REST):

* :func:`list_page`: one page of ``List`` with the token of the next (``list_jobs`` hides it);
* :func:`running_progress`: the Execute operation's ``JobProgress`` of a job that has run;
* :func:`run_return_code`: the return code of a finished job's run;
* :func:`follow_batches`: the job's log as ``(messages, offset after them)`` batches, resumed
  from the last offset after a dropped stream (:func:`~.logfollow.follow`);
* :func:`open_job_file`: one file of a job as a readable byte stream: the blob of a job server on
  this machine, else its signed URL, never read whole.

They sit beside :class:`~.client.JobsClient` (whose module is at its size cap) and use its plumbing:
deadlines, retries on UNAVAILABLE, errors as :mod:`~jupyter_ds_jobs.common.errors` classes.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import BinaryIO, cast

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.common.contract import status_name
from jupyter_ds_jobs.common.errors import InvalidArgument, NotFound, Unavailable, from_http
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.jobfiles import local_blob
from jupyter_ds_jobs.core.logfollow import follow

__all__ = ["OnBatch", "follow_batches", "list_page", "open_job_file", "run_return_code", "running_progress"]

#: ``on_batch(messages, offset)``: the messages of one ``ReadLogs`` batch and the offset after them.
OnBatch = Callable[[list[pjs_pb2.LogMessage], int], None]


def list_page(
    client: JobsClient,
    statuses: Sequence[int] = (),
    page_size: int = 100,
    page_token: str = "",
    project_id: str | None = None,
) -> pjs_pb2.ListProjectJobResponse:
    """One page of the project's jobs, newest first; ``next_page_token`` asks for the next ("" at the end)."""
    flt = f"status IN ({', '.join(status_name(s) for s in statuses)})" if statuses else ""
    req = pjs_pb2.ListProjectJobRequest(
        project_id=client._project(project_id), page_size=page_size, page_token=page_token, filter=flt
    )
    return cast(pjs_pb2.ListProjectJobResponse, client._rpc(client._jobs.List, req))


def run_return_code(client: JobsClient, job_id: str) -> int | None:
    """The return code of a finished job's run (``ExecuteProjectJobResponse.result``), None when
    the run ended without one (cancelled before it started, failed to prepare).

    Only for a job that has been executed (``started_at`` set), as :func:`running_progress`.
    """
    op = client.execute(job_id)
    resp = pjs_pb2.ExecuteProjectJobResponse()
    if op.done and op.HasField("response") and op.response.Unpack(resp) and resp.HasField("result"):
        return int(resp.result.return_code)
    return None


def running_progress(client: JobsClient, job_id: str) -> jobs_pb2.JobProgress | None:
    """The progress of the job's run (``ExecuteProjectJobMetadata.progress``), None when it has none.

    Only for a job that has been executed: ``Execute`` returns that run's operation, but it starts
    a job that was never run, so the caller checks the status first.
    """
    meta = pjs_pb2.ExecuteProjectJobMetadata()
    op = client.execute(job_id)
    if op.metadata.Unpack(meta) and meta.HasField("progress"):
        return meta.progress
    return None


def follow_batches(
    client: JobsClient,
    job_id: str,
    on_batch: OnBatch,
    *,
    offset: int = 0,
    stop: threading.Event | None = None,
) -> int:
    """Call ``on_batch`` for each log batch from ``offset`` until the job's log ends or ``stop`` is
    set; return the last offset. Reconnects from the last offset after a dropped stream."""
    pending: list[pjs_pb2.LogMessage] = []

    def flush(end: int) -> None:
        batch = pending[:]
        pending.clear()
        on_batch(batch, end)

    return follow(client._log_stream(job_id), pending.append, offset=offset, stop=stop, on_offset=flush)


def open_job_file(client: JobsClient, job_id: str, f: jobs_pb2.File, *, timeout: float = 60.0) -> BinaryIO:
    """A readable stream of the job's file ``f`` (one of its output, log or diagnostic files):
    the blob itself when the job server runs on this machine, else the body of its download URL."""
    local = local_blob(client.local_blobs, f)
    if local is not None:
        return open(local, "rb")
    req = pjs_pb2.DownloadProjectJobFilesRequest(job_id=job_id, files=[f])
    resp = client._rpc(client._jobs.DownloadJobFiles, req)
    if not resp.download_files or not resp.download_files[0].url:
        raise NotFound(f"the job server has no download URL for {f.desc.path!r} of job {job_id}")
    url = resp.download_files[0].url
    if not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"unsupported download URL scheme in {url[:80]}")
    http_req = urllib.request.Request(url, headers={"User-Agent": f"jupyter_ds_jobs/{__version__}"})
    try:
        return cast(BinaryIO, urllib.request.urlopen(http_req, timeout=timeout))
    except urllib.error.HTTPError as e:
        raise from_http(e.code, e.read(), f"download of {f.desc.path}") from None
    except OSError as e:
        raise Unavailable(f"download of {f.desc.path}: {e}") from None
