"""``%%ds_job`` in real notebooks: nbclient, a real ipykernel, a real job server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def kernel_env(server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The kernel inherits these: it talks to the fixture's server, settings kept in tmp_path."""
    monkeypatch.setenv("DS_JOBS_ENDPOINT", server.info.endpoint)
    monkeypatch.setenv("DS_JOBS_TOKEN", server.info.token)
    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "ds_jobs.json"))
    monkeypatch.delenv("DS_JOBS_DISPLAY", raising=False)
    work = tmp_path / "nb"
    work.mkdir()
    (work / "nbhelper_dsj.py").write_text("def greet(who):\n    return 'hello ' + who\n")
    return work


def execute(cells: list[str], cwd: Path, **kwargs: Any) -> Any:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, **kwargs
    ).execute()
    return nb


def text_of(cell: Any) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n" + "\n".join(out.traceback))
        elif "text/plain" in out.get("data", {}):
            parts.append(out.data["text/plain"])
    return "".join(parts)


def test_notebook_round_trip_modules_errors_and_widgets(kernel_env: Path) -> None:
    nb = execute(
        [
            "%load_ext jupyter_ds_jobs",
            "def shout(s):\n    return s.upper() + '!'\nwho = 'notebook'",
            "%%ds_job --name greet\nimport nbhelper_dsj\nmsg = shout(nbhelper_dsj.greet(who))\nprint('job says', msg)",
            "print('kernel has', msg)",
            "%%ds_job\nx = 1\n\nraise ValueError('bad value in the job')",
            "import os\nos.environ['DS_JOBS_DISPLAY'] = 'widget'",
            "%%ds_job -o hw --name w\nprint('into the widget')\ny = 2",
            "print(y, hw.view.bar.value, hw.status)",
        ],
        kernel_env,
        allow_errors=True,
        store_widget_state=True,
    )
    c = nb.cells
    assert "job says HELLO NOTEBOOK!" in text_of(c[2])  # streamed as plain text: no widget frontend
    assert "SUCCESS, return code 0" in text_of(c[2])
    assert "kernel has HELLO NOTEBOOK!" in text_of(c[3])
    err = text_of(c[4])
    assert "ValueError: bad value in the job" in err
    assert 'File "<ds_job cell>", line 4' in err and "Remote traceback" in err
    assert text_of(c[7]).strip() == "2 100 SUCCESS"
    # the widget's models went to the frontend (nbclient keeps their last state)
    states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = json.dumps([s["state"].get("value") for s in states.values()])
    assert "into the widget" in values and "variables loaded: y" in values


def test_attach_from_a_new_kernel(kernel_env: Path) -> None:
    first = execute(
        [
            "%load_ext jupyter_ds_jobs",
            "base = 20",
            "%%ds_job --async -o h --name later\nimport time\ntime.sleep(1.0)\nprint('finished late')\nanswer = base + 22",
            "print('JOB', h.job_id)",
        ],
        kernel_env,
    )
    job_id = text_of(first.cells[3]).split("JOB ")[1].split()[0]
    # the first kernel is gone; the job went on on the server
    second = execute(
        ["%load_ext jupyter_ds_jobs", f"%ds_job_attach {job_id} -o again", "print(answer, again.status)"],
        kernel_env,
    )
    out = text_of(second.cells[1])
    assert "finished late" in out and "variables loaded: time, answer" in out
    assert text_of(second.cells[2]).strip() == "42 SUCCESS"
    nbformat.validate(second)


def test_interrupting_a_real_kernel_cancels_the_job(kernel_env: Path, server: Any) -> None:
    """A kernel interrupt (SIGINT from the kernel manager) while %%ds_job runs cancels the job
    gracefully and the cell ends with KeyboardInterrupt; no job is left running."""
    import time

    import grpc
    from jupyter_client.manager import start_new_kernel

    from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
    from tests.jobhelpers import Api

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(kernel_env))
    try:
        kc.execute_interactive("%load_ext jupyter_ds_jobs", timeout=30)
        msg_id = kc.execute(
            "%%ds_job --name sleeper\nimport time\nprint('sleeping', flush=True)\ntime.sleep(120)\n"
        )
        api = Api(grpc.insecure_channel(server.info.endpoint), server.info.token)
        deadline = time.monotonic() + 30
        job = None
        while job is None:
            assert time.monotonic() < deadline, "the job never started"
            running = api.jobs.List(
                pjs_pb2.ListProjectJobRequest(filter="status IN (EXECUTING)"), metadata=api.md
            ).jobs
            job = running[0] if running else None
            time.sleep(0.1)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert api.wait_status(job.id, {jobs_pb2.CANCELLED}, timeout=30).status == jobs_pb2.CANCELLED
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
