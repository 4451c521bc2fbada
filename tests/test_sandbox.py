"""A job cannot read what the server keeps, nor another job's directory.

Real servers, real jobs, in every isolation mode this machine allows (each tried for real when
the server starts; a mode it cannot give is skipped with the reason), started plainly (through
the exec wrapper) and forked from the warm interpreter, as the server's own user and, when the
tests run as root, as ``nobody``. ``none`` is the control: there the same searches find the
secrets, so a search that finds nothing elsewhere is not a search that cannot find.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from jupyter_ds_jobs.server.sandbox import RunAs, probe
from tests.jobhelpers import Api

S = jobs_pb2
TOKEN = "tok-sandbox-7f3a9c2e51"
IS_ROOT = os.geteuid() == 0
SYSTEM_PYTHON = "/usr/bin/python3"

# what a curious job tries: from its working dir upwards, the state dir by its absolute path,
# the Jupyter runtime dir, the server's /proc entries; it prints what it read the secrets in
SEARCH = r"""
import json, os, sys
state, runtime, server = os.environ["T_STATE"], os.environ["T_RUNTIME"], os.environ["T_SERVER_PID"]
needles = [n[::-1].encode() for n in os.environ["T_SELDEEN"].split(",")]  # reversed: not a needle itself
found, opened = [], []

def look(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return
    opened.append(path)
    if any(n in data for n in needles):
        found.append(path)

def walk(top):
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            look(os.path.join(dirpath, name))

up = "."
for _ in range(10):
    up = os.path.join(up, "..")
    try:
        names = os.listdir(up)
    except OSError:
        continue
    for name in names:
        look(os.path.join(up, name))
for top in ("../..", state, runtime, f"/proc/{server}/root{state}", f"/proc/{server}/cwd"):
    walk(top)
for name in ("ds-jobs-server.json", "secret.key", "jobs.sqlite", "server.log"):
    look(os.path.join(state, name))
    look(os.path.join("../..", name))
for pid in (server, "self", "1"):
    for name in ("environ", "cmdline"):
        look(f"/proc/{pid}/{name}")
try:
    os.kill(int(server), 0)
    can_signal = True
except OSError:
    can_signal = False
tmp = os.environ.get("TMPDIR", "")
with open(os.path.join(tmp or ".", "scratch"), "w") as f:
    f.write("tmp works")
print(json.dumps({
    "found": found,
    "db_opened": any(p.endswith("jobs.sqlite") for p in opened),
    "can_signal_server": can_signal,
    "warm": "cloudpickle" in sys.modules,
    "uid": os.getuid(),
    "tmp": tmp,
}))
"""

# (isolation, run as): every sandboxed mode, then the control
CASES = [
    ("landlock", None),
    ("namespaces", None),
    ("landlock", "nobody"),
    ("namespaces", "nobody"),
    ("permissions", "nobody"),
]


def _case_id(case: tuple[str, str | None]) -> str:
    return case[0] + (f"-as-{case[1]}" if case[1] else "")


class Served:
    def __init__(
        self, thread: ServerThread, api: Api, state: Path, runtime: Path, run_as: str | None
    ) -> None:
        self.thread, self.api, self.state, self.runtime, self.run_as = thread, api, state, runtime, run_as
        self.isolation = thread.server.sandbox.describe() if thread.server else ""

    def stdout(self, job_id: str) -> bytes:
        return b"".join(c for s, c in self.api.logs(job_id) if s == "OUT")

    def system(self, job_id: str) -> str:
        return b"".join(c for s, c in self.api.logs(job_id) if s == ".system.log").decode()


def _skip_unless_possible(isolation: str, run_as: str | None) -> None:
    if run_as is not None:
        if not IS_ROOT:
            pytest.skip("--run-as needs the tests to run as root")
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            pytest.skip(f"no user {run_as!r} here")
        if not os.path.exists(SYSTEM_PYTHON):
            pytest.skip(f"{run_as} needs a Python it can read: no {SYSTEM_PYTHON}")
    if isolation in ("landlock", "namespaces"):
        scratch = Path(tempfile.mkdtemp(dir="/tmp"))
        scratch.chmod(0o711)
        try:
            why = probe(scratch / "probe", RunAs.lookup(run_as) if run_as else None).get(isolation)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if why:
            pytest.skip(f"isolation {isolation} is not available on this machine: {why}")


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A dir that ``nobody`` can reach (pytest's own tmp is 0700), with its own runtime dir; the
    server's environment carries the token, as a server started with DS_JOBS_TOKEN does."""
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="dsj-sandbox-"))
    d.chmod(0o711)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(d / "runtime"))
    monkeypatch.setenv("DS_JOBS_TOKEN", TOKEN)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _serve(base: Path, isolation: str, run_as: str | None = None, **kw: object) -> Served:
    opts = ServerOptions(
        state_dir=base / "state",
        token=TOKEN,
        isolation=isolation,  # type: ignore[arg-type]
        run_as=run_as,
        sweep_interval=3600,
        **kw,  # type: ignore[arg-type]
    )
    thread = ServerThread(opts)
    info = thread.start()
    return Served(
        thread, Api(grpc.insecure_channel(info.endpoint), TOKEN), base / "state", base / "runtime", run_as
    )


@pytest.fixture(params=[*CASES, ("none", None)], ids=_case_id)
def served(request: pytest.FixtureRequest, base: Path) -> Iterator[Served]:
    isolation, run_as = request.param
    _skip_unless_possible(isolation, run_as)
    s = _serve(base, isolation, run_as)
    try:
        yield s
    finally:
        s.thread.stop()


def _search(s: Served, warm: bool) -> tuple[str, dict[str, object]]:
    key = (s.state / "secret.key").read_text().strip()
    env = {"T_STATE": str(s.state), "T_RUNTIME": str(s.runtime), "T_SERVER_PID": str(os.getpid())}
    env["T_SELDEEN"] = f"{TOKEN[::-1]},{key[::-1]}"
    if warm:  # what %%ds_job runs: forked from the warm interpreter
        cmd, name = "python _ds_runner.py", "_ds_runner.py"
    else:
        cmd, name = f"{SYSTEM_PYTHON if s.run_as else 'python'} search.py", "search.py"
    job_id = s.api.create(cmd, {name: (SEARCH.encode(), "")}, env=jobs_pb2.Environment(vars=env))
    job, _ = s.api.run(job_id)
    assert job.status == S.SUCCESS, f"{job.status_details}\n{s.api.logs(job_id)}"
    return job_id, json.loads(s.stdout(job_id))


@pytest.mark.parametrize("warm", [False, True], ids=["plain", "warm"])
def test_a_job_finds_neither_the_token_nor_the_signing_key(served: Served, warm: bool) -> None:
    job_id, out = _search(served, warm)
    mode = served.isolation.split()[0]
    assert served.system(job_id).count(f"isolation: {served.isolation}\n") == 1
    if warm and served.run_as is None:
        assert out["warm"] is True, "the job was not forked from the warm interpreter"
    if mode == "none":  # the control: the same search, unconfined, reads them
        assert any(p.endswith("ds-jobs-server.json") for p in out["found"])  # type: ignore[attr-defined]
        assert any(p.endswith("secret.key") for p in out["found"])  # type: ignore[attr-defined]
        assert out["db_opened"] and out["can_signal_server"]
        return
    assert out["found"] == [] and out["db_opened"] is False
    assert out["can_signal_server"] is False
    if served.run_as:
        assert out["uid"] == pwd.getpwnam(served.run_as).pw_uid
    tmp = Path(str(out["tmp"]))  # a private TMPDIR, gone with the job
    assert tmp.parent == served.state / "tmp" and not tmp.exists()


OTHER = r"""
import json, os, sys
mark, other = os.environ["T_KRAM"][::-1].encode(), os.environ["T_OTHER_DIR"]
found = []

def look(path):
    try:
        with open(path, "rb") as f:
            if mark in f.read(1 << 16):
                found.append(path)
    except OSError:
        pass

for top in ("..", os.path.dirname(other), other):
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            look(os.path.join(dirpath, name))
look(os.path.join("..", os.path.basename(other), "mine.txt"))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        look(f"/proc/{pid}/cwd/mine.txt")
        look(f"/proc/{pid}/root{other}/mine.txt")
print(json.dumps(found))
"""


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "permissions"] + [("none", None)], ids=_case_id)
def test_a_job_cannot_read_another_jobs_directory(base: Path, case: tuple[str, str | None]) -> None:
    """Job A keeps a file in its dir and runs on; job B looks for it every way it can. (With
    ``permissions`` alone, both jobs are one user: that mode does not separate jobs.)"""
    isolation, run_as = case
    _skip_unless_possible(isolation, run_as)
    s = _serve(base, isolation, run_as)
    try:
        mark = "MARK-" + os.urandom(6).hex()
        a = s.api.create(f"echo {mark} > mine.txt; sleep 60")
        op_a = s.api.execute(a)
        deadline = time.monotonic() + 30
        while not (s.state / "work" / a / "mine.txt").exists():
            assert time.monotonic() < deadline, "job A never wrote its file"
            time.sleep(0.05)
        env = {"T_KRAM": mark[::-1], "T_OTHER_DIR": str(s.state / "work" / a)}
        py = SYSTEM_PYTHON if run_as else "python"
        b = s.api.create(
            f"{py} other.py", {"other.py": (OTHER.encode(), "")}, env=jobs_pb2.Environment(vars=env)
        )
        job_b, _ = s.api.run(b)
        assert job_b.status == S.SUCCESS, s.api.logs(b)
        found = json.loads(s.stdout(b))
        s.api.jobs.Cancel(pjs_pb2.CancelProjectJobRequest(job_id=a), metadata=s.api.md)
        s.api.wait(op_a)
        if isolation == "none":
            assert any(p.endswith("mine.txt") for p in found)
        else:
            assert found == []
    finally:
        s.thread.stop()


STATUS = r"grep -E '^Sig(Ign|Blk)' /proc/self/status; env | sort"


@pytest.mark.parametrize("isolation", ["landlock", "namespaces"])
def test_a_sandboxed_job_sees_the_environment_and_signals_of_an_unconfined_one(
    base: Path, isolation: str
) -> None:
    """The exec wrapper is Python: what Python changes at its start (ignored SIGPIPE, a coerced
    LC_CTYPE) must not reach the job; TMPDIR is the one addition."""
    _skip_unless_possible(isolation, None)
    seen = {}
    for mode in (isolation, "none"):
        s = _serve(base / mode, mode)
        try:
            job_id = s.api.create(STATUS, env=jobs_pb2.Environment(vars={"LANG": "C"}))
            job, _ = s.api.run(job_id)
            assert job.status == S.SUCCESS
            seen[mode] = s.stdout(job_id).decode().replace(job_id, "JOB").replace(str(base / mode), "BASE")
        finally:
            s.thread.stop()
    confined = [line for line in seen[isolation].splitlines() if not line.startswith("TMPDIR=")]
    plain = [line for line in seen["none"].splitlines() if not line.startswith("TMPDIR=")]
    assert confined == plain
    assert "TMPDIR=BASE/state/tmp/JOB." in seen[isolation]


def test_a_granted_path_above_the_state_dir_grants_all_but_the_state_dir(base: Path) -> None:
    """``--sandbox-read`` of the dir holding the state dir: its other contents are readable,
    the state dir is not."""
    (base / "shared").mkdir()
    (base / "shared" / "data.txt").write_text("shared data\n")
    s = _serve(base, "auto", sandbox_read=(str(base),))
    try:
        if s.isolation.startswith(("permissions", "none")):
            pytest.skip(f"no sandbox on this machine ({s.isolation})")
        cmd = f"cat {base}/shared/data.txt; cat {s.state}/secret.key || echo refused"
        job_id = s.api.create(cmd)
        s.api.run(job_id)
        assert s.stdout(job_id) == b"shared data\nrefused\n"
    finally:
        s.thread.stop()


def test_the_state_dir_layout_and_modes(base: Path) -> None:
    s = _serve(base, "auto")
    try:
        job_id = s.api.create("echo hi > f.txt")
        s.api.run(job_id)
        sd = s.state
        assert stat.S_IMODE(sd.stat().st_mode) == 0o700
        for name in ("secret.key", "jobs.sqlite", "ds-jobs-server.json"):
            assert stat.S_IMODE((sd / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE((base / "runtime" / "ds-jobs-server.json").stat().st_mode) == 0o600
        for name in ("blobs", "jobs", "work", "tmp"):
            assert stat.S_IMODE((sd / name).stat().st_mode) == 0o700, name
        # the working dir in a root of its own, beside (not below) the job's logs
        assert (sd / "work" / job_id / "f.txt").read_text() == "hi\n"
        assert sorted(p.name for p in (sd / "jobs" / job_id).iterdir()) == ["logs"]
        assert list((sd / "tmp").iterdir()) == []
    finally:
        s.thread.stop()


def test_run_as_keeps_the_server_files_to_the_server(base: Path) -> None:
    _skip_unless_possible("permissions", "nobody")
    s = _serve(base, "permissions", "nobody")
    try:
        job_id = s.api.create("echo hi > f.txt")
        job, _ = s.api.run(job_id)
        assert job.status == S.SUCCESS, s.api.logs(job_id)
        sd, nobody = s.state, pwd.getpwnam("nobody").pw_uid
        assert stat.S_IMODE(sd.stat().st_mode) == 0o711  # searchable, not listable
        for name in ("secret.key", "jobs.sqlite", "ds-jobs-server.json"):
            st = (sd / name).stat()
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, name
        for name in ("blobs", "jobs"):
            assert stat.S_IMODE((sd / name).stat().st_mode) == 0o700, name
        work = sd / "work" / job_id
        assert work.stat().st_uid == nobody and stat.S_IMODE(work.stat().st_mode) == 0o700
        assert (work / "f.txt").stat().st_uid == nobody
    finally:
        s.thread.stop()


def test_impossible_settings_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--run-as needs an isolation mode other than none"):
        _serve(tmp_path, "none", "nobody" if IS_ROOT else "0")
    if IS_ROOT:  # pytest's tmp dirs are 0700: nobody cannot reach a state dir there
        with pytest.raises(
            FailedPrecondition, match=r"--run-as nobody: that user cannot reach the state dir \("
        ):
            _serve(tmp_path, "permissions", "nobody")
    else:
        with pytest.raises(FailedPrecondition, match="--run-as needs a server started as root"):
            _serve(tmp_path, "permissions", "nobody")


def test_server_status_reports_the_isolation(base: Path) -> None:
    s = _serve(base, "auto")
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "jupyter_ds_jobs",
                "server",
                "status",
                "--state-dir",
                str(s.state),
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["isolation"] == s.isolation != ""
        text = subprocess.run(
            [sys.executable, "-m", "jupyter_ds_jobs", "server", "status", "--state-dir", str(s.state)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert re.search(rf"^isolation +{re.escape(s.isolation)}$", text, re.M), text
    finally:
        s.thread.stop()
