#!/usr/bin/env python3
"""What job isolation costs at a job's start, beside the same job unconfined (``--isolation none``).

For each mode this host allows, two servers (that mode and ``none``) run, alternately, the same
trivial jobs, Execute -> done: a plain command (``true``: through the exec wrapper when
sandboxed) and a cell job (``python _ds_runner.py``: forked from the warm interpreter, which
confines the fork itself).

    python benchmarks/bench_sandbox.py [--runs 15]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import paired, row, start_server
from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.server.sandbox import probe
from tests.jobhelpers import Api


def _job(api: Api, cmd: str, inputs: dict[str, tuple[bytes, str]]) -> None:
    job_id = api.create(cmd, inputs)
    job, _ = api.run(job_id)
    assert job.status == jobs_pb2.SUCCESS, api.logs(job_id)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    found = probe(base / "probe")
    print(f"landlock ABI {found.get('landlock_abi')}; unavailable here: "
          + (", ".join(f"{m} ({why})" for m, why in found.items() if why and m != "landlock_abi") or "none"))  # fmt: skip
    modes = [m for m in ("landlock", "namespaces") if not found.get(m)] + ["permissions"]
    floor_proc, floor_info = start_server(base / "none", "--isolation", "none")
    floor = Api(grpc.insecure_channel(floor_info["endpoint"]), "bench")
    cell = {"_ds_runner.py": (b"x = 1\n", "")}
    try:
        for mode in modes:
            proc, info = start_server(base / mode, "--isolation", mode)
            try:
                api = Api(grpc.insecure_channel(info["endpoint"]), "bench")
                for name, cmd, inputs in (
                    ("plain `true`", "true", {}),
                    ("cell (warm)", "python _ds_runner.py", cell),
                ):
                    ours, fl, ratio = paired(
                        functools.partial(_job, api, cmd, inputs),
                        functools.partial(_job, floor, cmd, inputs),
                        args.runs,
                        warmup=2,
                    )
                    row(f"{mode}: {name}, Execute -> done", ours, fl, ratio=ratio)
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        floor_proc.terminate()
        floor_proc.wait(30)
        time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
