"""The job domain behind the gRPC servicers: create, clone, execute, cancel, list, delete, the data
lifecycle (TTL, sweeper) and recovery at start.

Rules raise the classes of :mod:`jupyter_ds_jobs.common.errors`; the servicers map them to status
codes. Operations are rows of the store, one :class:`~jupyter_ds_jobs.server.store.OpKind` each: the
methods that start one return its id, and :mod:`jupyter_ds_jobs.server.operations` renders it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import psutil
from google.protobuf.duration_pb2 import Duration

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import (
    DEFAULT_INSTANCE_TYPE,
    FINAL_STATUSES,
    RUNNING_STATUSES,
    status_name,
)
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument, NotFound
from jupyter_ds_jobs.server.blobs import BlobStore
from jupyter_ds_jobs.server.environments import EnvironmentCache, EnvSpec
from jupyter_ds_jobs.server.logs import LogRecord, LogStore
from jupyter_ds_jobs.server.resources import Resources
from jupyter_ds_jobs.server.runtime import ABORTED_CODE, JobManager
from jupyter_ds_jobs.server.store import FileRef, OpKind, Store
from jupyter_ds_jobs.server.validation import (
    MAX_CONFIG_BYTES,
    MAX_DESC_BYTES,
    MAX_ID_BYTES,
    MAX_NAME_BYTES,
    MAX_STRING_BYTES,
    check_archives,
    check_duration,
    check_length,
    check_parameters,
    check_project_id,
    shown,
)

__all__ = [
    "BLOB_GRACE_S",
    "Jobs",
    "job_metadata",
    "merge_overrides",
    "parse_filter",
    "public_job",
    "upload_files",
]

S = jobs_pb2
FILTER_RE = re.compile(r"^\s*status\s+in\s*\(([^)]*)\)\s*$", re.IGNORECASE)
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
#: A List answer stops before its jobs pass this many bytes (clients read 4 MiB by default).
MAX_PAGE_BYTES = 3 * 2**20
#: Files one DownloadJobFiles may ask for.
MAX_DOWNLOAD_FILES = 1000
#: The last instant a Timestamp can hold (9999-12-31T23:59:59.999999999Z), in nanoseconds.
MAX_TIMESTAMP_NS = 253_402_300_799_999_999_999
#: A page token: base64url of ``<created_at ns>:<job id>`` of the previous page's last job.
PAGE_TOKEN_RE = re.compile(rb"([0-9]{1,19}):([0-9A-Za-z_-]{1,64})")
#: An unreferenced blob younger than this stays: outputs being collected are published a moment
#: before their reference is stored.
BLOB_GRACE_S = 3600.0


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(9)


class Jobs:
    """Every job rule of the service; called on the server's event loop."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        logs: LogStore,
        manager: JobManager,
        *,
        instance_types: Iterable[str],
        default_ttl: timedelta | None,
        environments: EnvironmentCache | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.store = store
        self.resources = resources
        self.blobs = blobs
        self.logs = logs
        self.manager = manager
        self.instance_types = list(instance_types)
        self.default_ttl: Duration | None = None
        if default_ttl is not None:
            self.default_ttl = Duration()
            self.default_ttl.FromTimedelta(default_ttl)
        self.environments = environments

    def _new_operation(self, kind: OpKind, job_id: str, project_id: str, done: bool = True) -> str:
        op_id = new_id("op")
        self.store.insert_operation(op_id, kind, job_id, project_id)
        if done:
            self.store.finish_operation(op_id)
        return op_id

    def check_python(self, p: jobs_pb2.JobParameters) -> None:
        if self.environments is None:
            return
        spec = EnvSpec.from_proto(p.env.python_env)
        self.environments.interpreter_for(spec.python_version)

    # -- create -----------------------------------------------------------------
    def create(
        self,
        project_id: str,
        params: jobs_pb2.JobParameters,
        *,
        name: str,
        desc: str,
        config: str,
        data_ttl: Duration | None,
        parent_job_id: str = "",
        kind: OpKind = OpKind.CREATE,
    ) -> str:
        """Store a new CREATING job; return the id of its (done) create or clone operation."""
        check_project_id(project_id)
        check_length(name, MAX_NAME_BYTES, "name")
        check_length(desc, MAX_DESC_BYTES, "desc")
        check_length(config, MAX_CONFIG_BYTES, "config")
        if not params.cloud_instance_types:
            params.cloud_instance_types.add(
                name=DEFAULT_INSTANCE_TYPE
                if DEFAULT_INSTANCE_TYPE in self.instance_types
                else self.instance_types[0]
            )
        check_parameters(params, self.instance_types)
        self.check_python(params)
        if data_ttl is not None:
            check_duration(data_ttl.seconds, data_ttl.nanos, "data_ttl")
        job = jobs_pb2.Job(
            id=new_id("dsj"),
            name=name,
            desc=desc,
            status=S.CREATING,
            config=config,
            created_by_id="local",
            project_id=project_id,
            job_parameters=params,
            parent_job_id=parent_job_id,
        )
        job.created_at.GetCurrentTime()
        ttl = data_ttl if data_ttl is not None else self.default_ttl
        expires = _expiry(job.created_at.ToNanoseconds(), ttl)
        if expires is not None:
            job.data_expires_at.FromNanoseconds(expires)
        names = [t.name for t in params.cloud_instance_types]  # the first that can ever fit here
        job.actual_cloud_instance_type.name = self.resources.choose(names) if self.resources else names[0]
        refs = [
            FileRef("input", f.desc.path, f.desc.var, f.sha256, f.size_bytes, f.compression_type)
            for f in params.input_files
        ] + [
            FileRef("module", f.desc.path, f.desc.var, f.sha256, f.size_bytes, f.compression_type)
            for f in params.env.python_env.local_modules
        ]
        self.store.insert_job(job, refs)
        return self._new_operation(kind, job.id, project_id)

    def clone(
        self,
        source_job_id: str,
        overrides: jobs_pb2.JobParameters,
        *,
        name: str,
        desc: str,
        data_ttl: Duration | None,
    ) -> str:
        if not source_job_id:
            raise InvalidArgument("source_job_id is empty", field="source_job_id")
        src = self.store.get_job(source_job_id)
        return self.create(
            src.project_id,
            merge_overrides(src.job_parameters, overrides),
            name=name or src.name,
            desc=desc or src.desc,
            config=src.config,
            data_ttl=data_ttl,
            parent_job_id=src.id,
            kind=OpKind.CLONE,
        )

    # -- run ----------------------------------------------------------------------
    def execute(self, job_id: str) -> str:
        """Start the job; return its execute operation (that of its one run, if it has one)."""
        job = self.store.get_job(job_id)
        op_id = self.store.execute_op(job.id)
        if op_id is not None:  # running, queued or finished: that run's operation, never a second run
            return op_id
        if job.data_cleared:
            raise FailedPrecondition(f"job {job.id} data has been cleared")
        if job.status != S.CREATING:
            raise FailedPrecondition(f"job {job.id} is {status_name(job.status)} and cannot be executed")
        p = job.job_parameters
        missing = [
            f.desc.path
            for f in [*p.input_files, *p.env.python_env.local_modules]
            if not self.blobs.exists(f.sha256)
        ]
        if missing:
            raise FailedPrecondition(f"files not uploaded yet: {', '.join(missing)}")
        check_archives(p, self.blobs.path)
        self.check_python(p)
        op_id = self._new_operation(OpKind.EXECUTE, job.id, job.project_id, done=False)
        self.manager.submit(job.id, op_id)
        return op_id

    async def cancel(self, job_id: str, graceful: bool, reason: str) -> None:
        """Hard: returns once the job is killed. Graceful: returns at once, the job is signalled."""
        check_length(reason, MAX_STRING_BYTES, "reason")
        job = self.store.get_job(job_id)
        if job.status in FINAL_STATUSES:
            raise FailedPrecondition(f"job {job.id} is already {status_name(job.status)}")
        task = asyncio.ensure_future(self.manager.cancel(job.id, graceful, reason))
        if not graceful:
            await task

    async def cancel_operation(self, op_id: str) -> None:
        """OperationService.Cancel: an unfinished execute operation ends with its job, killed."""
        row = self.store.get_operation(op_id)
        if row.done:
            return
        if row.kind is not OpKind.EXECUTE:
            raise FailedPrecondition(f"operation {row.id} ({row.kind}) cannot be cancelled")
        await self.manager.cancel(row.job_id, graceful=False, reason="operation cancelled")
        await self.manager.wait(row.job_id)

    def finalize(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        if job.status not in FINAL_STATUSES:
            raise FailedPrecondition(f"job {job.id} is {status_name(job.status)}; finalize a finished job")
        shutil.rmtree(self.manager.workdir(job.id), ignore_errors=True)
        return job.id

    async def follow(self, job_id: str, offset: int) -> AsyncIterator[tuple[list[LogRecord], int]]:
        """The job's log records from ``offset``, live until the job is final."""
        job = self.store.get_job(job_id)
        if job.data_cleared:
            raise FailedPrecondition(f"job {job_id} data has been cleared")

        def is_final() -> bool:
            return not self.manager.is_active(job_id) and self.store.get_job(job_id).status in FINAL_STATUSES

        async for batch, new_offset in self.logs.follow(job_id, offset, is_final):
            yield batch, new_offset

    # -- read -------------------------------------------------------------------
    def download_files(self, job_id: str, wants: Sequence[jobs_pb2.File]) -> list[jobs_pb2.StorageFile]:
        """Each wanted file (by sha256, or by path and var) of the job, with a signed GET URL."""
        if not job_id:
            raise InvalidArgument("job_id is empty", field="job_id")
        job = self.store.get_job(job_id)
        if not wants:
            raise InvalidArgument("at least one file is required", field="files")
        if len(wants) > MAX_DOWNLOAD_FILES:
            raise InvalidArgument(f"{len(wants)} entries, at most {MAX_DOWNLOAD_FILES}", field="files")
        if job.data_cleared:
            raise FailedPrecondition(f"job {job.id} data has been cleared")
        known = self.store.files(job.id)
        out = []
        for i, want in enumerate(wants):
            match = next((f for f in known if _matches(f, want)), None)
            if match is None or not self.blobs.exists(match.sha256):
                name = want.desc.path or want.sha256 or f"files[{i}]"
                raise NotFound(f"job {job.id} has no file {shown(name)}")
            out.append(
                jobs_pb2.StorageFile(file=match.to_proto(), url=self.blobs.signed_url("GET", match.sha256))
            )
        return out

    def list_jobs(
        self, project_id: str, filter_text: str, page_size: int, page_token: str
    ) -> tuple[list[jobs_pb2.Job], str]:
        """One page of the project's jobs, newest first, as Get shows them; and the next page's token.

        A page ends after ``page_size`` jobs or before its jobs pass :data:`MAX_PAGE_BYTES`."""
        size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"must be between 1 and {MAX_PAGE_SIZE}, got {page_size}", field="page_size"
            )
        check_length(project_id, MAX_ID_BYTES, "project_id")
        statuses = parse_filter(filter_text)
        after = _read_page_token(page_token) if page_token else None
        page: list[jobs_pb2.Job] = []
        used = 0
        for job in self.store.iter_jobs(project_id, statuses, size + 1, after):
            shown_job = public_job(job)
            used += shown_job.ByteSize() + 8
            if len(page) == size or (page and used > MAX_PAGE_BYTES):
                return page, _page_token(page[-1])
            page.append(shown_job)
        return page, ""

    # -- delete and data lifecycle ------------------------------------------------------
    def delete(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        if job.status not in FINAL_STATUSES and not (
            job.status == S.CREATING and not self.manager.is_active(job.id)
        ):
            raise FailedPrecondition(f"job {job.id} is {status_name(job.status)}; cancel it before deleting")
        shas = self.store.drop_files(job.id)
        self.store.delete_job(job.id)
        self._drop_unreferenced(shas)
        self.manager.remove_job_dirs(job.id)
        return self._new_operation(OpKind.DELETE, job.id, job.project_id)

    def _drop_unreferenced(self, shas: Iterable[str]) -> None:
        for sha in shas:
            if not self.store.is_referenced(sha):
                self.blobs.delete(sha)

    def clear_data(self, job: jobs_pb2.Job) -> None:
        if job.status not in FINAL_STATUSES:
            raise FailedPrecondition(
                f"job {job.id} is {status_name(job.status)}; only finished jobs can be cleared"
            )
        self._drop_unreferenced(self.store.drop_files(job.id))
        self.manager.remove_job_dirs(job.id)
        job.data_cleared = True
        job.data_size_bytes = 0
        self.store.save_job(job)

    def delete_data(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        self.clear_data(job)
        return self._new_operation(OpKind.DELETE_DATA, job.id, job.project_id)

    def delete_all_data(self, project_id: str) -> str:
        if not project_id:
            raise InvalidArgument("project_id is empty", field="project_id")
        check_length(project_id, MAX_ID_BYTES, "project_id")
        for job in self.store.list_jobs(project_id, FINAL_STATUSES, 1_000_000, None):
            if not job.data_cleared:
                self.clear_data(job)
        return self._new_operation(OpKind.DELETE_ALL_DATA, "", project_id)

    def set_data_ttl(self, job_id: str, ttl: Duration | None) -> None:
        """Keep the job's data ``ttl`` from now; None (or past year 9999): keep it forever."""
        if ttl is not None:
            check_duration(ttl.seconds, ttl.nanos, "ttl")
        job = self.store.get_job(job_id)
        expires = _expiry(time.time_ns(), ttl)
        if expires is None:
            job.ClearField("data_expires_at")
        else:
            job.data_expires_at.FromNanoseconds(expires)
        self.store.save_job(job)

    def sweep(self, now: float | None = None) -> list[str]:
        """Clear the data of finished jobs past ``data_expires_at``; drop unreferenced blobs."""
        now = time.time() if now is None else now
        cleared = []
        for job_id in self.store.expired_jobs(now, FINAL_STATUSES):
            self.clear_data(self.store.get_job(job_id))
            cleared.append(job_id)
        referenced = self.store.referenced()
        for sha in self.blobs.all():
            if sha not in referenced and self.blobs.changed_at(sha) < now - BLOB_GRACE_S:
                self.blobs.delete(sha)
        return cleared

    # -- start ----------------------------------------------------------------------
    def recover(self) -> list[str]:
        """At start: jobs a dead server left running become ERROR, their leftover processes killed."""
        interrupted = []
        for job in self.store.jobs_with_status([*RUNNING_STATUSES, S.CREATING]):
            op_id = self.store.execute_op(job.id)
            if job.status == S.CREATING and op_id is None:
                continue  # created, never executed: still executable
            was = status_name(job.status)
            pgid = self.store.pgid(job.id)
            if pgid and _group_is_job(pgid, job.id, self.manager.workdir(job.id)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            job.status = S.ERROR
            job.status_details = f"interrupted: the job server stopped while the job was {was}"
            job.finished_at.GetCurrentTime()
            self.store.save_job(job)
            self.store.set_pgid(job.id, None)
            if op_id is not None:
                self.store.finish_operation(op_id, error=(ABORTED_CODE, job.status_details))
            interrupted.append(job.id)
        return interrupted


def _group_is_job(pgid: int, job_id: str, workdir: Path | None = None) -> bool:
    """Is process ``pgid`` still the job's (not a reused pid)? Its environment says, or (for a
    job forked from a warm interpreter, whose initial environment is the interpreter's) its
    working directory: ``workdir`` or ``jobs/<id>/work`` (where earlier servers put it)."""
    try:
        proc = psutil.Process(pgid)
        if proc.environ().get("DS_JOB_ID") == job_id:
            return True
        cwd = str(proc.cwd())
        return f"/jobs/{job_id}/" in cwd + "/" or (workdir is not None and cwd == str(workdir))
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _matches(f: FileRef, want: jobs_pb2.File) -> bool:
    if want.sha256 and f.sha256 == want.sha256:
        return True
    return bool(want.desc.path) and f.path == want.desc.path and (not want.desc.var or f.var == want.desc.var)


def _expiry(start_ns: int, ttl: Duration | None) -> int | None:
    """When data kept ``ttl`` from ``start_ns`` expires (ns); None: never (no ttl, or past year 9999)."""
    if ttl is None:
        return None
    end = start_ns + ttl.seconds * 10**9 + ttl.nanos
    return end if end <= MAX_TIMESTAMP_NS else None


def _page_token(last: jobs_pb2.Job) -> str:
    raw = f"{last.created_at.ToNanoseconds()}:{last.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _read_page_token(token: str) -> tuple[float, str]:
    """(created_at seconds, id) of the previous page's last job; a plain cursor, checked whole."""
    m = None
    if len(token) <= 200:
        with contextlib.suppress(ValueError):  # not ASCII, not base64
            m = PAGE_TOKEN_RE.fullmatch(base64.urlsafe_b64decode(token.encode("ascii")))
    if m is None:
        raise InvalidArgument(
            "malformed page token: pass next_page_token of the previous page", field="page_token"
        )
    return int(m[1]) / 1e9, m[2].decode()


def parse_filter(text: str) -> list[int] | None:
    """``status IN ('A', 'B')``, the one filter List understands; None for no filter."""
    if not text.strip():
        return None
    if len(text) > 1000:
        raise InvalidArgument("longer than 1000 characters", field="filter")
    m = FILTER_RE.match(text)
    if not m:
        raise InvalidArgument(f"only 'status IN (...)' is supported, got {text!r}", field="filter")
    out = []
    for raw in m.group(1).split(","):
        name = raw.strip().strip("'\"").upper()
        if name not in S.JobStatus.keys() or name == "JOB_STATUS_UNSPECIFIED":  # noqa: SIM118
            raise InvalidArgument(f"unknown status {raw.strip()!r}", field="filter")
        out.append(int(S.JobStatus.Value(name)))
    return out


def public_job(job: jobs_pb2.Job) -> jobs_pb2.Job:
    """A job as Get / List show it: secrets (registry passwords) never go back out."""
    spec = job.job_parameters.env.docker_image_spec
    if spec.WhichOneof("password") == "password_plain_text":
        out = jobs_pb2.Job()
        out.CopyFrom(job)
        out.job_parameters.env.docker_image_spec.ClearField("password_plain_text")
        return out
    return job


def job_metadata(job: jobs_pb2.Job) -> jobs_pb2.JobMetadata:
    m = jobs_pb2.JobMetadata(
        id=job.id,
        name=job.name,
        description=job.desc,
        status=job.status,
        status_details=job.status_details,
        created_by_id=job.created_by_id,
        project_id=job.project_id,
        parent_job_id=job.parent_job_id,
    )
    for f in ("created_at", "started_at", "finished_at", "data_expires_at"):
        if job.HasField(f):
            getattr(m, f).MergeFrom(getattr(job, f))
    return m


def upload_files(job: jobs_pb2.Job, blobs: BlobStore) -> list[jobs_pb2.StorageFile]:
    """Inputs and local modules whose content the store lacks, each with a signed PUT URL."""
    if job.status != S.CREATING:
        return []
    p = job.job_parameters
    return [
        jobs_pb2.StorageFile(file=f, url=blobs.signed_url("PUT", f.sha256, f.size_bytes))
        for f in [*p.input_files, *p.env.python_env.local_modules]
        if not blobs.exists(f.sha256)
    ]


def merge_overrides(base: jobs_pb2.JobParameters, o: jobs_pb2.JobParameters) -> jobs_pb2.JobParameters:
    """Clone: start from the source job's parameters and apply the overrides.

    Repeated entries replace the source's entry with the same key (input/output var or
    path, argument name); scalars and messages replace when set; env vars merge.
    """
    p = jobs_pb2.JobParameters()
    p.CopyFrom(base)

    def key(f: jobs_pb2.File) -> str:
        return f"var:{f.desc.var}" if f.desc.var else f"path:{f.desc.path}"

    for f in o.input_files:
        for i, old in enumerate(p.input_files):
            if key(old) == key(f):
                p.input_files[i].CopyFrom(f)
                break
        else:
            p.input_files.append(f)
    for d in o.output_files:
        for i, old_d in enumerate(p.output_files):
            if (old_d.var and old_d.var == d.var) or old_d.path == d.path:
                p.output_files[i].CopyFrom(d)
                break
        else:
            p.output_files.append(d)
    for a in o.arguments:
        for i, old_a in enumerate(p.arguments):
            if old_a.name == a.name:
                p.arguments[i].value = a.value
                break
        else:
            p.arguments.append(a)
    if o.cmd:
        p.cmd = o.cmd
    if o.cloud_instance_types:
        del p.cloud_instance_types[:]
        p.cloud_instance_types.extend(o.cloud_instance_types)
    p.env.vars.update(o.env.vars)
    if o.env.HasField("python_env"):
        p.env.python_env.CopyFrom(o.env.python_env)
    which = o.env.WhichOneof("docker_image")
    if which == "docker_image_spec":
        p.env.docker_image_spec.CopyFrom(o.env.docker_image_spec)
    elif which == "docker_image_resource_id":
        p.env.docker_image_resource_id = o.env.docker_image_resource_id
    for fld in ("extended_working_storage", "graceful_shutdown_parameters", "spark_parameters"):
        if o.HasField(fld):
            getattr(p, fld).CopyFrom(getattr(o, fld))
    if o.attach_project_disk:
        p.attach_project_disk = True
    if o.s3_mount_ids:
        p.s3_mount_ids.extend(x for x in o.s3_mount_ids if x not in p.s3_mount_ids)
    if o.dataset_ids:
        p.dataset_ids.extend(x for x in o.dataset_ids if x not in p.dataset_ids)
    if o.output_datasets:
        p.output_datasets.extend(o.output_datasets)
    return p
