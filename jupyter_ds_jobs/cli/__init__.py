"""`jupyter ds-jobs` (also `ds-jobs`, `python -m jupyter_ds_jobs`): the command line.

Each command is a ``cmd_<name>(args) -> int`` (:mod:`.commands`, :mod:`.server`) registered in
:func:`~.parser.build_parser`; :mod:`.console` prints. User errors, and every ``OSError``
(naming its path), print one line (``error: ...``) and exit non-zero, never a traceback.

Which server: ``--endpoint`` / ``--token`` / ``-p``, else ``DS_JOBS_ENDPOINT`` / ``DS_JOBS_TOKEN`` /
``DS_JOBS_PROJECT`` or the settings file, else the embedded local server (started detached when
none runs). ``--endpoint datasphere`` is DataSphere itself (token from ``YC_IAM_TOKEN``).
"""

from __future__ import annotations

import os

# gRPC's own log lines (a failed TLS handshake is logged at INFO) would come before our one-line
# error: the CLI says what went wrong itself. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from jupyter_ds_jobs.cli.commands import run_attached
from jupyter_ds_jobs.cli.console import Console, human_bytes, parse_size
from jupyter_ds_jobs.cli.parser import build_parser
from jupyter_ds_jobs.common.errors import DsJobsError

__all__ = ["Console", "build_parser", "human_bytes", "main", "os_error_message", "parse_size", "run_attached"]


def os_error_message(e: OSError) -> str:
    """``PATH: reason`` (``PATH -> OTHER: reason`` for a rename or link), else the error's text."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return reason
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return int(func(args))
    except DsJobsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path that cannot be read, written or created: one line naming it
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
