"""The long fuzz run: 10,000 hostile requests (``tests/fuzzing.py``) against a server process.

Prints the answers by status code, how the executed jobs ended, anything bad (UNKNOWN, INTERNAL,
a deadline passed, a job that ended with an exception, an ERROR or a traceback on the server's
stderr) and the server's RSS: idle before, after the run, and its peak. Exits 1 if anything bad
was seen.

    python benchmarks/fuzz_service.py                  # 10,000 requests
    python benchmarks/fuzz_service.py -n 2000 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import peak_rss_mb
from tests.fuzzing import METHODS, Fuzzer, hostile_jobs, raw_bodies, rpc_requests


def start(state: Path, stderr: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    conn = state / "ds-jobs-server.json"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    cmd = [sys.executable, "-m", "jupyter_ds_jobs", "server", "--state-dir", str(state), "--token", "fuzz"]
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + 60
    while not conn.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start:\n{stderr.read_text()}")
        time.sleep(0.05)
    return proc, json.loads(conn.read_text())


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--requests", type=int, default=10_000, help="requests to send (about)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    args = ap.parse_args()
    n = args.requests
    run = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        stderr = Path(tmp) / "server.stderr"
        proc, info = start(Path(tmp) / "state", stderr)
        fz = Fuzzer(info["endpoint"], info["token"])
        try:
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            t0 = time.monotonic()

            @seed(args.seed)
            @settings(run, max_examples=int(n * 0.6))
            @given(st.data())
            def rpcs(data: st.DataObject) -> None:
                fz.send(*data.draw(rpc_requests(fz)))

            @seed(args.seed)
            @settings(run, max_examples=int(n * 0.2))
            @given(st.sampled_from(METHODS), raw_bodies)
            def raw(method: str, body: bytes) -> None:
                fz.call(method, body)

            @seed(args.seed)
            @settings(run, max_examples=n)
            @given(hostile_jobs())
            def jobs(job: tuple[str, object, dict[str, bytes]]) -> None:
                if fz.requests < n:
                    fz.run_job(job[1], job[2])  # type: ignore[arg-type]

            fz.seed_jobs()
            rpcs()
            raw()
            jobs()
            elapsed = time.monotonic() - t0
            time.sleep(2.0)
            after = rss_mb(proc.pid)
            peak = peak_rss_mb(proc.pid)
        finally:
            fz.close()
            proc.terminate()
            proc.wait(30)
        log = stderr.read_text(errors="replace")

    problems = [line for line in log.splitlines() if re.search(r"Traceback|\bERROR\b|Unexpected", line)]
    print(f"requests: {fz.requests} in {elapsed:.0f} s")
    print("by status code: " + ", ".join(f"{k} {v}" for k, v in fz.codes.most_common()))
    print("executed jobs ended: " + ", ".join(f"{k} {v}" for k, v in fz.job_ends.most_common()))
    print(f"server RSS: {idle:.0f} MB idle before, {after:.0f} MB after, peak {peak:.0f} MB")
    print(
        f"bad answers: {len(fz.bad)}; jobs ended by an exception: {len(fz.exceptions)}; log problems: {len(problems)}"
    )
    for line in [*fz.bad, *fz.exceptions, *problems][:30]:
        print("  " + line[:300])
    return 1 if fz.bad or fz.exceptions or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
