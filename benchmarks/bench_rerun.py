"""Benchmark: re-running a job whose big input is unchanged.

Runs the same job twice against a real local server (own state dir, own client cache):

* first run: the input is hashed and uploaded;
* re-run: the input is unchanged, so its sha256 comes from the client's hash cache (path, size,
  mtime) and the server already holds the blob: **bytes uploaded should be 0** and the time
  before the job starts should be a small fraction of the first run's.

"Time before the job starts" is from reading the config to the Execute call returning (hash,
zip, Create, upload, Execute). The hash cache is reloaded from disk before the re-run, as a new
process would.

Run: ``.venv/bin/python benchmarks/bench_rerun.py [--size 1G]`` (or ``DS_JOBS_BENCH_SIZE=64M``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jupyter_ds_jobs.cli import human_bytes, parse_size  # noqa: E402


def make_input(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    t = time.time() - 3600  # an input that has been lying around (the hash cache skips fresh files)
    os.utime(path, (t, t))


def run_once(client: object, config: Path) -> dict[str, float]:
    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.packaging.jobspec import load_config

    assert isinstance(client, JobsClient)
    t0 = time.perf_counter()
    spec = load_config(config)
    job_id = client.create_from_spec(spec)
    op = client.execute(job_id)
    started = time.perf_counter() - t0
    stats = client.last_create
    assert stats is not None
    result = client.wait(job_id, op)
    total = time.perf_counter() - t0
    assert result.ok, (result.status, result.job.status_details)
    return {
        "before_start": started,
        "hash_zip": stats.prepare_seconds,
        "upload": stats.upload_seconds,
        "bytes_uploaded": float(stats.bytes_uploaded),
        "files_uploaded": float(stats.files_uploaded),
        "total": total,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size", default=os.environ.get("DS_JOBS_BENCH_SIZE", "1G"), help="input size (1G, 64M...)"
    )
    ap.add_argument("--dir", default=None, help="where to put the temp files (default: system temp)")
    args = ap.parse_args()
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory(prefix="bench-rerun-", dir=args.dir) as d:
        tmp = Path(d)
        os.environ["DS_JOBS_CACHE_DIR"] = str(tmp / "client-cache")
        from jupyter_ds_jobs.core import transfer
        from jupyter_ds_jobs.core.client import JobsClient
        from jupyter_ds_jobs.server.app import ServerOptions, ServerThread

        job = tmp / "job"
        job.mkdir()
        make_input(job / "big.bin", size)
        (job / "main.py").write_text("import os, sys\nprint('input bytes:', os.path.getsize(sys.argv[1]))\n")
        (job / "config.yaml").write_text(
            "cmd: python main.py ${DATA}\ninputs:\n  - main.py\n  - big.bin: DATA\n"
        )

        opts = ServerOptions(state_dir=tmp / "state", write_runtime_file=False, sweep_interval=3600)
        with ServerThread(opts) as info, JobsClient(info.endpoint, info.token) as client:
            first = run_once(client, job / "config.yaml")
            transfer._hash_caches.clear()  # as a new process: the hash cache is read back from disk
            again = run_once(client, job / "config.yaml")

    print(f"bench_rerun: input {human_bytes(size)} ({size} bytes)")
    print(f"{'':28}{'first run':>14}{'re-run':>14}{'ratio':>10}")
    for key, label in (
        ("bytes_uploaded", "bytes uploaded"),
        ("files_uploaded", "files uploaded"),
        ("hash_zip", "hash + zip (s)"),
        ("upload", "upload (s)"),
        ("before_start", "time before job starts (s)"),
        ("total", "total incl. job (s)"),
    ):
        a, b = first[key], again[key]
        ratio = f"{b / a:10.4f}" if a else f"{'-':>10}"
        fmt = "{:14.0f}" if key.endswith("uploaded") else "{:14.4f}"
        print(f"{label:28}{fmt.format(a)}{fmt.format(b)}{ratio}")
    ok = again["bytes_uploaded"] == 0
    print(f"target: re-run uploads 0 bytes -> {'met' if ok else 'NOT met'}; "
          f"re-run starts {first['before_start'] / max(again['before_start'], 1e-9):.0f}x sooner")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
