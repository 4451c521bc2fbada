"""Our protos against the official ones (the yandexcloud SDK's descriptors)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor as d

from jupyter_ds_jobs import _proto

ROOT = Path(__file__).resolve().parent.parent

FILES = {
    "jobs": "yandex.cloud.datasphere.v2.jobs.jobs_pb2",
    "pjs": "yandex.cloud.datasphere.v2.jobs.project_job_service_pb2",
    "op": "yandex.cloud.operation.operation_pb2",
    "ops": "yandex.cloud.operation.operation_service_pb2",
    "iam": "yandex.cloud.iam.v1.iam_token_service_pb2",
}
OURS = {
    "jobs": _proto.jobs_pb2,
    "pjs": _proto.pjs_pb2,
    "op": _proto.op_pb2,
    "ops": _proto.ops_pb2,
    "iam": _proto.iam_pb2,
}
# The legacy RPC from the oldest API doc, which the current SDK no longer has.
EXTRA_METHODS = {"yandex.cloud.datasphere.v2.jobs.ProjectJobService.Finalize"}
EXTRA_MESSAGES = {
    "yandex.cloud.datasphere.v2.jobs.FinalizeProjectJobRequest",
    "yandex.cloud.datasphere.v2.jobs.FinalizeProjectJobResponse",
}


def _field(f: d.FieldDescriptor) -> tuple[object, ...]:
    return (
        f.number,
        f.name,
        f.type,
        f.is_repeated,
        f.message_type.full_name if f.message_type else None,
        f.enum_type.full_name if f.enum_type else None,
        f.containing_oneof.name if f.containing_oneof else None,
    )


def _messages(m: d.Descriptor, out: dict[str, object]) -> None:
    out[m.full_name] = sorted(_field(f) for f in m.fields)
    for e in m.enum_types:
        out[e.full_name] = sorted((v.name, v.number) for v in e.values)
    for n in m.nested_types:
        _messages(n, out)


def shape(fd: d.FileDescriptor) -> dict[str, object]:
    out: dict[str, object] = {"__file__": (fd.name, fd.package)}
    for m in fd.message_types_by_name.values():
        _messages(m, out)
    for e in fd.enum_types_by_name.values():
        out[e.full_name] = sorted((v.name, v.number) for v in e.values)
    for s in fd.services_by_name.values():
        for meth in s.methods:
            out[meth.full_name] = (
                meth.input_type.full_name,
                meth.output_type.full_name,
                meth.client_streaming,
                meth.server_streaming,
            )
    return out


@pytest.mark.parametrize("key", sorted(FILES))
def test_descriptors_match_official_sdk(key: str) -> None:
    import importlib

    sdk = importlib.import_module(FILES[key])
    theirs = shape(sdk.DESCRIPTOR)
    ours = shape(OURS[key].DESCRIPTOR)
    for extra in EXTRA_METHODS | EXTRA_MESSAGES:
        ours.pop(extra, None)
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    for name in theirs:
        assert ours[name] == theirs[name], name


def test_finalize_is_the_only_extra_rpc() -> None:
    svc = _proto.pjs_pb2.DESCRIPTOR.services_by_name["ProjectJobService"]
    names = {m.name for m in svc.methods}
    assert names == {
        "Create", "Clone", "Execute", "Cancel", "Finalize", "ReadStdLogs", "ReadLogs", "DownloadJobFiles",
        "List", "Get", "Delete", "DeleteData", "DeleteAllData", "SetDataTtl",
    }  # fmt: skip


def test_wire_roundtrip_with_sdk_messages() -> None:
    from yandex.cloud.datasphere.v2.jobs import jobs_pb2 as sdk_jobs

    ours = _proto.jobs_pb2.Job(id="j1", status=_proto.jobs_pb2.PREPARING, parent_job_id="p")
    ours.job_parameters.env.python_env.pip_options.extra_index_urls.append("http://x")
    ours.job_parameters.spark_parameters.connector_id = "c"
    theirs = sdk_jobs.Job.FromString(ours.SerializeToString())
    assert theirs.status == sdk_jobs.PREPARING
    assert theirs.job_parameters.spark_parameters.connector_id == "c"
    assert _proto.jobs_pb2.Job.FromString(theirs.SerializeToString()) == ours


def test_sdk_imported_first_then_ours_in_fresh_process() -> None:
    code = (
        "import yandex.cloud.datasphere.v2.jobs.project_job_service_pb2 as s\n"
        "import jupyter_ds_jobs._proto as p\n"
        "import yandex.cloud.operation.operation_service_pb2\n"
        "print(p.pjs_pb2.CreateProjectJobRequest(project_id='x').project_id, s.CreateProjectJobRequest(name='y').name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["x", "y"]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "jupyter_ds_jobs" / "_proto"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "generator wrote nothing"
    have = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and p.parent != committed and "__pycache__" not in p.parts
    )
    assert fresh == have
    for rel in fresh:
        assert filecmp.cmp(tmp_path / rel, committed / rel, shallow=False), (
            f"{rel} is stale: run scripts/gen_protos.py"
        )


def test_project_service_subset_matches_the_official_fields() -> None:
    """ProjectService.Get and the Project fields we serve have the official numbers and types."""
    from yandex.cloud.datasphere.v2 import project_pb2 as sdk_project
    from yandex.cloud.datasphere.v2 import project_service_pb2 as sdk_ps

    ours = {f.number: (f.name, f.type) for f in _proto.project_pb2.Project.DESCRIPTOR.fields}
    theirs = {f.number: (f.name, f.type) for f in sdk_project.Project.DESCRIPTOR.fields}
    assert ours.items() <= theirs.items()
    assert set(theirs) - set(ours) == {7, 8}  # settings, limits: not kept locally
    req = _proto.ps_pb2.GetProjectRequest.DESCRIPTOR
    assert [(f.number, f.name, f.type) for f in req.fields] == [
        (f.number, f.name, f.type) for f in sdk_ps.GetProjectRequest.DESCRIPTOR.fields
    ]
    ours_get = _proto.ps_pb2.DESCRIPTOR.services_by_name["ProjectService"].methods_by_name["Get"]
    theirs_get = sdk_ps.DESCRIPTOR.services_by_name["ProjectService"].methods_by_name["Get"]
    assert ours_get.full_name == theirs_get.full_name
    assert ours_get.input_type.full_name == theirs_get.input_type.full_name
    assert ours_get.output_type.full_name == theirs_get.output_type.full_name
