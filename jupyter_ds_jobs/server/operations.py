"""Operations as the API shows them: a stored :class:`~jupyter_ds_jobs.server.store.OperationRow`
rendered into a ``yandex.cloud.operation.Operation`` with the metadata and (once done) the
response or error that its :class:`~jupyter_ds_jobs.server.store.OpKind` carries.

Rendered on every read, never stored rendered: an execute operation shows the job as it is now.
"""

from __future__ import annotations

from typing import assert_never

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from jupyter_ds_jobs._proto import jobs_pb2, op_pb2, pjs_pb2, status_pb2
from jupyter_ds_jobs.server.blobs import BlobStore
from jupyter_ds_jobs.server.jobs import job_metadata, public_job, upload_files
from jupyter_ds_jobs.server.store import OperationRow, OpKind, Store, set_seconds

__all__ = ["Operations"]

_DESCRIPTIONS = {
    OpKind.CREATE: "Create job",
    OpKind.CLONE: "Clone job",
    OpKind.EXECUTE: "Execute job",
    OpKind.DELETE: "Delete job",
    OpKind.DELETE_DATA: "Delete job data",
    OpKind.DELETE_ALL_DATA: "Delete all jobs data",
}


class Operations:
    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs

    def get(self, op_id: str) -> op_pb2.Operation:
        return self.render(self.store.get_operation(op_id))

    def render(self, row: OperationRow) -> op_pb2.Operation:
        op = op_pb2.Operation(
            id=row.id,
            description=_DESCRIPTIONS[row.kind],
            created_by="local",
            done=row.done,
        )
        set_seconds(op.created_at, row.created_at)
        set_seconds(op.modified_at, row.modified_at)
        op.metadata.Pack(self._metadata(row))
        if not row.done:
            return op
        if row.error_code is not None:
            op.error.CopyFrom(status_pb2.Status(code=row.error_code, message=row.error_message or ""))
        else:
            op.response.Pack(self._response(row))
        return op

    def _metadata(self, row: OperationRow) -> Message:
        match row.kind:
            case OpKind.CREATE:
                return pjs_pb2.CreateProjectJobMetadata(project_id=row.project_id, job_id=row.job_id)
            case OpKind.CLONE:
                return pjs_pb2.CloneProjectJobMetadata(project_id=row.project_id, job_id=row.job_id)
            case OpKind.EXECUTE:
                job = public_job(self.store.get_job(row.job_id))
                meta = pjs_pb2.ExecuteProjectJobMetadata(job=job, metadata=job_metadata(job))
                progress = self.store.progress(row.job_id)
                if progress is not None:
                    meta.progress.CopyFrom(progress)
                return meta
            case OpKind.DELETE:
                return pjs_pb2.DeleteProjectJobMetadata(job_id=row.job_id)
            case OpKind.DELETE_DATA:
                return pjs_pb2.DeleteProjectJobDataMetadata(job_id=row.job_id)
            case OpKind.DELETE_ALL_DATA:
                return pjs_pb2.DeleteAllProjectJobDataMetadata(project_id=row.project_id)
            case _:
                assert_never(row.kind)

    def _response(self, row: OperationRow) -> Message:
        match row.kind:
            case OpKind.CREATE:
                files = upload_files(self.store.get_job(row.job_id), self.blobs)
                return pjs_pb2.CreateProjectJobResponse(job_id=row.job_id, upload_files=files)
            case OpKind.CLONE:
                files = upload_files(self.store.get_job(row.job_id), self.blobs)
                return pjs_pb2.CloneProjectJobResponse(job_id=row.job_id, upload_files=files)
            case OpKind.EXECUTE:
                return self.execute_response(row)
            case OpKind.DELETE:
                return empty_pb2.Empty()
            case OpKind.DELETE_DATA:
                return pjs_pb2.DeleteProjectJobDataResponse()
            case OpKind.DELETE_ALL_DATA:
                return pjs_pb2.DeleteAllProjectJobDataResponse()
            case _:
                assert_never(row.kind)

    def execute_response(self, row: OperationRow) -> pjs_pb2.ExecuteProjectJobResponse:
        job = self.store.get_job(row.job_id)
        resp = pjs_pb2.ExecuteProjectJobResponse()
        if row.response is not None:  # return code 0 serializes to b"": still a result
            resp.result.CopyFrom(jobs_pb2.JobResult.FromString(row.response))
        if not job.data_cleared:
            for f in job.output_files:
                resp.output_files.add(file=f, url=self.blobs.signed_url("GET", f.sha256))
        resp.output_files_errors.extend(job.file_errors)
        return resp
