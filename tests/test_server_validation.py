"""Bad input gets INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND naming what is wrong."""

from __future__ import annotations

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, ops_pb2, pjs_pb2
from tests.jobhelpers import Api, file_msg

SHA = "a" * 64
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
def api(server) -> Api:  # type: ignore[no-untyped-def]
    return Api(server.channel(), server.info.token)


def _input(path: str, var: str = "", sha: str = SHA, size: int = 1) -> jobs_pb2.File:
    return jobs_pb2.File(desc=jobs_pb2.FileDesc(path=path, var=var), sha256=sha, size_bytes=size)


CASES = [
    ("empty cmd", dict(cmd="  "), INVALID, "job_parameters.cmd"),
    ("undeclared var", dict(cmd="echo ${NOPE}"), INVALID, "NOPE"),
    (
        "absolute input path",
        dict(cmd="ls", input_files=[_input("/etc/passwd")]),
        INVALID,
        "input_files[0].desc.path",
    ),
    (
        "dotdot input path",
        dict(cmd="ls", input_files=[_input("a/../../x")]),
        INVALID,
        "input_files[0].desc.path",
    ),
    ("bad sha256", dict(cmd="ls", input_files=[_input("a", sha="xyz")]), INVALID, "input_files[0].sha256"),
    ("upper sha256", dict(cmd="ls", input_files=[_input("a", sha="A" * 64)]), INVALID, "sha256"),
    (
        "negative size",
        dict(cmd="ls", input_files=[_input("a", size=-1)]),
        INVALID,
        "input_files[0].size_bytes",
    ),
    ("huge size", dict(cmd="ls", input_files=[_input("a", size=6 * 2**30)]), INVALID, "size_bytes"),
    (
        "duplicate vars",
        dict(
            cmd="ls ${X}", input_files=[_input("a", "X")], output_files=[jobs_pb2.FileDesc(path="b", var="X")]
        ),
        INVALID,
        "'X' is declared twice",
    ),
    (
        "duplicate input paths",
        dict(cmd="ls", input_files=[_input("a"), _input("a")]),
        INVALID,
        "input_files[1]",
    ),
    ("bad var name", dict(cmd="ls", input_files=[_input("a", "bad var!")]), INVALID, "desc.var"),
    ("reserved var", dict(cmd="ls", input_files=[_input("a", "DS_PROJECT_HOME")]), INVALID, "reserved"),
    (
        "absolute output",
        dict(cmd="ls", output_files=[jobs_pb2.FileDesc(path="/tmp/x")]),
        INVALID,
        "output_files[0].path",
    ),
    (
        "unknown instance type",
        dict(cmd="ls", cloud_instance_types=[jobs_pb2.CloudInstanceType(name="z9.99")]),
        INVALID,
        "cloud_instance_types[0].name",
    ),
    (
        "bad signal",
        dict(cmd="ls", graceful_shutdown_parameters=jobs_pb2.GracefulShutdownParameters(signal=99)),
        INVALID,
        "graceful_shutdown_parameters.signal",
    ),
    ("bad env name", dict(cmd="ls", env=jobs_pb2.Environment(vars={"1X": "y"})), INVALID, "env.vars"),
    (
        "docker image",
        dict(cmd="ls", env=jobs_pb2.Environment(docker_image_resource_id="img")),
        PRECONDITION,
        "docker",
    ),
    (
        "spark",
        dict(cmd="ls", spark_parameters=jobs_pb2.SparkParameters(connector_id="c1")),
        PRECONDITION,
        "spark connector 'c1'",
    ),
    ("s3 mount", dict(cmd="ls ${m1}", s3_mount_ids=["m1"]), PRECONDITION, "s3 mount ids: m1"),
    ("dataset", dict(cmd="ls", dataset_ids=["d1"]), PRECONDITION, "dataset ids: d1"),
]


@pytest.mark.parametrize(("what", "params", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_create_refuses_bad_parameters(
    api: Api, what: str, params: dict, code: grpc.StatusCode, needle: str
) -> None:  # type: ignore[type-arg]
    req = pjs_pb2.CreateProjectJobRequest(project_id="p", job_parameters=jobs_pb2.JobParameters(**params))
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.Create(req, metadata=api.md)
    assert e.value.code() == code, e.value.details()
    assert needle in e.value.details()
    assert list(api.jobs.List(pjs_pb2.ListProjectJobRequest(project_id="p"), metadata=api.md).jobs) == []


def test_missing_project_id(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.Create(
            pjs_pb2.CreateProjectJobRequest(job_parameters=jobs_pb2.JobParameters(cmd="ls")), metadata=api.md
        )
    assert e.value.code() == INVALID and "project_id" in e.value.details()


def test_docker_password_is_never_stored_or_echoed(api: Api) -> None:
    env = jobs_pb2.Environment(
        docker_image_spec=jobs_pb2.DockerImageSpec(image_url="x", password_plain_text="s3cret")
    )
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.Create(
            pjs_pb2.CreateProjectJobRequest(
                project_id="p", job_parameters=jobs_pb2.JobParameters(cmd="ls", env=env)
            ),
            metadata=api.md,
        )
    assert e.value.code() == PRECONDITION and "s3cret" not in e.value.details()


def test_public_job_strips_registry_passwords() -> None:
    from jupyter_ds_jobs.server.jobs import public_job

    job = jobs_pb2.Job(id="j")
    job.job_parameters.env.docker_image_spec.password_plain_text = "s3cret"
    assert b"s3cret" not in public_job(job).SerializeToString()
    assert job.job_parameters.env.docker_image_spec.password_plain_text == "s3cret"  # stored copy untouched


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.jobs.Get(pjs_pb2.GetProjectJobRequest(job_id="nope"), metadata=a.md),
        lambda a: a.jobs.Execute(pjs_pb2.ExecuteProjectJobRequest(job_id="nope"), metadata=a.md),
        lambda a: a.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id="nope"), metadata=a.md),
        lambda a: a.jobs.Delete(pjs_pb2.DeleteProjectJobRequest(job_id="nope"), metadata=a.md),
        lambda a: a.jobs.DeleteData(pjs_pb2.DeleteProjectJobDataRequest(job_id="nope"), metadata=a.md),
        lambda a: a.jobs.SetDataTtl(pjs_pb2.SetProjectJobDataTtlRequest(job_id="nope"), metadata=a.md),
        lambda a: a.jobs.Finalize(pjs_pb2.FinalizeProjectJobRequest(job_id="nope"), metadata=a.md),
        lambda a: list(a.jobs.ReadLogs(pjs_pb2.ReadProjectJobLogsRequest(job_id="nope"), metadata=a.md)),
        lambda a: a.ops.Get(ops_pb2.GetOperationRequest(operation_id="nope"), metadata=a.md),
    ],
)
def test_unknown_ids_are_not_found(api: Api, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        call(api)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.value.details()


def test_download_of_unknown_file_and_empty_list(api: Api) -> None:
    job_id = api.create("true")
    api.run(job_id)
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.DownloadJobFiles(pjs_pb2.DownloadProjectJobFilesRequest(job_id=job_id), metadata=api.md)
    assert e.value.code() == INVALID and "files" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        api.jobs.DownloadJobFiles(
            pjs_pb2.DownloadProjectJobFilesRequest(job_id=job_id, files=[file_msg("ghost.txt", b"x")]),
            metadata=api.md,
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "ghost.txt" in e.value.details()


def test_input_with_var_and_absolute_path_stays_inside_the_job_dir(api: Api) -> None:
    job_id = api.create("cat ${D}; echo; echo ${D}", inputs={"/abs/dir/data.csv": (b"1,2", "D")})
    job, _ = api.run(job_id)
    assert job.status == jobs_pb2.SUCCESS, job.status_details
    out = b"".join(c for s, c in api.logs(job_id) if s == "OUT").decode().split("\n")
    assert out[0] == "1,2" and out[1] == "_inputs/D/data.csv"
