"""Which view ``%%ds_job`` shows, proven in the real frontends: the ipywidgets view in a real
JupyterLab driven by a real Chromium (from the first cell of a fresh kernel, live logs, the
variables back, the Cancel button working while the cell blocks), the text view under nbclient.
Both kernels start their own private local job server, as a user's would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

if TYPE_CHECKING:  # imported by pytest_plugins (with its asserts rewritten)
    from tests.labhelpers import JupyterLab, LabPage

pytest_plugins = ["tests.labhelpers"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

STDOUT_MIME = "application/vnd.jupyter.stdout"
STDERR_MIME = "application/vnd.jupyter.stderr"


def status_of(view: Any) -> str:
    return str(view.locator(".ds-job-status").get_attribute("data-status"))


def wait_status(view: Any, status: str, timeout: float) -> None:
    view.locator(f'.ds-job-status[data-status="{status}"]').wait_for(timeout=timeout * 1000)


def test_jupyterlab_shows_the_widget_view_and_its_cancel_button_works(
    lab: JupyterLab, lab_page: LabPage
) -> None:
    go = lab.base / "go"  # the first job prints, then waits for this file: its log is seen live
    nb = lab.write_notebook(
        "lab_widgets.ipynb",
        [
            "%load_ext jupyter_ds_jobs",
            "base = 20",
            "%%ds_job\nimport os, time\nprint('tick 0', flush=True)\n"
            f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
            "print('tick 1', flush=True)\nanswer = base + 22",
            "print('answer is', answer)",
            "%%ds_job --name sleeper\nimport time\nprint('sleeping', flush=True)\ntime.sleep(300)\nnever = 1",
            "print('never' in globals())",
        ],
    )
    page = lab_page
    page.open(nb)
    page.run_and_wait(0)
    page.run_and_wait(1)

    # the first widget of a fresh kernel: the ipywidgets view, with live logs
    page.run_cell(2)
    view = page.cell(2).locator(".ds-job-widget")
    view.wait_for(timeout=60_000)
    logs = view.locator(".ds-job-logs")
    logs.get_by_text("tick 0").wait_for(timeout=60_000)
    assert status_of(view) == "EXECUTING"  # still running: it waits for the file
    lines = logs.inner_text().splitlines()
    assert lines[0].startswith("local job server at 127.0.0.1:") and "started" in lines[0], lines
    assert lines[-1] == "tick 0" and sum("local job server" in line for line in lines) == 1
    assert view.locator(".ds-job-name").inner_text() == "lab_widgets [3]"
    go.write_text("")
    assert page.wait_cell(2) == 3
    assert status_of(view) == "SUCCESS"
    assert "tick 1" in logs.inner_text()
    assert "variables loaded: os, time, answer" in view.locator(".ds-job-summary").inner_text()
    assert page.outputs_of_type(2, STDERR_MIME) == 0  # nothing red under the cell
    assert page.outputs_of_type(2, STDOUT_MIME) == 0  # and no text view beside the widget
    assert page.cell(2).locator(".ds-job-widget").count() == 1
    assert page.run_and_wait(3).strip() == "answer is 42"

    # Cancel while the cell blocks the kernel
    page.run_cell(4)
    sleeper = page.cell(4).locator(".ds-job-widget")
    sleeper.locator(".ds-job-logs").get_by_text("sleeping").wait_for(timeout=60_000)
    assert status_of(sleeper) == "EXECUTING"
    assert "local job server" not in sleeper.locator(".ds-job-logs").inner_text()  # said once
    t0 = time.monotonic()
    sleeper.locator("button.ds-job-cancel").click()
    wait_status(sleeper, "CANCELLED", timeout=20)
    page.wait_cell(4, timeout=20)
    assert time.monotonic() - t0 < 10, "the job was not cancelled within a few seconds"
    assert page.outputs_of_type(4, STDERR_MIME) == 0  # a cancel from the button ends the cell quietly
    assert "CANCELLED" in sleeper.locator(".ds-job-summary").inner_text()
    assert page.run_and_wait(5).strip() == "False"  # nothing loaded from the cancelled job

    from jupyter_ds_jobs._proto import jobs_pb2
    from jupyter_ds_jobs.core.client import JobsClient

    info = lab.job_server()
    assert info is not None and Path(info.state_dir) == lab.state_dir.resolve()
    with JobsClient(info.endpoint, info.token) as client:
        statuses = {j.name: j.status for j in client.list_jobs(limit=5)}
    assert statuses == {"lab_widgets [3]": jobs_pb2.SUCCESS, "sleeper": jobs_pb2.CANCELLED}


def test_nbclient_gets_the_text_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from jupyter_ds_jobs.core.embedded import find_server, stop_server

    for var in ("DS_JOBS_ENDPOINT", "DS_JOBS_TOKEN", "DS_JOBS_DISPLAY", "JPY_SESSION_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DS_JOBS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "ds_jobs.json"))
    nb = new_notebook(
        cells=[
            new_code_cell("%load_ext jupyter_ds_jobs"),
            new_code_cell("%%ds_job\nprint('hello from the job')\nx = 1"),
            new_code_cell("%%ds_job\ny = x + 1"),
            new_code_cell("print(x, y)"),
        ]
    )
    try:
        NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    finally:
        info = find_server(tmp_path / "state")
        if info is not None:
            stop_server(info)
    first, second = nb.cells[1].outputs, nb.cells[2].outputs
    for outputs in (first, second):
        assert [o.output_type for o in outputs] == ["stream"] * len(outputs)
        assert {o.name for o in outputs} == {"stdout"}  # nothing on stderr, no widget
    text = "".join(o.text for o in first)
    lines = text.splitlines()
    assert lines[0].startswith("[ds_job] cell [2] local job server at 127.0.0.1:"), lines
    assert "(started; state in " in lines[0]
    assert lines[1].startswith("[ds_job] cell [2] job ") and lines[1].endswith(" submitted")
    assert "hello from the job" in text and "variables loaded: x" in text
    second_text = "".join(o.text for o in second)
    assert "local job server" not in second_text and "[ds_job] cell [3] job " in second_text
    assert nb.cells[3].outputs[0].text.strip() == "1 2"
