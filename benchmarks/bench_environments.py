"""Benchmark: job Python environments (jupyter_ds_jobs.server.environments).

Measures, in one run, with local wheels only (no network):

1. environment lookup on a cache hit (target: under 1 ms);
2. a new environment with one small package from a warm uv cache (target: under 150 ms), beside
   ``python -m venv`` + ``pip install`` of the same package, as a ratio;
3. a trivial job's process start on a warm environment (ensure on a hit + apply + spawn + wait),
   beside ``subprocess.run`` of the same command with the same interpreter.

Run: ``.venv/bin/python benchmarks/bench_environments.py [--repeat N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jupyter_ds_jobs.server.environments import Environment, EnvironmentCache, EnvSpec  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="repetitions of the new-environment build")
    parser.add_argument("--pip-repeat", type=int, default=2, help="repetitions of venv + pip install")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-envs-") as tmp_str:
        tmp = Path(tmp_str)
        wheelhouse = tmp / "wheelhouse"
        wheels = [
            build_wheel(wheelhouse, f"tinypkg{i}", "1.0", {f"tinypkg{i}": f"WHO = 'tinypkg{i} 1.0'\n"})
            for i in range(args.repeat + 1)
        ]
        index_url = write_simple_index(tmp / "simple", wheels)
        uv_env = dict(os.environ, UV_CACHE_DIR=str(tmp / "uv-cache"))

        def spec_for(i: int) -> EnvSpec:
            return EnvSpec.create("", [f"tinypkg{i}"], index_url=index_url)

        spec = spec_for(0)
        # Warm uv's cache (every wheel unpacked, interpreter queried) with one build elsewhere.
        warmup = EnvironmentCache(tmp / "warmup", env=uv_env)
        all_spec = EnvSpec.create("", [f"tinypkg{i}" for i in range(args.repeat + 1)], index_url=index_url)
        asyncio.run(warmup.ensure(all_spec))
        interpreter = warmup.interpreter_for("")

        # (2) a new environment from a warm uv cache, in a running server's cache: each spec a miss.
        cache = EnvironmentCache(tmp / "root", env=uv_env)
        t0 = time.perf_counter()
        asyncio.run(cache.ensure(spec))
        first_build = time.perf_counter() - t0

        async def new_envs() -> list[float]:
            times = []
            for i in range(1, args.repeat + 1):
                t0 = time.perf_counter()
                await cache.ensure(spec_for(i))
                times.append(time.perf_counter() - t0)
            return times

        builds = asyncio.run(new_envs())
        assert cache.builds == args.repeat + 1
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

        pip_time = median_of(pip_build, args.pip_repeat)

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

    print(f"python {sys.version.split()[0]} ({interpreter}); cores: {os.cpu_count()}")
    print("(1) environment lookup on a hit")
    print(f"    lookup (memoized spec)           {lookup * 1e6:8.2f} us   (target < 1 ms)")
    print(f"    first lookup, new cache object   {first_lookup * 1e6:8.2f} us")
    print("(2) new environment, one small package, warm uv cache")
    print(f"    uv (venv + pip install, publish) {ms(uv_build)}   (target < 150 ms; median of {args.repeat})")
    print(f"      all runs: {', '.join(f'{b * 1000:.0f}' for b in builds)} ms")
    print(f"    first build of this cache object {ms(first_build)}   (uv queries the new venv's python once)")
    print(f"    python -m venv + pip install     {ms(pip_time)}   (median of {args.pip_repeat})")
    print(f"    ratio pip / uv                   {pip_time / uv_build:8.1f} x")
    print("(3) trivial job start (python -c pass) on a warm environment")
    print(f"    ensure(hit) + apply + spawn      {ms(job)}   (median of {reps})")
    print(f"    subprocess.run, venv's python    {ms(plain_venv_time)}   (same command, same interpreter)")
    print(f"    ratio job / subprocess.run       {job / plain_venv_time:8.2f} x")
    print(
        f"    (subprocess.run, base python     {ms(plain_time)}   base interpreter with its own site-packages)"
    )


if __name__ == "__main__":
    main()
