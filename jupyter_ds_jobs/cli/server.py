"""``jupyter ds-jobs server``: run the local job server in the foreground; ``server status`` and
``server stop`` manage a running one (found by its connection file)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jupyter_ds_jobs.cli.console import parse_size, table
from jupyter_ds_jobs.common.errors import DsJobsError, FailedPrecondition, InvalidArgument

__all__ = ["cmd_server", "cmd_server_status", "cmd_server_stop"]


def _state_dir(given: Path | None) -> Path:
    """The state dir to serve, created here so that a bad one is one line naming it."""
    from jupyter_ds_jobs.common.connection import default_state_dir

    sd = (given or default_state_dir()).expanduser()
    try:
        sd.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FailedPrecondition(f"cannot create the state dir {sd}: {e.strerror or e}") from None
    return sd


def cmd_server(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.common.contract import INSTANCE_TYPES
    from jupyter_ds_jobs.server.app import ServerOptions, run_server
    from jupyter_ds_jobs.server.sandbox import Isolation

    if args.max_concurrent_jobs < 1:
        raise InvalidArgument("--max-concurrent-jobs must be at least 1")
    isolation = args.isolation or os.environ.get("DS_JOBS_ISOLATION") or "auto"
    if isolation not in {m.value for m in Isolation}:
        raise InvalidArgument(
            f"DS_JOBS_ISOLATION={isolation!r}: use one of {', '.join(m.value for m in Isolation)}"
        )
    types = (
        tuple(t.strip() for t in args.instance_types.split(",") if t.strip()) if args.instance_types else None
    )
    opts = ServerOptions(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        state_dir=_state_dir(args.state_dir),
        token=args.token or os.environ.get("DS_JOBS_TOKEN") or None,
        max_concurrent_jobs=args.max_concurrent_jobs,
        default_ttl_days=args.data_ttl_days or None,
        instance_types=types or tuple(INSTANCE_TYPES),
        env_cache_cap_bytes=parse_size(args.env_cache_size) if args.env_cache_size else None,
        find_links=tuple(args.find_links),
        warm_start=args.warm_start,
        isolation=Isolation(isolation),
        run_as=args.run_as,
        sandbox_read=tuple(args.sandbox_read),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        instance_types_file=args.instance_types_file,
        cpus=args.cpus,
        memory_gib=args.memory_gib,
        gpus=args.gpus,
        strict_resources=args.strict_resources,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_workdir=args.ray_workdir,
        ray_python=args.ray_python,
    )
    return run_server(opts)


def _server_state_dir(args: argparse.Namespace) -> Path | None:
    sd: Path | None = getattr(args, "status_state_dir", None) or getattr(args, "state_dir", None)
    return sd


def cmd_server_status(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.common.contract import status_name
    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.core.embedded import find_server

    info = find_server(_server_state_dir(args))
    if info is None:
        print("no local job server is running", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    with JobsClient(
        info.endpoint, info.token, tls=info.tls, ca_file=info.ca_file or None, project_id=""
    ) as client:
        for job in client.list_jobs(project_id="", limit=10_000):
            counts[status_name(job.status)] = counts.get(status_name(job.status), 0) + 1
    data = {
        "endpoint": info.endpoint,
        "http_url": info.http_url,
        "pid": info.pid,
        "state_dir": info.state_dir,
        "version": info.version,
        "isolation": info.isolation or "unknown (a server before isolation)",
        "tls": "yes" + (f" (CA {info.ca_file})" if info.ca_file else "") if info.tls else "no",
        "jobs": counts,
    }
    if args.format == "json":
        print(json.dumps(data, indent=1))
        return 0
    rows = [[k, str(v)] for k, v in data.items() if k != "jobs"]
    rows.append(["jobs", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"])
    print(table(rows, ["SERVER", ""]))
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.core.embedded import find_server, stop_server

    info = find_server(_server_state_dir(args))
    if info is None:
        print("no local job server is running", file=sys.stderr)
        return 0
    if not stop_server(info, timeout=args.timeout):
        raise DsJobsError(f"the job server (pid {info.pid}) did not stop within {args.timeout:g}s")
    print(f"stopped the job server (pid {info.pid})", file=sys.stderr)
    return 0


def cmd_auth_status(args: argparse.Namespace) -> int:
    """Which source signs in to DataSphere and when its token is renewed (never the token)."""
    from jupyter_ds_jobs.core.config import Settings
    from jupyter_ds_jobs.core.connecting import credentials_from

    creds = credentials_from(Settings.load(), yc_profile=args.yc_profile, auth=args.auth)
    print(creds.status().line())
    return 0
