"""A whole notebook as a job beside papermill running it locally, in one run.

    python benchmarks/bench_notebook.py [--runs 10] [--quick]

The notebook: a parameters cell and 9 light cells (a sum and a print each), with one parameter
injected. Each measurement is from the call to the executed notebook on disk:

1. in-process: ``jupyter_ds_jobs.run_notebook`` (job server in its own process, as the embedded
   one is; client connected once) beside ``papermill.execute_notebook`` (imports done once; its
   time is mostly a kernel's start). Target: at most 0.5x papermill.
2. command lines: ``jupyter ds-jobs run-notebook`` beside ``papermill`` (each a fresh process).
3. time to the first streamed cell output: from ``run_notebook`` to the first ``[cell N]`` line in
   the client (the job's start, IPython's import and the first cells included).

Runs of ours and papermill's alternate; ratios are medians of pairwise ratios. Needs papermill
(``pip install papermill``; the tests never do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import paired, start_server

CELLS = 10


def write_notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "n = 10\nlabel = 'x'"}]
    for i in range(CELLS - 1):
        cells.append(
            {
                "cell_type": "code",
                "metadata": {},
                "source": f"v{i} = sum(range(1000 * n))\nprint({i}, label, v{i})",
            }
        )
    for i, c in enumerate(cells):
        c.update(id=f"c{i}", execution_count=None, outputs=[])
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 runs of each")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    try:
        import papermill
    except ImportError:
        print("papermill is not installed: pip install papermill", file=sys.stderr)
        return 2
    import jupyter_ds_jobs
    from jupyter_ds_jobs._proto import pjs_pb2
    from jupyter_ds_jobs.core.client import JobsClient

    tmp = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    proc, _conn = start_server(tmp / "state")
    try:
        work = tmp / "work"
        work.mkdir()
        nb = work / "light.ipynb"
        write_notebook(nb)
        client = JobsClient.connect(state_dir=tmp / "state", start=False)

        def ours() -> None:
            run = jupyter_ds_jobs.run_notebook(
                nb, {"n": 3}, client=client, quiet=True, output=work / "ours.ipynb"
            )
            assert run.ok

        def theirs() -> None:
            papermill.execute_notebook(
                str(nb),
                str(work / "pm.ipynb"),
                parameters={"n": 3},
                kernel_name="python3",
                progress_bar=False,
            )

        m_ours, m_pm, ratio = paired(ours, theirs, runs)
        print(f"notebook of {CELLS} light cells, create -> executed notebook on disk ({runs} runs each)")
        print(f"(1) in-process   run_notebook {m_ours * 1e3:7.1f} ms   papermill {m_pm * 1e3:7.1f} ms   ratio {ratio:5.2f}x"
              "   (target <= 0.50x)")  # fmt: skip

        cli = [
            sys.executable,
            "-m",
            "jupyter_ds_jobs",
            "run-notebook",
            str(nb),
            "-p",
            "n",
            "3",
            "-o",
            str(work / "c.ipynb"),
        ]
        pm = shutil.which("papermill", path=str(Path(sys.executable).parent))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DS_JOBS_")}
        env.update(  # the benchmark's server, whatever else runs on this machine
            DS_JOBS_STATE_DIR=str(tmp / "state"),
            DS_JOBS_CONFIG=str(tmp / "settings.json"),
            JUPYTER_RUNTIME_DIR=str(tmp / "state" / "runtime"),
        )

        def ours_cli() -> None:
            subprocess.run(cli, check=True, capture_output=True, env=env)

        def theirs_cli() -> None:
            assert pm is not None
            subprocess.run([pm, str(nb), str(work / "pmc.ipynb"), "-p", "n", "3", "-k", "python3", "--no-progress-bar"],
                           check=True, capture_output=True, env=env)  # fmt: skip

        if pm is not None:
            c_ours, c_pm, c_ratio = paired(ours_cli, theirs_cli, max(3, runs // 2))
            print(
                f"(2) command line run-notebook {c_ours * 1e3:7.1f} ms   papermill {c_pm * 1e3:7.1f} ms   ratio {c_ratio:5.2f}x"
            )

        firsts: list[float] = []
        for _ in range(runs):
            got = threading.Event()

            def on_log(m: pjs_pb2.LogMessage, got: threading.Event = got) -> None:
                if m.WhichOneof("source") != "file_path" and b"[cell" in m.content:
                    got.set()

            t0 = time.perf_counter()
            run = jupyter_ds_jobs.run_notebook(
                nb, client=client, on_log=on_log, wait=False, output=work / "f.ipynb"
            )
            got.wait(30)
            firsts.append(time.perf_counter() - t0)
            run.wait()
        print(
            f"(3) first streamed cell output {statistics.median(firsts) * 1e3:7.1f} ms after run_notebook (median)"
        )
        client.close()
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
