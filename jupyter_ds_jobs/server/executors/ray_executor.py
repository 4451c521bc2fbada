"""Run job commands as Ray jobs: ``--executor ray --ray-address http://HEAD:8265``.

The service, its SQLite state, blobs and signed URLs stay on the job server; Ray only runs the
job's process. Each job is a Ray job (``JobSubmissionClient.submit_job``) whose entrypoint is the
self-contained wrapper ``_ray_wrapper.py`` with the job's signed channel URL (``ray_channel``):
the wrapper fetches the command's spec, runs it, posts stdout and stderr with their offsets as
they are written, relays signals and reports the exit code.

Resources: the job's instance type (the server's profiles, ``server/resources.py``) becomes
``entrypoint_num_cpus``, ``entrypoint_num_gpus``, ``entrypoint_memory`` and
``entrypoint_resources``; cpus and memory are clamped to what the cluster has, GPUs and custom
resources are not (a type the cluster cannot hold is refused). Ray cannot stop a
PENDING job, so a job is submitted only when the cluster reports room for it (its usage beside
what this executor has submitted and not seen end).

Files (``workdir_mode``, docs/ray.md): ``shared`` runs the job in the server's job dir, which the
node sees at the same path; ``node`` gives it a private dir on the node: its files, the sandbox
wrapper and the wrapper itself stream over the channel, its Python environment is built on the
node, its outputs stream back; ``auto`` (default) leaves a marker file in the job dir and the
wrapper takes ``shared`` where it finds it. A Ray job that ends without the wrapper reporting an
exit code (a lost node, a killed wrapper) raises :class:`Aborted`: the job ends in ERROR saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import stat
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jupyter_ds_jobs.common.errors import Aborted, FailedPrecondition, ResourceExhausted, Unavailable
from jupyter_ds_jobs.server.environments import EnvSpec
from jupyter_ds_jobs.server.executors.base import PROGRESS_FILE, OutputSink
from jupyter_ds_jobs.server.executors.local import SHELL, direct_argv
from jupyter_ds_jobs.server.executors.ray_channel import Channel, RayChannels
from jupyter_ds_jobs.server.resources import GIB, Profile, default_profiles, gib
from jupyter_ds_jobs.server.sandbox import APPLY_SCRIPT, JobSandbox, Sandbox
from jupyter_ds_jobs.server.uv import find_uv
from jupyter_ds_jobs.server.validation import placed

__all__ = ["RayExecutor", "RayProcess", "job_instance_type"]

WRAPPER = str(Path(__file__).with_name("_ray_wrapper.py"))
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_POLL_S = 0.5
_USAGE_LAG_S = 15.0  # how long the dashboard's usage may still count a job that ended
_KEYS = ("CPU", "GPU", "memory")  # what _held counts, as the dashboard names them
MARKER = ".ds-ray-shared"
WORKDIR_MODES = ("auto", "shared", "node")


def _resources(profile: Profile | None, totals: Mapping[str, float]) -> tuple[float, int, int]:
    """(cpus, gpus, memory bytes) for a job of ``profile`` on a cluster with ``totals``."""
    if profile is None:
        return min(1.0, totals.get("CPU", 1.0)), 0, 0
    needs = [("GPU", float(profile.gpus))] if profile.gpus else []
    for key, amount in [*needs, *profile.ray_resources]:
        if amount > totals.get(key, 0):
            raise FailedPrecondition(
                f"instance type {profile.name} needs {amount:g} {key}; the Ray cluster has {totals.get(key, 0):g}"
            )
    mem = min(profile.memory_bytes, int(totals.get("memory", 0)))
    return min(float(profile.cpus), totals.get("CPU", 1.0)), profile.gpus, mem


def _free(
    key: str, usage: Mapping[str, tuple[float, float]], ours: Mapping[str, float], gone: Mapping[str, float]
) -> float:
    """What the cluster has free of ``key``: what we submitted counts even before the dashboard
    reports it, and what we gave back lately no longer counts though it still reports it."""
    used, total = usage.get(key, (0.0, 0.0))
    return total - max(used - gone.get(key, 0.0), ours.get(key, 0.0))


class RayProcess:
    """A started Ray job; ``pid`` is 0 (the process is on a Ray node, not here)."""

    pid = 0

    def __init__(
        self, executor: RayExecutor, sid: str, ch: Channel, job: JobSandbox, held: tuple[float, ...]
    ):
        self.executor, self.sid, self.ch, self.job, self.held = executor, sid, ch, job, held
        self.isolation = f"Ray job {sid}; on the node: {job.description}"
        self._killed = False

    async def wait(self) -> int:
        try:
            return await self._wait()
        finally:
            with contextlib.suppress(OSError):
                (self.ch.workdir / MARKER).unlink(missing_ok=True)
            self.executor.channels.close(self.ch)
            self.executor.release(self.held)
            await asyncio.to_thread(self.job.cleanup)

    async def _wait(self) -> int:
        while True:
            done, _ = await asyncio.wait([self.ch.exit], timeout=1.0)
            if done:
                if self.ch.memory_exceeded:
                    raise ResourceExhausted(
                        f"the job exceeded the memory of its instance type ({gib(self.held[2] / GIB)}) "
                        "and was killed on the Ray node"
                    )
                return self.ch.exit.result()
            info = await asyncio.to_thread(self.executor.client.get_job_info, self.sid)
            status = str(getattr(info.status, "value", info.status))
            if status in _TERMINAL:
                with contextlib.suppress(TimeoutError):  # its exit report may be on its way
                    return await asyncio.wait_for(asyncio.shield(self.ch.exit), 3.0)
                if self._killed:
                    return -int(signal.SIGKILL)
                where = "" if self.ch.fetched else " before its wrapper started"
                raise Aborted(
                    f"the Ray job {self.sid} ended ({status}{': ' + info.message if info.message else ''})"
                    f"{where} without reporting an exit code: the wrapper or its node was lost"
                )

    def signal(self, signum: int) -> None:
        self.ch.send(signum)

    def kill_all(self) -> None:
        self._killed = True
        self.ch.send(int(signal.SIGKILL))
        asyncio.get_running_loop().call_later(3.0, self._stop_ray_job)  # a wrapper that does not answer

    def _stop_ray_job(self) -> None:
        if not self.ch.exit.done():
            fut = asyncio.ensure_future(asyncio.to_thread(self.executor.client.stop_job, self.sid))
            fut.add_done_callback(lambda f: f.exception())


class RayExecutor:
    """Submits each command as a Ray job on the cluster at ``address`` (the Jobs API address or
    ``auto``); ``job_of(job_id)`` is the job (its instance type, outputs and environment)."""

    def __init__(
        self,
        address: str,
        channels: RayChannels,
        job_of: Callable[[str], Any],
        sandbox: Sandbox | None = None,
        python: str = sys.executable,
        *,
        workdir_mode: str = "auto",
        node_python: str = "python3",
        find_links: tuple[str, ...] = (),
        profiles: Mapping[str, Profile] | None = None,
    ) -> None:
        if workdir_mode not in WORKDIR_MODES:
            raise ValueError(f"workdir_mode {workdir_mode!r} is none of {', '.join(WORKDIR_MODES)}")
        self.address = address
        self.channels = channels
        self.job_of = job_of
        self.sandbox = sandbox
        self.python = python
        self.workdir_mode = workdir_mode
        self.node_python = node_python
        self.find_links = find_links
        self.profiles = dict(profiles or {})
        self._client: Any = None
        self._held = [0.0, 0.0, 0.0]  # cpus, gpus, memory submitted and not seen end
        self._released: list[tuple[float, tuple[float, ...]]] = []  # (when, what) given back
        self._room = asyncio.Lock()

    runs_here = False  # Ray places and limits its jobs: they hold none of this machine's resources

    @property
    def builds_environments(self) -> bool:
        """Whether the job's Python environment is built on the node, not by the server."""
        return self.workdir_mode == "node"

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient  # optional: jupyter_ds_jobs[ray]

            self._client = JobSubmissionClient(self.address)
        return self._client

    def cluster(self) -> dict[str, tuple[float, float]]:
        """The cluster's resources as (used, total), from the dashboard's cluster status (which
        camel-cases resource names: ``ds_test`` is reported as ``dsTest``; both are keys here)."""
        url = f"{self.client.get_address()}/api/cluster_status"
        with urllib.request.urlopen(url, timeout=10) as resp:
            usage = json.load(resp)["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
        out = {k: (float(v[0]), float(v[1])) for k, v in usage.items()}
        for name, _ in (r for p in self.profiles.values() for r in p.ray_resources):
            if name not in out and _camel(name) in out:
                out[name] = out[_camel(name)]
        return out

    def release(self, held: tuple[float, ...]) -> None:
        for i, v in enumerate(held):
            self._held[i] -= v
        self._released.append((time.monotonic(), held))

    def _recently_released(self) -> list[float]:
        """What our jobs gave back in the last ``_USAGE_LAG_S``: the dashboard's usage still
        counts it for a few seconds after a job ends (without this, each next job would wait)."""
        now = time.monotonic()
        self._released = [(t, h) for t, h in self._released if now - t < _USAGE_LAG_S]
        return [sum(h[i] for _, h in self._released) for i in range(3)]

    def profile(self, job: Any) -> Profile | None:
        """The job's instance type as this server defines it (its --instance-types-file too; the
        built-in table for a type it no longer accepts)."""
        name = job_instance_type(job) or ""
        return self.profiles.get(name) or default_profiles().get(name)

    async def _wait_for_room(self, profile: Profile | None) -> tuple[float, int, int]:
        """Hold the job's resources once the cluster has room for them."""
        async with self._room:
            while True:
                usage = await asyncio.to_thread(self.cluster)
                want = _resources(profile, {k: t for k, (_, t) in usage.items()})
                need = dict(zip(_KEYS, want, strict=True)) | dict(profile.ray_resources if profile else ())
                ours = dict(zip(_KEYS, self._held, strict=True))
                gone = dict(zip(_KEYS, self._recently_released(), strict=True))
                if all(amount <= _free(key, usage, ours, gone) + 1e-9 for key, amount in need.items()):
                    for i, w in enumerate(want):
                        self._held[i] += w
                    return want
                await asyncio.sleep(_POLL_S)

    async def start(self, cmd: str, cwd: Path, env: Mapping[str, str], sink: OutputSink) -> RayProcess:
        if self.sandbox is None:
            job = JobSandbox(None, dict(env), None, "none")
        else:
            job = await asyncio.to_thread(self.sandbox.prepare, cwd, env)
        try:
            return await self._submit(cmd, cwd, job, sink)
        except BaseException:
            job.cleanup()
            raise

    async def _retry_submit(self, submit: Callable[..., Any], **kwargs: Any) -> None:
        """``submit(**kwargs)``, again while a head that just started has no job agent yet (Ray
        answers 500 "No available agent to submit job, please try again later"), up to a minute;
        then the job ends in ERROR saying the cluster takes no job, and why it may not."""
        for delay in (0.2, 0.5, 1, 2, 4, 8, 15, 30, 0):
            try:
                await asyncio.to_thread(submit, **kwargs)
                return
            except (RuntimeError, OSError) as e:  # the SDK's HTTP errors; an unreachable head
                if "No available agent" not in str(e):
                    raise Unavailable(f"the Ray cluster at {self.address}: {e}") from e
                if not delay:
                    raise FailedPrecondition(
                        f"the Ray cluster at {self.address} takes no job: it has no job agent "
                        f"(Ray: {str(e).strip()}). A head's job agent may fail to start when a "
                        "port it needs is taken (52365 by default: ray start "
                        "--dashboard-agent-listen-port); see the head's dashboard_agent.log"
                    ) from None
            await asyncio.sleep(delay)

    def _spec(self, cmd: str, cwd: Path, job: JobSandbox, gpus: int, job_proto: Any) -> dict[str, Any]:
        """What the wrapper gets over the channel (never on the Ray job's command line)."""
        shared = self.workdir_mode == "shared"
        argv = (direct_argv(cmd, job.env.get("PATH", "")) if shared else None) or [SHELL, "-c", cmd]
        spec: dict[str, Any] = {
            "argv": argv, "cwd": str(cwd), "env": job.env, "gpus": gpus, "policy": job.policy,
            "apply_script": APPLY_SCRIPT, "tmp": str(job.tmp or ""), "progress_file": PROGRESS_FILE,
        }  # fmt: skip
        if shared:
            return spec
        spec["files"] = _manifest(cwd)
        p = job_proto.job_parameters
        spec["outputs"] = [str(placed(d.path, d.var, "outputs")) for d in p.output_files]
        env_spec = EnvSpec.from_proto(p.env.python_env)
        if env_spec.requirements:
            env_spec = dataclasses.replace(env_spec, find_links=self.find_links)
            spec["python_env"] = {
                "python": env_spec.python_version, "requirements": list(env_spec.requirements),
                "options": env_spec.uv_install_args(), "uv": [uv] if (uv := find_uv()) else [],
                "server_venv": job.env.get("VIRTUAL_ENV", ""),
            }  # fmt: skip
        return spec

    def _entrypoint(self, url: str) -> str:
        if self.workdir_mode == "shared":
            return f"{self.python} -I -S {WRAPPER} '{url}'"
        return f"{self.node_python} -I -S -c '{_BOOTSTRAP}' '{url}'"

    async def _submit(self, cmd: str, cwd: Path, job: JobSandbox, sink: OutputSink) -> RayProcess:
        job_proto = self.job_of(cwd.name)
        profile = self.profile(job_proto)
        cpus, gpus, mem = await self._wait_for_room(profile)
        try:
            spec = await asyncio.to_thread(self._spec, cmd, cwd, job, gpus, job_proto)
        except BaseException:
            self.release((cpus, gpus, mem))
            raise
        spec["memory_bytes"] = mem  # the wrapper holds the job to it (Ray only schedules by it)
        ch, url = self.channels.open(spec, sink)
        if self.workdir_mode != "node":  # the wrapper runs in this dir if it finds this there
            spec["marker"], spec["marker_key"] = MARKER, ch.key
            (cwd / MARKER).write_text(ch.key)
        sid = f"dsjobs-{cwd.name}-{ch.key[:8]}"
        try:
            await self._retry_submit(
                self.client.submit_job,
                entrypoint=self._entrypoint(url),
                submission_id=sid,
                entrypoint_num_cpus=cpus,
                entrypoint_num_gpus=gpus,
                entrypoint_memory=mem or None,
                entrypoint_resources=dict(profile.ray_resources)
                if profile and profile.ray_resources
                else None,
            )
        except BaseException:
            self.channels.close(ch)
            self.release((cpus, gpus, mem))
            raise
        return RayProcess(self, sid, ch, job, (cpus, gpus, mem))


#: The entrypoint's program on a node without this package: the wrapper, from the channel.
_BOOTSTRAP = (
    'import sys,urllib.request as r;b,_,q=sys.argv[1].partition("?");'
    'exec(compile(r.urlopen(b+"/wrapper?"+q,timeout=60).read(),"_ray_wrapper.py","exec"))'
)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(p[:1].upper() + p[1:] for p in rest)


def _manifest(cwd: Path) -> list[list[Any]]:
    """The job dir's regular files as [relative path, size, mode] (links are not sent)."""
    out: list[list[Any]] = []
    for dirpath, dirnames, filenames in os.walk(cwd):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and name != MARKER:
                out.append([os.path.relpath(os.path.join(dirpath, name), cwd), st.st_size, st.st_mode])
    return out


def job_instance_type(job: Any) -> str | None:
    """The instance type a job runs as: the one the server chose, else the first it asked for."""
    if job.HasField("actual_cloud_instance_type") and job.actual_cloud_instance_type.name:
        return str(job.actual_cloud_instance_type.name)
    types = job.job_parameters.cloud_instance_types
    return str(types[0].name) if types else None
