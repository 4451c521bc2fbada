"""`jupyter ds-jobs` (also `ds-jobs`): the command line.

Each command is a ``cmd_<name>(args) -> int`` registered in :func:`build_parser`.
User errors print one line (``error: ...``) and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.core.errors import DsJobsError

__all__ = ["build_parser", "main"]


def _add_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "server",
        help="run the local job server (foreground), or manage it",
        description="Run the local ProjectJobService in the foreground. It binds to 127.0.0.1 by default, "
        "requires a bearer token (generated unless --token is given) and writes a connection file "
        "ds-jobs-server.json (mode 0600) into the state dir and the Jupyter runtime dir.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="gRPC port; 0 picks a free one (default: 0)")
    p.add_argument("--http-port", type=int, default=0, help="HTTP port for job files; 0 picks a free one")
    p.add_argument("--state-dir", type=Path, default=None, help="where jobs, files and environments are kept")
    p.add_argument("--token", default=None, help="bearer token clients must send (default: generated)")
    p.add_argument(
        "--max-concurrent-jobs", type=int, default=2, help="jobs run at once; the rest wait (default: 2)"
    )
    p.add_argument(
        "--data-ttl-days", type=float, default=14.0, help="default lifetime of job data in days (default: 14)"
    )
    p.add_argument(
        "--env-cache-size",
        default=None,
        help="size cap of the Python environment cache, e.g. 20G (least recently used are removed)",
    )
    p.add_argument(
        "--find-links",
        action="append",
        default=[],
        help="extra local wheel dir for job environments (repeatable)",
    )
    p.add_argument(
        "--instance-types",
        default=None,
        help="comma-separated instance types this server accepts (default: c1.4, c1.8, c1.32, g1.1, g2.1, ...)",
    )
    p.set_defaults(func=cmd_server)


def parse_size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise DsJobsError(f"bad size {text!r}: use a number with K, M, G or T") from None


def cmd_server(args: argparse.Namespace) -> int:
    from jupyter_ds_jobs.core.connection import default_state_dir
    from jupyter_ds_jobs.server.app import ServerOptions, run_server
    from jupyter_ds_jobs.server.validation import DEFAULT_INSTANCE_TYPES

    if args.max_concurrent_jobs < 1:
        raise DsJobsError("--max-concurrent-jobs must be at least 1")
    types = (
        tuple(t.strip() for t in args.instance_types.split(",") if t.strip()) if args.instance_types else None
    )
    opts = ServerOptions(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        state_dir=args.state_dir or default_state_dir(),
        token=args.token or os.environ.get("DS_JOBS_TOKEN") or None,
        max_concurrent_jobs=args.max_concurrent_jobs,
        default_ttl_days=args.data_ttl_days or None,
        instance_types=types or tuple(DEFAULT_INSTANCE_TYPES),
        env_cache_cap_bytes=parse_size(args.env_cache_size) if args.env_cache_size else None,
        find_links=tuple(args.find_links),
    )
    return run_server(opts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter ds-jobs",
        description="Run scripts, notebooks and DataSphere config.yaml jobs on a DataSphere Jobs API server "
        "(the embedded local one by default).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_server(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except DsJobsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
