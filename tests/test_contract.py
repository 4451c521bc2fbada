"""The wire contract has one source (common/contract.py, common/errors.py), and the floors hold.

* The client and the local server agree on instance types: every name of the table passes
  ``config.yaml`` parsing and the server's Create; a name outside it is refused by both.
* No module keeps its own copy of a contract constant.
* The status table converts both ways (gRPC, google.rpc.Status, HTTP).
* import-linter refuses a cross-floor import (the check bites), and plain ``pytest`` collects.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, ops_grpc, ops_pb2, pjs_grpc, pjs_pb2
from jupyter_ds_jobs.common import errors
from jupyter_ds_jobs.common.contract import DEFAULT_INSTANCE_TYPE, INSTANCE_TYPES
from jupyter_ds_jobs.common.errors import ConfigError
from jupyter_ds_jobs.packaging.jobspec import parse_config
from jupyter_ds_jobs.server.app import ServerOptions
from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jupyter_ds_jobs"


def _create(server: RunningServer, instance_type: str) -> jobs_pb2.Job:
    ch = server.channel()
    try:
        jobs = pjs_grpc.ProjectJobServiceStub(ch)
        ops = ops_grpc.OperationServiceStub(ch)
        params = jobs_pb2.JobParameters(cmd="true")
        params.cloud_instance_types.add(name=instance_type)
        op = jobs.Create(
            pjs_pb2.CreateProjectJobRequest(project_id="p", job_parameters=params), metadata=server.metadata
        )
        op = ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=server.metadata)
        resp = pjs_pb2.CreateProjectJobResponse()
        assert op.response.Unpack(resp)
        job: jobs_pb2.Job = jobs.Get(
            pjs_pb2.GetProjectJobRequest(job_id=resp.job_id), metadata=server.metadata
        )
        return job
    finally:
        ch.close()


@pytest.fixture
def server_options(server_options: ServerOptions) -> ServerOptions:
    # every type must be able to run here: declare the GPUs the largest ones need (the names are
    # the contract; whether a machine has the GPUs is tests/test_resources.py's concern)
    server_options.gpus = max(t.gpus for t in INSTANCE_TYPES.values())
    return server_options


def test_client_and_server_accept_the_same_instance_types(server: RunningServer, tmp_path: Path) -> None:
    assert DEFAULT_INSTANCE_TYPE in INSTANCE_TYPES
    for name in INSTANCE_TYPES:
        spec = parse_config(f"cmd: echo hi\ncloud-instance-type: {name}\n", tmp_path)
        assert [t.name for t in spec.params.cloud_instance_types] == [name]
        job = _create(server, name)
        assert job.actual_cloud_instance_type.name == name
    # a name outside the table: the client says so before anything is sent, and so would the server
    with pytest.raises(ConfigError, match=r"unknown instance type 'gt9\.9'.*c1\.4"):
        parse_config("cmd: echo hi\ncloud-instance-type: gt9.9\n", tmp_path)
    with pytest.raises(grpc.RpcError) as info:
        _create(server, "gt9.9")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cloud_instance_types[0].name" in (info.value.details() or "")


# (pattern, what it is): literals that belong to common/contract.py alone.
_COPIES = [
    (re.compile(r"[\"']_LOCAL_MODULE_[\"']"), "the local-module var prefix"),
    (re.compile(r"5 \* 2\s*\*\*\s*30|5 << 30|5368709120"), "the 5 GiB file limit"),
    (re.compile(r"\[0-9a-zA-Z_-\]\{1,50\}\$"), "the variable-name pattern"),
    (re.compile(r"[\"']SUCCESS[\"'],\s*[\"']ERROR[\"'],\s*[\"']CANCELLED[\"']"), "the final statuses"),
    (re.compile(r"[\"']gt4\.1[\"']"), "the instance-type table"),
]
# The cell runner is shipped into jobs as one self-contained file: it keeps its own copies, pinned
# by tests/test_runner.py.
_SELF_CONTAINED = {"jupyter_ds_jobs/packaging/runner.py", "jupyter_ds_jobs/server/executors/_zygote_main.py"}


def test_contract_constants_have_one_source() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("jupyter_ds_jobs/_proto/") or rel == "jupyter_ds_jobs/common/contract.py":
            continue
        if rel in _SELF_CONTAINED:
            continue
        text = path.read_text(encoding="utf-8")
        for pattern, what in _COPIES:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{rel}:{line}: a copy of {what}")
    assert not found, "\n".join(found)


def test_status_table_converts_both_ways() -> None:
    seen_codes = set()
    for cls, code, http in errors.STATUS_TABLE:
        assert cls.code is code and cls.http_status == http
        assert code not in seen_codes
        seen_codes.add(code)
        exc = errors.from_status(errors.rpc_code(code), "boom")
        assert type(exc) is cls and exc.code is code and str(exc) == "boom"
        from_http = errors.from_http(http, b"no such thing\nmore", "download of x")
        assert isinstance(from_http, errors.DsJobsError)
        assert str(from_http) == f"download of x: HTTP {http}: no such thing"
    assert type(errors.from_http(404, b"", "x")) is errors.NotFound
    assert type(errors.from_http(409, b"", "x")) is errors.FailedPrecondition
    assert type(errors.from_http(418, b"", "x")) is errors.DsJobsError
    unknown = errors.from_status(2, "")
    assert type(unknown) is errors.DsJobsError and unknown.code is grpc.StatusCode.UNKNOWN
    assert errors.InvalidArgument("bad", field="x").code is grpc.StatusCode.INVALID_ARGUMENT
    assert errors.ConfigError("bad").http_status == 400


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(lint), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("common/contract.py", "import jupyter_ds_jobs.core.client", "floors"),
        ("core/config.py", "import jupyter_ds_jobs.packaging.analysis", "floors"),
        ("server/store.py", "import jupyter_ds_jobs.core.transfer", "the server stands on common alone"),
        ("packaging/cell.py", "import IPython", "no IPython below the faces"),
    ],
)
def test_a_cross_floor_import_breaks_the_check(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(PACKAGE, copy / "jupyter_ds_jobs", ignore=shutil.ignore_patterns("__pycache__"))
    assert _lint(copy).returncode == 0
    target = copy / "jupyter_ds_jobs" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


def test_plain_pytest_collects_from_the_repo_root() -> None:
    pytest_bin = Path(sys.executable).with_name("pytest")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(pytest_bin), "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_contract.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_plain_pytest_collects_from_the_repo_root" in result.stdout
