"""The command line's argparse tree, declared in one place: every command, its options and help
texts (kept accurate: ``test_cli`` runs each ``--help``). Each command's ``func`` is a
``cmd_<name>`` of :mod:`~jupyter_ds_jobs.cli.commands`, :mod:`~jupyter_ds_jobs.cli.notebooks` or
:mod:`~jupyter_ds_jobs.cli.server`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.cli.commands import (
    cmd_attach,
    cmd_cancel,
    cmd_delete,
    cmd_download_files,
    cmd_execute,
    cmd_fork,
    cmd_generate_requirements,
    cmd_get,
    cmd_list,
    cmd_logs,
    cmd_set_data_ttl,
)
from jupyter_ds_jobs.cli.notebooks import cmd_convert, cmd_run_notebook
from jupyter_ds_jobs.cli.server import cmd_auth_status, cmd_server, cmd_server_status, cmd_server_stop

__all__ = ["build_parser"]


def _common(p: argparse.ArgumentParser, project: bool = True) -> None:
    g = p.add_argument_group("server")
    g.add_argument(
        "--endpoint",
        default=None,
        help="job server host:port, or 'datasphere' (default: DS_JOBS_ENDPOINT, settings, else the local server)",
    )
    g.add_argument("--token", default=None, help="bearer token (default: DS_JOBS_TOKEN or settings)")
    g.add_argument(
        "--ca-file",
        default=None,
        metavar="PEM",
        help="CA trusted beside the system roots for a TLS job server (default: DS_JOBS_CA_FILE, settings)",
    )
    g.add_argument(
        "--yc-profile", default=None, metavar="P", help="the `yc` profile DataSphere sign-in may use"
    )
    if project:
        g.add_argument(
            "-p",
            "--project",
            default=None,
            help="project id (default: DS_JOBS_PROJECT, settings, or 'local')",
        )


def _id(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", required=True, help="job id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter ds-jobs",
        description="Run scripts and DataSphere config.yaml jobs on a DataSphere Jobs API server "
        "(the embedded local one by default).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "execute",
        help="run a job from a config.yaml",
        description="Read a DataSphere config.yaml, upload what the server lacks, run the job, stream its "
        "logs, download its outputs into the working dir, and exit with the job's return code. "
        "Ctrl-C asks whether to cancel; a second Ctrl-C cancels.",
    )
    p.add_argument("-c", "--config", required=True, help="the job's config.yaml")
    p.add_argument(
        "--async", dest="async_", action="store_true", help="create and start, print the job id, exit"
    )
    p.add_argument("--data-ttl-days", default=None, help="keep the job's data N days (or 'infinity')")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _common(p)
    p.set_defaults(func=cmd_execute)

    p = sub.add_parser(
        "attach",
        help="follow a running job to its end",
        description="Attach to a job: stream its logs (from now by default), wait, download outputs, exit "
        "with its return code. A job that was created but not started is started.",
    )
    _id(p)
    p.add_argument("--offset", type=int, default=-1, help="log offset to start from (default -1: from now)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _common(p)
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("list", help="list jobs", description="List the project's jobs, newest first.")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--limit", type=int, default=None, help="at most N jobs")
    p.add_argument("--status", action="append", help="only jobs in this status (repeatable)")
    _common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("get", help="show a job", description="Show one job.")
    _id(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    _common(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("cancel", help="cancel a job", description="Cancel a running job.")
    _id(p)
    p.add_argument(
        "--graceful",
        action="store_true",
        help="send the job's graceful-shutdown signal, SIGKILL after its timeout",
    )
    p.add_argument("--reason", default="", help="why (shown in the job's status details)")
    _common(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "fork",
        help="run a copy of a job with changes",
        description="Clone a job with other arguments, inputs, environment variables or instance type, and run it "
        "like execute.",
    )
    _id(p)
    p.add_argument("--arg", action="append", metavar="NAME=VALUE", help="argument override (repeatable)")
    p.add_argument("--var", action="append", metavar="NAME=PATH", help="input file override (repeatable)")
    p.add_argument(
        "--env-var", action="append", metavar="NAME=VALUE", help="environment variable (repeatable)"
    )
    p.add_argument("--cloud-instance-type", default=None, metavar="TYPE", help="instance type")
    p.add_argument("--name", default=None, help="name of the new job")
    p.add_argument("--desc", default=None, help="description of the new job")
    p.add_argument("--async", dest="async_", action="store_true", help="start it, print the job id, exit")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _common(p)
    p.set_defaults(func=cmd_fork)

    p = sub.add_parser(
        "set-data-ttl", help="change how long a job's data is kept", description="Set a job's data TTL."
    )
    _id(p)
    p.add_argument("--days", required=True, help="N days from now, or 'infinity'")
    _common(p)
    p.set_defaults(func=cmd_set_data_ttl)

    p = sub.add_parser(
        "download-files",
        help="download a job's files",
        description="Download a job's output files (and logs, diagnostics); ZIP outputs are extracted.",
    )
    _id(p)
    p.add_argument("--with-logs", action="store_true", help="also the log files")
    p.add_argument("--with-diagnostics", action="store_true", help="also the diagnostic files")
    p.add_argument("--output-dir", default=".", help="where to put them (default: .)")
    _common(p)
    p.set_defaults(func=cmd_download_files)

    p = sub.add_parser("delete", help="delete a job", description="Delete a finished job and its data.")
    _id(p)
    p.add_argument("--data-only", action="store_true", help="delete only its files; keep the job listed")
    _common(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("logs", help="print a job's logs", description="Print a job's stdout and stderr.")
    _id(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the job ends")
    p.add_argument("--offset", type=int, default=0, help="byte offset to start from (-1: from now)")
    p.add_argument("-v", "--verbose", action="store_true", help="also the system log, and the final offset")
    _common(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "generate-requirements",
        help="print the pinned requirements a script needs",
        description="Statically analyze a script: print name==version of the installed distributions it uses "
        "(local modules and unresolved names go to stderr).",
    )
    p.add_argument("file", help="the entry script")
    p.add_argument("--root", default=None, help="directory of local modules (default: the script's)")
    p.set_defaults(func=cmd_generate_requirements)

    _add_notebooks(sub)
    p = sub.add_parser(
        "auth",
        help="DataSphere sign-in",
        description="'auth status' says which source signs in to DataSphere (YC_IAM_TOKEN, an OAuth token, "
        "the compute metadata service or yc, in the official CLI's order) and when its token is renewed. "
        "No token is shown.",
    )
    asub = p.add_subparsers(dest="auth_command", metavar="{status}", required=True)
    st = asub.add_parser("status", help="which source signs in, and until when", description="See 'auth'.")
    st.add_argument("--yc-profile", default=None, metavar="P", help="the `yc` profile to use")
    st.add_argument("--auth", default=None, metavar="ORDER", help="sources to try, e.g. oauth,md,yc")
    st.set_defaults(func=cmd_auth_status)

    _add_server(sub)
    return parser


def _add_isolation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("job isolation (docs/server.md, Security)")
    g.add_argument(
        "--isolation",
        choices=("auto", "landlock", "namespaces", "permissions", "none"),
        default=None,
        help="how jobs are confined (default: DS_JOBS_ISOLATION, else auto: the strongest this host "
        "allows); none turns it off, for debugging",
    )
    g.add_argument(
        "--run-as", default=None, metavar="USER", help="a server started as root runs its jobs as this user"
    )
    g.add_argument(
        "--sandbox-read",
        action="append",
        default=[],
        metavar="PATH",
        help="a path sandboxed jobs may also read, e.g. a toolchain outside /usr and /opt (repeatable)",
    )


def _add_executor(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where jobs run (docs/ray.md)")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: subprocesses of this server (default); ray: Ray jobs on a Ray cluster "
                   "(pip install jupyter_ds_jobs[ray]; docs/ray.md)")  # fmt: skip
    g.add_argument("--ray-address", default="auto", metavar="URL",
                   help="the Ray Jobs API address, as 'ray job submit --address' takes it "
                   "(http://HEAD:8265), or auto for a local head (default: auto)")  # fmt: skip
    g.add_argument(
        "--ray-workdir",
        choices=("auto", "shared", "node"),
        default="auto",
        help="where a Ray job's files are: shared (the node sees this server's job dir "
        "at the same path), node (copied to a private dir on the node over the job's "
        "signed channel, its Python environment built there with uv, outputs streamed "
        "back), auto (shared where the node sees the dir, node elsewhere; default)",
    )
    g.add_argument("--ray-python", default="python3", metavar="PYTHON",
                   help="the Python a Ray node runs the job wrapper with (stdlib only; default: "
                   "python3 on the node's PATH); unused with --ray-workdir shared")  # fmt: skip


def _add_resources(p: argparse.ArgumentParser) -> None:
    """What jobs get of this machine (docs/server.md, "Resources")."""
    p.add_argument("--instance-types-file", type=Path, default=None, metavar="JSON",
                   help='instance types as {"NAME": {"cpus": N, "memory_gib": N, "gpus": N}}, '
                   "added to or replacing the built-in ones")  # fmt: skip
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="GPUs this server has (default: those nvidia-smi -L lists)")  # fmt: skip
    p.add_argument("--cpus", type=int, default=None, metavar="N",
                   help="CPUs jobs share (default: the cores this process may use)")  # fmt: skip
    p.add_argument("--memory-gib", type=float, default=None, metavar="GIB",
                   help="memory jobs share (default: the machine's)")  # fmt: skip
    p.add_argument("--strict-resources", action="store_true",
                   help="refuse instance types larger than this machine instead of clamping them to it")  # fmt: skip


def _add_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "server",
        help="run the local job server (foreground), or manage it",
        description="Run the local ProjectJobService in the foreground. It binds to 127.0.0.1 by default, "
        "requires a bearer token (generated unless --token is given) and writes a connection file "
        "ds-jobs-server.json (mode 0600) into the state dir and the Jupyter runtime dir. "
        "'server status' and 'server stop' manage a running one.",
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
    _add_resources(p)
    _add_executor(p)
    p.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="start every cell job as a new Python instead of forking a warm interpreter",
    )
    _add_isolation(p)
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="PEM",
        help="serve gRPC and job files over TLS with this certificate chain (with --tls-key)",
    )
    p.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="the certificate's private key")
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="the CA that signed it, recorded in the connection file for local clients",
    )
    p.set_defaults(func=cmd_server)
    ssub = p.add_subparsers(dest="server_command", metavar="{status,stop}")
    st = ssub.add_parser(
        "status",
        help="show the running local server",
        description="Show the local job server of the state dir (or the runtime dir's): endpoint, pid, jobs.",
    )
    st.add_argument("--state-dir", dest="status_state_dir", type=Path, default=None, help="its state dir")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.set_defaults(func=cmd_server_status)
    sp = ssub.add_parser(
        "stop",
        help="stop the running local server",
        description="Stop the local job server (SIGTERM: running jobs are cancelled, the connection file removed).",
    )
    sp.add_argument("--state-dir", dest="status_state_dir", type=Path, default=None, help="its state dir")
    sp.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for it to exit (default: 30)"
    )
    sp.set_defaults(func=cmd_server_stop)


def _add_notebooks(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run-notebook",
        help="run a whole notebook as a job; get it back executed",
        description="Run NOTEBOOK as one job (cells in an IPython shell in the job, no kernel start), with "
        "papermill-style parameters injected after the cell tagged 'parameters'. The cells' output streams live "
        "('[cell N]' before each line); the executed notebook comes back (-o, default STEM.executed.ipynb beside "
        "it) and the files it wrote come back beside it. A failing cell ends the job in ERROR and the command "
        "exits non-zero naming the cell. Cells tagged 'ds-skip' (or 'skip-execution') are left out.",
    )
    p.add_argument(
        "-o", "--output", default=None, help="the executed notebook (default: STEM.executed.ipynb beside it)"
    )
    p.add_argument(
        "--async", dest="async_", action="store_true", help="create and start, print the job id, exit"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show the job's system log")
    _job_options(p)
    g = p.add_argument_group("server")
    g.add_argument(
        "--endpoint",
        default=None,
        help="job server host:port, or 'datasphere' (default: settings, else the local server)",
    )
    g.add_argument("--token", default=None, help="bearer token (default: DS_JOBS_TOKEN or settings)")
    g.add_argument(
        "--project", default=None, help="project id (default: DS_JOBS_PROJECT, settings, or 'local')"
    )
    p.set_defaults(func=cmd_run_notebook)

    p = sub.add_parser(
        "convert",
        help="write a notebook as a DataSphere job folder",
        description="Write a job folder that the official DataSphere CLI and 'jupyter ds-jobs execute -c config.yaml' "
        "both run unchanged: config.yaml, the notebook (parameters injected), the runner, requirements.txt, the "
        "local modules and the data files the cells read. Its outputs are the executed notebook and the files the "
        "cells write by literal path.",
    )
    p.add_argument(
        "-o", "--output-dir", required=True, help="the job folder (created; files in it are replaced)"
    )
    _job_options(p)
    p.set_defaults(func=cmd_convert)


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="the notebook (.ipynb)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a parameter; VALUE is a Python literal (3, 0.5, True, None, [1, 2], {'a': 1}), YAML "
                   "true/false/null or [..]/{..}, else a string (repeatable)")  # fmt: skip
    p.add_argument("-f", "--parameters-file", action="append", metavar="FILE",
                   help="a YAML file of parameters (repeatable; -p wins)")  # fmt: skip
    p.add_argument("--name", default=None, help="job name (default: the notebook's name)")
    p.add_argument("--desc", default=None, help="job description (the notebook's path is added to it)")
    p.add_argument("--instance-type", action="append", metavar="TYPE",
                   help="instance type, repeatable in order of preference (default: the notebook's "
                   "metadata.ds_jobs.instance_type)")  # fmt: skip
    p.add_argument("--requirements", default="auto",
                   help="auto (pinned from what the cells import, plus ipython), none, or a requirements file")  # fmt: skip
    p.add_argument("--pip", action="append", metavar="SPEC", help="an extra requirement (repeatable)")
    p.add_argument(
        "--python", default=None, metavar="VERSION", help="the job's Python major.minor (default: this one's)"
    )
    p.add_argument(
        "--file", action="append", metavar="PATH", help="an extra input file or directory (repeatable)"
    )
    p.add_argument("--output-file", action="append", metavar="PATH",
                   help="a relative path the notebook writes that comes back whatever its size (repeatable)")  # fmt: skip
    p.add_argument("--no-output-files", action="store_true", help="bring back only the executed notebook")
    p.add_argument("--max-output-file-size", default="100M",
                   help="files the notebook writes come back up to this size each (default: 100M)")  # fmt: skip
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="an environment variable of the job")
