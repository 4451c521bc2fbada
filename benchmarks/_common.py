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


def median_time(fn: Callable[[], object], n: int, warmup: int = 0) -> tuple[float, list[float]]:
    """(median seconds, every run) of ``n`` calls after ``warmup`` uncounted ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def paired(
    ours: Callable[[], object], floor: Callable[[], object], runs: int, warmup: int = 1
) -> tuple[float, float, float]:
    """Run ``ours`` and ``floor`` alternately, so drift hits both alike:
    (median ours, median floor, median of the pairwise ratios)."""
    for _ in range(warmup):
        ours()
        floor()
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        for fn, out in ((ours, a), (floor, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return (
        statistics.median(a),
        statistics.median(b),
        statistics.median(x / y for x, y in zip(a, b, strict=True)),
    )


def row(
    name: str, ours: float, floor: float, unit: str = "ms", scale: float = 1000.0, ratio: float | None = None
) -> None:
    r = ours / floor if ratio is None else ratio
    print(f"{name:<48} ours {ours * scale:9.1f} {unit}   floor {floor * scale:9.1f} {unit}   ratio {r:6.2f}x")
