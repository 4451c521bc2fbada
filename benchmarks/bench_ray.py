#!/usr/bin/env python3
"""The Ray executor beside Ray's own Jobs API, on one private head (``tests/rayhead.py``).

1. Trivial jobs (``python3 -c "print(1)"``), submit -> finished, one at a time, alternating:
   ours (Create, Execute, operation done through the job server with ``--executor ray``) beside
   ``JobSubmissionClient.submit_job`` of the same command with the same resources, polled until
   it ends. Ratio target: at most 1.0x.
2. Log latency: a job prints ``time.time()`` every 0.2 s; the delay until the line reaches our
   client (ReadLogs through the server) beside Ray's own log tail (``tail_job_logs``).

    python benchmarks/bench_ray.py [--jobs 50] [--ray-workdir auto|shared|node]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import contextlib

from benchmarks._common import paired, row
from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.server.app import ServerOptions, ServerThread
from tests.jobhelpers import Api
from tests.rayhead import start_head

TRIVIAL = 'python3 -c "print(1)"'
TICKS = 'python3 -u -c "import time\nfor _ in range(15): print(repr(time.time())); time.sleep(0.2)"'
CPUS = 2  # c1.4 on the 2-CPU head: clamped to 2, the same for Ray's own submits


def ray_wait(client: Any, sid: str) -> None:
    while not client.get_job_status(sid).is_terminal():
        time.sleep(0.01)


def lags(lines: list[tuple[float, bytes]]) -> list[float]:
    out = []
    for seen, text in lines:
        for word in text.split():
            with contextlib.suppress(ValueError):
                out.append(seen - float(word))
    return out


def our_log_lags(api: Api) -> list[float]:
    job_id = api.create(TICKS, cloud_instance_types=[jobs_pb2.CloudInstanceType(name="c1.4")])
    api.execute(job_id)
    got: list[tuple[float, bytes]] = []
    for resp in api.jobs.ReadLogs(
        pjs_pb2.ReadProjectJobLogsRequest(job_id=job_id), metadata=api.md, timeout=120
    ):
        now = time.time()
        got += [(now, m.content) for m in resp.logs if m.WhichOneof("source") == "standard_stream"]
    return lags(got)


def ray_log_lags(client: object) -> list[float]:
    sid = client.submit_job(entrypoint=TICKS, entrypoint_num_cpus=CPUS)  # type: ignore[attr-defined]

    async def tail() -> list[tuple[float, bytes]]:
        got = []
        async for text in client.tail_job_logs(sid):  # type: ignore[attr-defined]
            got.append((time.time(), text.encode()))
        return got

    return lags(asyncio.run(tail()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--ray-workdir", default="auto", choices=("auto", "shared", "node"))
    args = ap.parse_args()
    from ray.job_submission import JobSubmissionClient

    # a timeout's SIGTERM still stops the head (by its processes) through the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    head = start_head(num_cpus=CPUS, num_gpus=0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            opts = ServerOptions(state_dir=Path(tmp) / "state", token="bench", write_runtime_file=False,
                                 executor="ray", ray_address=head.address,
                                 ray_workdir=args.ray_workdir)  # fmt: skip
            thread = ServerThread(opts)
            info = thread.start()
            try:
                api = Api(grpc.insecure_channel(info.endpoint), info.token)
                client = JobSubmissionClient(head.address)
                itype = [jobs_pb2.CloudInstanceType(name="c1.4")]

                done = [0]

                def ours() -> None:
                    job, _ = api.run(api.create(TRIVIAL, cloud_instance_types=itype), timeout=300)
                    assert job.status == jobs_pb2.SUCCESS, job.status_details
                    done[0] += 1
                    if done[0] % 10 == 0:
                        print(f"  {done[0]} of ours done", file=sys.stderr, flush=True)

                def floor() -> None:
                    ray_wait(client, client.submit_job(entrypoint=TRIVIAL, entrypoint_num_cpus=CPUS))

                a, b, r = paired(ours, floor, args.jobs)
                what = f"trivial job, {args.jobs} each, --ray-workdir {args.ray_workdir}"
                row(f"{what} (ours vs JobSubmissionClient)", a, b, ratio=r)
                mine, theirs = our_log_lags(api), ray_log_lags(client)
                row(
                    "log latency, print -> client (median)",
                    statistics.median(mine),
                    statistics.median(theirs),
                )
            finally:
                thread.stop()
    finally:
        head.stop()


if __name__ == "__main__":
    main()
