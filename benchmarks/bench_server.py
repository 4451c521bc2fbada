#!/usr/bin/env python3
"""Job service benchmarks, each beside its floor in the same run.

1. A trivial job, Create -> done (ReadLogs stream end, then the operation), beside a
   plain ``subprocess.run`` of the same command.
2. Upload (signed HTTP PUT) and download (GET) of a large file beside ``cp``, with the
   peak RSS of the server process and of this client (must stay under 200 MB).

    python benchmarks/bench_server.py [--size-mb 1024] [--runs 10]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import paired, peak_rss_mb, row, self_peak_rss_mb, start_server
from jupyter_ds_jobs._proto import jobs_pb2, ops_grpc, ops_pb2, pjs_grpc, pjs_pb2

CHUNK = 1 << 20


def stream_put(url: str, path: Path) -> int:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.netloc, timeout=600)
    size = path.stat().st_size
    with open(path, "rb") as f:
        conn.putrequest("PUT", f"{u.path}?{u.query}")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        while chunk := f.read(CHUNK):
            conn.send(chunk)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def stream_get(url: str, dest: Path) -> None:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.netloc, timeout=600)
    conn.request("GET", f"{u.path}?{u.query}")
    resp = conn.getresponse()
    with open(dest, "wb") as f:
        while chunk := resp.read(CHUNK):
            f.write(chunk)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    proc, info = start_server(tmp / "state")
    try:
        ch = grpc.insecure_channel(info["endpoint"])
        jobs = pjs_grpc.ProjectJobServiceStub(ch)
        ops = ops_grpc.OperationServiceStub(ch)
        md = [("authorization", "Bearer bench")]
        cmd = "echo hello"

        def job() -> None:
            op = jobs.Create(
                pjs_pb2.CreateProjectJobRequest(
                    project_id="bench", job_parameters=jobs_pb2.JobParameters(cmd=cmd)
                ),
                metadata=md,
            )
            r = pjs_pb2.CreateProjectJobResponse()
            op.response.Unpack(r)
            op = jobs.Execute(pjs_pb2.ExecuteProjectJobRequest(job_id=r.job_id), metadata=md)
            for _ in jobs.ReadLogs(pjs_pb2.ReadProjectJobLogsRequest(job_id=r.job_id), metadata=md):
                pass
            while not op.done:
                op = ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=md)
            assert not op.HasField("error"), op.error

        ours, floor, ratio = paired(
            job, lambda: subprocess.run(cmd, shell=True, capture_output=True, check=True), a.runs
        )
        print(f"trivial job, median of {a.runs} (alternating; ratio = median of pairwise ratios)")
        row("  create -> done vs subprocess.run", ours, floor, ratio=ratio)

        big = tmp / "big.bin"
        with open(big, "wb") as f:
            block = os.urandom(CHUNK)
            for i in range(a.size_mb):
                f.write(hashlib.sha256(block + i.to_bytes(4, "little")).digest() * (CHUNK // 32))
        digest = sha256(big)
        size = big.stat().st_size
        params = jobs_pb2.JobParameters(cmd="cp big.bin ${OUT}")
        params.input_files.add(
            desc=jobs_pb2.FileDesc(path="big.bin"),
            sha256=digest,
            size_bytes=size,
            compression_type=jobs_pb2.NONE,
        )
        params.output_files.add(path="copy.bin", var="OUT")
        op = jobs.Create(
            pjs_pb2.CreateProjectJobRequest(project_id="bench", job_parameters=params), metadata=md
        )
        r = pjs_pb2.CreateProjectJobResponse()
        op.response.Unpack(r)
        t0 = time.perf_counter()
        assert stream_put(r.upload_files[0].url, big) == 201
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        shutil.copyfile(big, tmp / "cp1.bin")
        cp_up = time.perf_counter() - t0
        (tmp / "cp1.bin").unlink()
        op = jobs.Execute(pjs_pb2.ExecuteProjectJobRequest(job_id=r.job_id), metadata=md)
        while not op.done:
            time.sleep(0.05)
            op = ops.Get(ops_pb2.GetOperationRequest(operation_id=op.id), metadata=md)
        er = pjs_pb2.ExecuteProjectJobResponse()
        op.response.Unpack(er)
        t0 = time.perf_counter()
        stream_get(er.output_files[0].url, tmp / "down.bin")
        down = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["cp", str(big), str(tmp / "cp2.bin")], check=True)
        cp_down = time.perf_counter() - t0
        assert sha256(tmp / "down.bin") == digest
        print(f"{a.size_mb} MiB file")
        row("  upload (HTTP PUT, sha256 checked) vs cp", up, cp_up, "s", 1)
        row("  download (HTTP GET) vs cp", down, cp_down, "s", 1)
        server_rss, client_rss = peak_rss_mb(proc.pid), self_peak_rss_mb()
        print(f"  peak RSS: server {server_rss:.0f} MB, client {client_rss:.0f} MB (limit 200 MB each)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
