"""Helpers shared by the benchmarks: start a server process, time things, print ratios."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def start_server(state: Path, *extra: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    conn = state / "ds-jobs-server.json"
    conn.unlink(missing_ok=True)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_ds_jobs",
            "server",
            "--state-dir",
            str(state),
            "--token",
            "bench",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not conn.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("server did not start")
        time.sleep(0.05)
    return proc, json.loads(conn.read_text())


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def self_peak_rss_mb() -> float:
    return peak_rss_mb(os.getpid())


def median_time(fn: Callable[[], object], n: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def row(name: str, ours: float, floor: float, unit: str = "ms", scale: float = 1000.0) -> None:
    print(
        f"{name:<48} ours {ours * scale:9.1f} {unit}   floor {floor * scale:9.1f} {unit}   ratio {ours / floor:6.2f}x"
    )
