"""Benchmark: job Python environments (jupyter_ds_jobs.server.environments).

Measures, in one run, with local wheels only (no network):

1. environment lookup on a cache hit (target: under 1 ms);
2. a new environment with one small package from a warm uv cache (target: under 150 ms), beside
   ``python -m venv`` + ``pip install`` of the same package, as a ratio;
3. a trivial job's process start on a warm environment (ensure on a hit + apply + spawn + wait),
   beside ``subprocess.run`` of the same command with the same interpreter;
4. a job through the service (a server process, the official SDK's stubs; Create, upload of its
   script, Execute, logs to their end, the operation done) whose requirements need a venv already
   built, beside the same job without ``python_env`` (target: ratio under 1.3), alternating:
   a script (``python main.py``, a plain start) and a warm-started one (``python _ds_runner.py``,
   forked from the job interpreter's zygote).

Run: ``.venv/bin/python benchmarks/bench_environments.py [--repeat N] [--runs N] [--service-only]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from yandex.cloud.datasphere.v2.jobs import jobs_pb2 as sdk_jobs  # noqa: E402
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2 as sdk_pjs  # noqa: E402
from yandex.cloud.datasphere.v2.jobs import project_job_service_pb2_grpc as sdk_pjs_grpc  # noqa: E402
from yandex.cloud.operation import operation_service_pb2 as sdk_ops  # noqa: E402
from yandex.cloud.operation import operation_service_pb2_grpc as sdk_ops_grpc  # noqa: E402

from benchmarks._common import paired, row, start_server  # noqa: E402
from jupyter_ds_jobs.server.environments import Environment, EnvironmentCache, EnvSpec  # noqa: E402
from tests.jobhelpers import http  # noqa: E402
from tests.wheels import build_wheel, write_simple_index  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def median_of(fn: Callable[[], float], n: int) -> float:
    return statistics.median(fn() for _ in range(n))


async def start_job(cache: EnvironmentCache, spec: EnvSpec) -> float:
    t0 = time.perf_counter()
    env = await cache.ensure(spec)
    proc = await asyncio.create_subprocess_exec(str(env.python), "-c", "pass", env=env.apply(os.environ))
    await proc.wait()
    return time.perf_counter() - t0


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


class SdkJobs:
    """Jobs through a server with the official SDK's stubs, the way its client runs a script."""

    def __init__(self, endpoint: str, token: str) -> None:
        channel = grpc.insecure_channel(endpoint)
        self.jobs = sdk_pjs_grpc.ProjectJobServiceStub(channel)
        self.ops = sdk_ops_grpc.OperationServiceStub(channel)
        self.md = [("authorization", f"Bearer {token}")]
        self.serial = itertools.count()

    def run(self, cmd: str, script: str, python_env: sdk_jobs.PythonEnv | None = None) -> bytes:
        """Create (the script a local module, new content each time), upload it, Execute, read the
        logs to their end, wait for the operation; the job's stdout."""
        module = _zip({cmd.split()[1]: f"{script}# {next(self.serial)}\n"})
        params = sdk_jobs.JobParameters(cmd=cmd)
        if python_env is not None:
            params.env.python_env.CopyFrom(python_env)
        params.env.python_env.local_modules.add(
            desc=sdk_jobs.FileDesc(path="/tmp/bench/main.zip", var="_LOCAL_MODULE_0"),
            sha256=hashlib.sha256(module).hexdigest(),
            size_bytes=len(module),
            compression_type=sdk_jobs.ZIP,
        )
        request = sdk_pjs.CreateProjectJobRequest(project_id="bench", job_parameters=params)
        op = self.jobs.Create(request, metadata=self.md, timeout=30)
        created = sdk_pjs.CreateProjectJobResponse()
        assert op.response.Unpack(created), op
        for sf in created.upload_files:
            assert http("PUT", sf.url, module)[0] == 201
        job = created.job_id
        op = self.jobs.Execute(sdk_pjs.ExecuteProjectJobRequest(job_id=job), metadata=self.md, timeout=30)
        out = b""
        for resp in self.jobs.ReadLogs(
            sdk_pjs.ReadProjectJobLogsRequest(job_id=job), metadata=self.md, timeout=60
        ):
            for m in resp.logs:
                if m.WhichOneof("source") == "standard_stream" and m.standard_stream == sdk_pjs.OUT:
                    out += m.content
        while not op.done:
            op = self.ops.Get(sdk_ops.GetOperationRequest(operation_id=op.id), metadata=self.md, timeout=30)
        assert not op.HasField("error"), op.error
        return out


SCRIPT = "import os, sys\nprint(os.environ.get('VIRTUAL_ENV', '-'), sys.prefix)\n"


def service_pairs(tmp: Path, index_url: str, runs: int) -> list[tuple[str, float, float, float]]:
    """(4): each job with a cached environment beside the same job with none, alternating."""
    proc, info = start_server(tmp / "server")
    try:
        sdk = SdkJobs(info["endpoint"], "bench")
        env = sdk_jobs.PythonEnv(requirements=["tinypkg0==1.0"])
        env.pip_options.index_url = index_url
        out = []
        for cmd in ("python main.py", "python _ds_runner.py"):
            venv, prefix = sdk.run(cmd, SCRIPT, env).decode().split()  # builds the environment: not timed
            assert venv == prefix and Path(venv).parent.name == "envs", (venv, prefix)
            assert sdk.run(cmd, SCRIPT).split()[0] == b"-"
            ours, floor, ratio = paired(
                lambda c=cmd: sdk.run(c, SCRIPT, env), lambda c=cmd: sdk.run(c, SCRIPT), runs
            )
            out.append((cmd, ours, floor, ratio))
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def cache_sections(tmp: Path, wheelhouse: Path, index_url: str, repeat: int, pip_repeat: int) -> None:
    """(1) to (3): the cache itself, in this process."""
    uv_env = dict(os.environ, UV_CACHE_DIR=str(tmp / "uv-cache"))

    def spec_for(i: int) -> EnvSpec:
        return EnvSpec.create("", [f"tinypkg{i}"], index_url=index_url)

    spec = spec_for(0)
    # Warm uv's cache (every wheel unpacked, interpreter queried) with one build elsewhere.
    warmup = EnvironmentCache(tmp / "warmup", env=uv_env)
    all_spec = EnvSpec.create("", [f"tinypkg{i}" for i in range(repeat + 1)], index_url=index_url)
    asyncio.run(warmup.ensure(all_spec))
    interpreter = warmup.interpreter_for("")

    # (2) a new environment from a warm uv cache, in a running server's cache: each spec a miss.
    cache = EnvironmentCache(tmp / "root", env=uv_env)
    t0 = time.perf_counter()
    asyncio.run(cache.ensure(spec))
    first_build = time.perf_counter() - t0

    async def new_envs() -> list[float]:
        times = []
        for i in range(1, repeat + 1):
            t0 = time.perf_counter()
            await cache.ensure(spec_for(i))
            times.append(time.perf_counter() - t0)
        return times

    builds = asyncio.run(new_envs())
    assert cache.builds == repeat + 1
    uv_build = statistics.median(builds)

    def pip_build() -> float:
        target = tmp / f"pipvenv{time.monotonic_ns()}"
        t0 = time.perf_counter()
        subprocess.run([str(interpreter), "-m", "venv", str(target)], check=True)
        subprocess.run(
            [
                *(
                    str(target / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                ),
                *("--no-index", "--find-links", str(wheelhouse), "tinypkg0"),
            ],
            check=True,
        )
        return time.perf_counter() - t0

    pip_time = median_of(pip_build, pip_repeat)

    # (1) lookup on a hit.
    n = 20000
    assert cache.lookup(spec) is not None
    t0 = time.perf_counter()
    for _ in range(n):
        cache.lookup(spec)
    lookup = (time.perf_counter() - t0) / n
    fresh = EnvironmentCache(tmp / "root", env=uv_env)  # first lookup in a new cache object
    t0 = time.perf_counter()
    fresh.lookup(spec)
    first_lookup = time.perf_counter() - t0

    # (3) a trivial job's start on a warm environment vs a plain subprocess.run.
    env = cache.lookup(spec)
    assert isinstance(env, Environment)

    async def job_starts(k: int) -> list[float]:
        return [await start_job(cache, spec) for _ in range(k)]

    reps = 15
    job = statistics.median(asyncio.run(job_starts(reps)))

    def plain() -> float:
        t0 = time.perf_counter()
        subprocess.run([str(interpreter), "-c", "pass"], check=True)
        return time.perf_counter() - t0

    plain_time = median_of(plain, reps)

    def plain_venv() -> float:
        t0 = time.perf_counter()
        subprocess.run([str(env.python), "-c", "pass"], check=True)
        return time.perf_counter() - t0

    plain_venv_time = median_of(plain_venv, reps)

    print(f"base interpreter: {interpreter}")
    print("(1) environment lookup on a hit")
    print(f"    lookup (memoized spec)           {lookup * 1e6:8.2f} us   (target < 1 ms)")
    print(f"    first lookup, new cache object   {first_lookup * 1e6:8.2f} us")
    print("(2) new environment, one small package, warm uv cache")
    print(f"    uv (venv + pip install, publish) {ms(uv_build)}   (target < 150 ms; median of {repeat})")
    print(f"      all runs: {', '.join(f'{b * 1000:.0f}' for b in builds)} ms")
    print(f"    first build of this cache object {ms(first_build)}   (uv queries the new venv's python once)")
    print(f"    python -m venv + pip install     {ms(pip_time)}   (median of {pip_repeat})")
    print(f"    ratio pip / uv                   {pip_time / uv_build:8.1f} x")
    print("(3) trivial job start (python -c pass) on a warm environment")
    print(f"    ensure(hit) + apply + spawn      {ms(job)}   (median of {reps})")
    print(f"    subprocess.run, venv's python    {ms(plain_venv_time)}   (same command, same interpreter)")
    print(f"    ratio job / subprocess.run       {job / plain_venv_time:8.2f} x")
    print(
        f"    (subprocess.run, base python     {ms(plain_time)}   base interpreter with its own site-packages)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="repetitions of the new-environment build")
    parser.add_argument("--pip-repeat", type=int, default=2, help="repetitions of venv + pip install")
    parser.add_argument("--runs", type=int, default=30, help="alternating pairs of jobs through the service")
    parser.add_argument("--service-only", action="store_true", help="only (4), the jobs through the service")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-envs-") as tmp_str:
        tmp = Path(tmp_str)
        wheelhouse = tmp / "wheelhouse"
        wheels = [
            build_wheel(wheelhouse, f"tinypkg{i}", "1.0", {f"tinypkg{i}": f"WHO = 'tinypkg{i} 1.0'\n"})
            for i in range(args.repeat + 1)
        ]
        index_url = write_simple_index(tmp / "simple", wheels)
        print(f"python {sys.version.split()[0]} ({sys.executable}); cores: {os.cpu_count()}")
        if not args.service_only:
            cache_sections(tmp, wheelhouse, index_url, args.repeat, args.pip_repeat)
        pairs = service_pairs(tmp, index_url, args.runs)
    print(
        f"(4) a job through the service, create -> done (official SDK stubs; median of {args.runs}, alternating)"
    )
    print("    a job whose python_env needs a venv already built (ours) vs the job without it (floor)")
    for cmd, ours, floor, ratio in pairs:
        row(f"    {cmd}", ours, floor, ratio=ratio)
    print("    (target: ratio < 1.3; ratio = median of the pairwise ratios)")


if __name__ == "__main__":
    main()
