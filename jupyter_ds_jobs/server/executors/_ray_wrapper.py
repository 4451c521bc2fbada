"""The job wrapper a Ray job runs (its entrypoint): stdlib only, one file, no package imports.

``python -I -S _ray_wrapper.py URL`` where URL is the job's signed channel on the job server
(``/ray/<key>``, see ``executors/ray_executor.py``). It fetches the job's spec (argv, working
dir, environment, GPUs), starts the command in its own session, posts stdout and stderr
separately as they are written with their byte offsets (a retried post is never doubled),
long-polls the server for signals to send to the job's process group (graceful and hard
cancel), and posts the exit code (-N for signal N) once both streams are drained.

A CPU job gets ``CUDA_VISIBLE_DEVICES=""`` (Ray leaves it unset, so every GPU would show); a GPU
job gets the devices Ray assigned to this entrypoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

READ_CHUNK = 64 * 1024
RETRIES = 5


def call(url: str, path: tuple[str, str], data: bytes | None = None, timeout: float = 30.0) -> Any:
    base, _, query = url.partition("?")
    req = urllib.request.Request(
        f"{base}/{path[0]}?{query}{path[1]}", data=data, method="POST" if data is not None else "GET"
    )
    for attempt in range(RETRIES):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError:
            raise
        except OSError:
            if attempt == RETRIES - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    return {}


def pump(url: str, fd: int, source: int) -> None:
    offset = 0
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            return
        offset = call(url, ("out", f"&source={source}&offset={offset}"), chunk)["offset"]


def relay_signals(url: str, pgid: int, done: threading.Event) -> None:
    while not done.is_set():
        try:
            sigs = call(url, ("signal", ""), timeout=60)["signals"]
        except (OSError, ValueError):
            time.sleep(0.5)
            continue
        for s in sigs:
            with contextlib.suppress(OSError):
                os.killpg(pgid, s)


def main(url: str) -> int:
    spec = call(url, ("spec", ""))
    env = dict(spec["env"])
    env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "") if spec["gpus"] else ""
    proc = subprocess.Popen(
        spec["argv"], cwd=spec["cwd"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip

    def stop(
        signum: int, frame: object
    ) -> None:  # Ray stops the job (``ray job stop``, a hard cancel): so does its command
        os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    done = threading.Event()
    threading.Thread(target=relay_signals, args=(url, proc.pid, done), daemon=True).start()
    pumps = [
        threading.Thread(target=pump, args=(url, f.fileno(), n))
        for n, f in ((1, proc.stdout), (2, proc.stderr))
        if f is not None
    ]
    for t in pumps:
        t.start()
    code = proc.wait()
    with contextlib.suppress(
        OSError
    ):  # the job is over: what it left in its group ends (they may hold the pipes)
        os.killpg(proc.pid, signal.SIGKILL)
    for t in pumps:
        t.join(10)
    done.set()
    call(url, ("exit", f"&code={code}"), b"")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
