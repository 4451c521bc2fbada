"""The job wrapper a Ray job runs (its entrypoint): stdlib only, one file, no package imports.

``python -I -S _ray_wrapper.py URL`` where URL is the job's signed channel on the job server
(``/ray/<key>``, see ``executors/ray_channel.py``); a node without this package gets the file from
the channel itself (the executor's bootstrap entrypoint). It fetches the job's spec (argv,
working dir, environment, GPUs, sandbox policy), starts the command in its own session, posts
stdout and stderr separately as they are written with their byte offsets (a retried post is
never doubled), long-polls the server for signals to send to the job's process group (graceful
and hard cancel), and posts the exit code (-N for signal N) once both streams are drained.

Where the job runs:

* **shared**: the server's working dir is on this node (the same machine, or a shared filesystem
  at the same path: the server left a marker file there naming this run's key): the job runs in
  it, in the server's environment.
* **node** (the marker is not there, or the server asks for it): the job gets a private dir on
  this node; its files come over the channel, streamed; its Python environment is built here
  with uv (``uv venv`` + ``uv pip install``, the server's requirements and options, cached under
  ``$DS_JOBS_RAY_ENV_DIR`` or ``~/.cache/jupyter_ds_jobs/ray-envs`` by the same kind of key); its
  progress file is posted as it grows; when it ends its declared outputs (regular files; links
  are never followed) are streamed back, and the dir is removed.

A job whose resident memory (its process group's, from /proc) passes its instance type's is
killed, and the exit report says so (Ray's ``entrypoint_memory`` only schedules). A CPU job gets
``CUDA_VISIBLE_DEVICES=""`` (Ray leaves it unset, so every GPU would show); a GPU
job gets the devices Ray assigned to this entrypoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import marshal
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

READ_CHUNK = 64 * 1024
FILE_CHUNK = 1 << 20
RETRIES = 5
PROGRESS_SOURCE = 3
ENV_FORMAT = 1


def retrying(fn: Any) -> Any:
    """``fn()``, again after a network error (not after an HTTP answer), backing off."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except urllib.error.HTTPError:
            raise
        except OSError:
            if attempt == RETRIES - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    return None


def action_url(url: str, action: str, extra: str = "") -> str:
    """The channel's ``action`` (``spec``, ``out``, ``file``, ...), signed, with ``extra`` query."""
    base, _, query = url.partition("?")
    return f"{base}/{action}?{query}{extra}"


def call(url: str, path: tuple[str, str], data: bytes | None = None, timeout: float = 30.0) -> Any:
    req = urllib.request.Request(
        action_url(url, *path), data=data, method="POST" if data is not None else "GET"
    )

    def once() -> Any:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")

    return retrying(once)


OFFSETS = {1: 0, 2: 0}  # what the server has of stdout and stderr


def post(url: str, source: int, data: bytes) -> None:
    OFFSETS[source] = call(url, ("out", f"&source={source}&offset={OFFSETS[source]}"), data)["offset"]


def pump(url: str, fd: int, source: int) -> None:
    while chunk := os.read(fd, READ_CHUNK):
        post(url, source, chunk)


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


def file_url(url: str, rel: str) -> str:
    return action_url(url, "file", f"&path={urllib.parse.quote(rel)}")


def fetch_files(url: str, files: list[list[Any]], root: str) -> None:
    """The job's prepared files, streamed from the server into ``root``."""
    for rel, size, mode in files:
        dest = os.path.join(root, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)

        def fetch(rel: str = rel, dest: str = dest) -> None:
            with urllib.request.urlopen(file_url(url, rel), timeout=60) as resp, open(dest, "wb") as f:
                shutil.copyfileobj(resp, f, FILE_CHUNK)

        retrying(fetch)
        if os.path.getsize(dest) != size:
            raise OSError(f"{rel}: got {os.path.getsize(dest)} bytes of {size}")
        os.chmod(dest, mode & 0o777)


def put_file(url: str, rel: str, path: str) -> None:
    def once() -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            req = urllib.request.Request(
                file_url(url, rel), data=f, method="PUT", headers={"Content-Length": str(size)}
            )
            urllib.request.urlopen(req, timeout=300).close()

    try:
        retrying(once)
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: there already (an earlier try that did arrive)
            raise


def upload_outputs(url: str, root: str, outputs: list[str]) -> None:
    """The declared outputs the job left: regular files, and the regular files under a dir;
    links are never followed (nothing from outside the job's dir goes back)."""
    for rel in outputs:
        top = os.path.join(root, rel)
        if os.path.islink(top):
            continue
        if os.path.isfile(top):
            put_file(url, rel, top)
        elif os.path.isdir(top):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if not os.path.islink(path) and os.path.isfile(path):
                        put_file(url, os.path.relpath(path, root), path)


def follow_progress(url: str, path: str, done: threading.Event) -> None:
    """Post what the job appends to its progress file, until ``done`` (then once more)."""
    offset = 0
    while True:
        stop = done.wait(0.25)
        with contextlib.suppress(OSError, ValueError, KeyError):
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(READ_CHUNK)
            if chunk:
                call(url, ("out", f"&source={PROGRESS_SOURCE}&offset={offset}"), chunk)
                offset += len(chunk)
                continue
        if stop:
            return


PAGE = os.sysconf("SC_PAGE_SIZE")


def group_rss(pgid: int) -> int:
    """The resident memory of the processes in group ``pgid`` (from /proc), in bytes."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp, ...
                total += int(fields[21]) * PAGE  # rss, in pages
    return total


def watch_memory(pgid: int, limit: int, done: threading.Event, over: threading.Event) -> None:
    """Kill the job's group once its resident memory passes ``limit`` (Ray only schedules by it)."""
    while not done.wait(0.25):
        if group_rss(pgid) > limit:
            over.set()
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
            return


def find_uv(candidates: list[str]) -> str:
    for c in [*candidates, shutil.which("uv") or "", os.path.join(sys.prefix, "bin", "uv")]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise OSError("uv is not on this Ray node: install it (pip install uv) where the node's PATH finds it")


def node_environment(penv: dict[str, Any], emit: Any) -> str:
    """The job's venv on this node (built once per key, under a lock; ``uv venv --relocatable``
    in a temp dir renamed into place): its path."""
    python = penv["python"] or shutil.which("python3") or sys.executable
    payload = json.dumps([ENV_FORMAT, python, penv["requirements"], penv["options"]])
    key = hashlib.sha256(payload.encode()).hexdigest()[:32]
    cache = os.environ.get("DS_JOBS_RAY_ENV_DIR") or os.path.expanduser("~/.cache/jupyter_ds_jobs/ray-envs")
    os.makedirs(cache, exist_ok=True)
    venv = os.path.join(cache, key)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(venv, ".ds-ready")):
            return venv
        uv = find_uv(penv["uv"])
        tmp = tempfile.mkdtemp(prefix=f"{key}.", dir=cache)
        emit(f"building the job's Python environment on this node: {' '.join(penv['requirements'])}")
        steps = [
            [uv, "venv", "--relocatable", "--no-project", "--quiet", "--allow-existing", "--python", python, tmp],
            [uv, "pip", "install", "--python", os.path.join(tmp, "bin", "python"), *penv["options"],
             *penv["requirements"]],
        ]  # fmt: skip
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
            if done.returncode:
                shutil.rmtree(tmp, ignore_errors=True)
                raise OSError(f"{' '.join(step[1:3])} failed (exit {done.returncode}): {done.stderr[-3000:]}")
        open(os.path.join(tmp, ".ds-ready"), "w").close()
        os.rename(tmp, venv)
    return venv


def rewrite(value: Any, moves: dict[str, str]) -> Any:
    """``value`` (a string, or lists / dicts of them) with each server path moved to this node's."""
    if isinstance(value, str):
        for old, new in moves.items():
            if old:
                value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [rewrite(v, moves) for v in value]
    if isinstance(value, dict):
        return {k: rewrite(v, moves) for k, v in value.items()}
    return value


def on_node(url: str, spec: dict[str, Any], emit: Any) -> tuple[dict[str, Any], str]:
    """Move the job to a private dir on this node: (the spec as it runs here, that dir)."""
    root = tempfile.mkdtemp(prefix="dsjob-")
    work, tmp = os.path.join(root, "work"), os.path.join(root, "tmp")
    os.mkdir(work, 0o700)
    os.mkdir(tmp, 0o700)
    fetch_files(url, spec["files"], work)
    for rel in spec["outputs"]:  # their dirs are there, as on the server
        os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
    moves = {spec["cwd"]: work, spec.get("tmp") or "": tmp}
    env = dict(spec["env"])
    if spec.get("python_env"):
        venv = node_environment(spec["python_env"], emit)
        if spec["python_env"]["server_venv"]:
            moves[spec["python_env"]["server_venv"]] = venv
        else:
            env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
            env["VIRTUAL_ENV"] = venv
    env.setdefault("TMPDIR", tmp)
    spec = {**spec, "env": rewrite(env, moves), "argv": rewrite(spec["argv"], moves), "cwd": work}
    if spec.get("policy"):
        policy = rewrite(spec["policy"], moves)
        policy["rw"] = [work, tmp]
        extra = {sys.prefix, sys.base_prefix, os.path.realpath(os.path.dirname(sys.executable))}
        venv_dir = spec["env"].get("VIRTUAL_ENV")
        if venv_dir:
            extra.add(venv_dir)
            with contextlib.suppress(OSError), open(os.path.join(venv_dir, "pyvenv.cfg")) as cfg:
                for line in cfg:
                    if line.startswith("home"):
                        extra.add(os.path.dirname(line.partition("=")[2].strip()))
        policy["ro"] = sorted({*policy["ro"], *extra} - {""})
        apply = os.path.join(root, "apply.py")
        with urllib.request.urlopen(action_url(url, "apply"), timeout=60) as r, open(apply, "wb") as f:
            shutil.copyfileobj(r, f)
        spec["policy"], spec["apply_script"] = policy, apply
    return spec, root


def main(url: str) -> int:
    spec = call(url, ("spec", ""))
    root = None
    marker = os.path.join(spec["cwd"], spec["marker"]) if spec.get("marker") else ""
    try:
        with open(marker) as f:
            shared = f.read() == spec["marker_key"]
        os.unlink(marker)
    except OSError:
        shared = False

    def emit(text: str) -> None:  # the wrapper's own words, on the job's stderr
        post(url, 2, f"ds-jobs ray: {text}\n".encode())

    if not shared:
        try:
            spec, root = on_node(url, spec, emit)
        except (OSError, ValueError, KeyError) as e:
            emit(f"preparing the job on this node failed: {e}")
            call(url, ("exit", "&code=125"), b"")
            return 0
    over = threading.Event()
    try:
        code = run(url, spec, not shared, over)
        if root is not None and code >= 0:
            upload_outputs(url, spec["cwd"], spec["outputs"])
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    call(url, ("exit", f"&code={code}" + ("&memory=1" if over.is_set() else "")), b"")
    return 0


def run(url: str, spec: dict[str, Any], node: bool, over: threading.Event) -> int:
    """Run the job's command; its exit code once its output is posted."""
    env = dict(spec["env"])
    env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "") if spec["gpus"] else ""
    argv = spec["argv"]
    if spec.get("policy") is not None:
        argv = [sys.executable, "-I", "-S", spec["apply_script"], marshal.dumps(spec["policy"]).hex(), *argv]
    proc = subprocess.Popen(
        argv, cwd=spec["cwd"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip

    def stop(
        signum: int, frame: object
    ) -> None:  # Ray stops the job (``ray job stop``, a hard cancel): so does its command
        os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    done = threading.Event()
    threading.Thread(target=relay_signals, args=(url, proc.pid, done), daemon=True).start()
    if spec.get("memory_bytes"):
        args = (proc.pid, spec["memory_bytes"], done, over)
        threading.Thread(target=watch_memory, args=args, daemon=True).start()
    pumps = [
        threading.Thread(target=pump, args=(url, f.fileno(), n))
        for n, f in ((1, proc.stdout), (2, proc.stderr))
        if f is not None
    ]
    if node:
        progress = os.path.join(spec["cwd"], spec["progress_file"])
        pumps.append(threading.Thread(target=follow_progress, args=(url, progress, done)))
    for t in pumps:
        t.start()
    code = proc.wait()
    with contextlib.suppress(
        OSError
    ):  # the job is over: what it left in its group ends (they may hold the pipes)
        os.killpg(proc.pid, signal.SIGKILL)
    done.set()
    for t in pumps:
        t.join(10)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
