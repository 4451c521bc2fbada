"""The DS Jobs panel (``labextension/``) in a real JupyterLab driven by a real Chromium, against the
real server extension and a real private job server (``tests/labhelpers.py``).

* The panel lists jobs live (created from outside, no reload), opens one, streams its log (stderr
  marked), downloads an output file and the full log, cancels a running job, clones one with a
  changed argument, opens the notebook a job came from and inserts ``%ds_job_attach``; it says so
  when the job server is not running and when the server extension is missing.
* "Run notebook as job" on ``examples/notebooks/report.ipynb``: parameters prefilled from its
  ``parameters`` cell, the job appears, its log goes cell by cell, the executed notebook opens.

Both tests share one page (one JupyterLab load) and the module's job server; the jobs they made
are deleted and the job server stopped at the end, so other browser tests find none running.
``DS_JOBS_SCREENSHOTS=docs pytest tests/test_lab_panel.py`` also makes the screenshots of docs/ and
the README (the panel in the light and dark themes, the %%ds_job widget, the parameters dialog).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import pytest

if TYPE_CHECKING:  # imported by pytest_plugins (with its asserts rewritten)
    from tests.labhelpers import JupyterLab

pytest_plugins = ["tests.labhelpers"]

REPO = Path(__file__).resolve().parent.parent
ORIGIN_TS = REPO / "labextension" / "src" / "origin.ts"
EXAMPLES = REPO / "examples" / "notebooks"
SCREENSHOTS = os.environ.get("DS_JOBS_SCREENSHOTS", "")

GREETER = """\
import os, sys, time
greeting, go, out = sys.argv[1:4]
print("greeting", greeting, flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
print("after go", flush=True)
with open(out, "w") as f:
    f.write(f"result for {greeting}\\n")
"""
SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n"


def test_the_origin_expression_is_the_python_one() -> None:
    """labextension/src/origin.ts spells common.origin.ORIGIN_RE in JavaScript (named groups)."""
    from jupyter_ds_jobs.common.origin import ORIGIN_RE

    m = re.search(r"export const ORIGIN_RE =\s*/(.+)/;", ORIGIN_TS.read_text())
    assert m is not None, "no ORIGIN_RE literal in origin.ts"
    assert m.group(1) == ORIGIN_RE.pattern.replace("(?P<", "(?<")


class Panel:
    """The DS Jobs panel and the job details of one JupyterLab page."""

    def __init__(self, page: Any, lab: JupyterLab) -> None:
        self.page = page
        self.lab = lab

    def load(self) -> None:
        self.page.goto(self.lab.url("lab"))
        self.page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
        self.page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=90_000)
        self.page.evaluate("window.__dsNoReload = true")  # gone if the page ever reloads
        self.command("ds-jobs:show-panel")

    def command(self, command: str, args: dict[str, Any] | None = None) -> Any:
        self.page.wait_for_function(
            "(c) => window.jupyterapp && window.jupyterapp.commands.hasCommand(c)", arg=command
        )
        return self.page.evaluate(
            "([c, a]) => window.jupyterapp.commands.execute(c, a)", [command, args or {}]
        )

    @property
    def root(self) -> Any:
        return self.page.locator("#ds-jobs-panel")

    def state(self, state: str, timeout: float = 30) -> None:
        self.page.locator(f'#ds-jobs-panel[data-state="{state}"]').wait_for(timeout=timeout * 1000)

    def row(self, job_id: str) -> Any:
        return self.root.locator(f'.ds-jobs-row[data-job-id="{job_id}"]')

    def rows(self) -> list[str]:
        """The ids of the rows in the DOM, top to bottom."""
        return list(
            self.page.evaluate(
                """() => [...document.querySelectorAll('#ds-jobs-panel .ds-jobs-row')]
                    .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top)
                    .map(r => r.dataset.jobId)"""
            )
        )

    def wait_row_status(self, job_id: str, status: str, timeout: float = 30) -> None:
        self.row(job_id).locator(f'.ds-jobs-badge[data-status="{status}"]').wait_for(timeout=timeout * 1000)

    def details(self, job_id: str) -> Any:
        return self.page.locator(f'.ds-job-details[data-job-id="{job_id}"]')

    def wait_details_status(self, job_id: str, status: str, timeout: float = 30) -> None:
        self.page.locator(f'.ds-job-details[data-job-id="{job_id}"][data-status="{status}"]').wait_for(
            timeout=timeout * 1000
        )

    def log(self, job_id: str) -> Any:
        return self.details(job_id).locator(".ds-log-window")

    def wait_log(self, job_id: str, text: str, timeout: float = 30) -> None:
        self.log(job_id).locator(".ds-log-line", has_text=text).first.wait_for(timeout=timeout * 1000)

    def current_job(self) -> str:
        """The id of the job whose details are the current main-area widget."""
        return str(
            self.page.wait_for_function(
                """() => {
                    const w = window.jupyterapp.shell.currentWidget;
                    const d = w && w.node.querySelector('.ds-job-details');
                    return d && d.dataset.jobId;
                }"""
            ).json_value()
        )

    def dialog_button(self, label: str) -> Any:
        return self.page.locator(".jp-Dialog button", has_text=label)

    def shot(self, name: str, locator: Any = None) -> None:
        if SCREENSHOTS:
            path = Path(SCREENSHOTS) / name
            (locator or self.page).screenshot(path=str(path))


@pytest.fixture(scope="module")
def jobs(lab: JupyterLab) -> Iterator[Any]:
    """A client of the private job server (started by :meth:`Panel`'s test, see there); at the end
    the jobs made here are deleted and the server stopped."""
    from jupyter_ds_jobs.core.client import JobsClient

    holder: dict[str, Any] = {}

    def connect() -> Any:
        info = lab.start_job_server()
        client = JobsClient(info.endpoint, info.token, local_blobs=Path(info.state_dir) / "blobs")
        before = {j.id for j in client.list_jobs(limit=1000)}
        holder.update(client=client, before=before)
        return client

    holder["connect"] = connect
    try:
        yield holder
    finally:
        client = holder.get("client")
        if client is not None:
            from jupyter_ds_jobs._proto import jobs_pb2

            final = (jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED)
            for job in list(client.list_jobs(limit=1000)):
                if job.id in holder["before"]:
                    continue
                if job.status not in final:
                    client.cancel(job.id)
                deadline = time.monotonic() + 30
                while client.get(job.id).status not in final and time.monotonic() < deadline:
                    time.sleep(0.1)
                client.delete(job.id)
            client.close()
        lab.stop_job_server()


@pytest.fixture(scope="module")
def panel(lab: JupyterLab, chromium: Any) -> Iterator[Panel]:
    page = chromium.new_page()
    try:
        yield Panel(page, lab)
    finally:
        page.close()


def make_job(lab: JupyterLab, client: Any, name: str, files: dict[str, str], config: str) -> str:
    """Create and start a job from a config.yaml in a folder of its own (as the CLI would)."""
    from jupyter_ds_jobs.packaging.jobspec import load_config

    d = lab.base / name
    d.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (d / rel).write_text(text)
    (d / "config.yaml").write_text(config)
    job_id = str(client.create_from_spec(load_config(d / "config.yaml")))
    client.execute(job_id)
    return job_id


def greeter_job(lab: JupyterLab, client: Any, go: Path) -> str:
    """A job that says hello (stdout and stderr), waits for ``go``, then writes out.txt; its desc
    says it came from cell [7] (id cell-7) of origin.ipynb, which is written here."""
    origin_nb = lab.write_notebook("origin.ipynb", ["print('where the greeter came from')", "x = 2"])
    nb = nbformat.read(lab.root / origin_nb, as_version=4)
    nb.cells[1].id = "cell-7"
    nbformat.write(nb, lab.root / origin_nb)
    return make_job(
        lab,
        client,
        "greeter",
        {"main.py": GREETER},
        "name: panel-greeter\n"
        f'desc: "greets\\nfrom notebook {lab.root.resolve()}/origin.ipynb, cell [7], id cell-7"\n'
        f"cmd: python main.py ${{GREETING}} {go} ${{OUT}}\n"
        "args:\n  GREETING: hello\ninputs:\n  - main.py\noutputs:\n  - out.txt: OUT\n",
    )


def check_live_log(panel: Panel, job_id: str, go: Path) -> None:
    """The job's details: the log while it runs (stderr marked), then its end, live."""
    panel.row(job_id).click()
    panel.wait_log(job_id, "greeting hello")
    panel.wait_details_status(job_id, "EXECUTING")  # still waiting for go: the log came live
    stderr = panel.log(job_id).locator('.ds-log-line[data-stream="stderr"]')
    assert stderr.inner_text() == "a warning on stderr"
    assert "GREETING" in panel.details(job_id).locator(".ds-job-args").inner_text()
    go.write_text("")
    panel.wait_log(job_id, "after go")
    panel.wait_details_status(job_id, "SUCCESS")
    panel.wait_row_status(job_id, "SUCCESS")
    system = panel.log(job_id).locator('.ds-log-line[data-stream="system"]', has_text="exited with code")
    assert system.inner_text() == "process exited with code 0"


def check_downloads(panel: Panel, job_id: str) -> None:
    details = panel.details(job_id)
    with panel.page.expect_download() as download:
        details.locator("a.ds-job-download", has_text="out.txt").click()
    assert Path(download.value.path()).read_text() == "result for hello\n"
    with panel.page.expect_download() as download:
        details.locator("button.ds-log-download").click()
    full_log = Path(download.value.path()).read_text().splitlines()
    assert {"greeting hello", "a warning on stderr", "after go"} <= set(full_log), full_log


def check_origin_and_attach(panel: Panel, job_id: str) -> None:
    """Open notebook: origin.ipynb at the cell with id cell-7; then %ds_job_attach goes below it."""
    panel.details(job_id).locator("button.ds-job-open-notebook").click()
    panel.page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            return w && w.context && w.context.path === 'origin.ipynb' && w.content.activeCellIndex === 1;
        }""",
        timeout=30_000,
    )
    panel.command("ds-jobs:open-job", {"id": job_id})
    panel.details(job_id).locator("button.ds-job-insert-attach").click()
    sources = panel.page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            return w && w.context && w.context.path === 'origin.ipynb' && w.content.widgets.length === 3
                && w.content.widgets.map(c => c.model.sharedModel.getSource());
        }""",
        timeout=10_000,
    ).json_value()
    assert sources[2] == f"%ds_job_attach {job_id}"


def check_clone(panel: Panel, job_id: str) -> str:
    """Clone with GREETING=world: the clone opens and runs with it; its id."""
    panel.command("ds-jobs:open-job", {"id": job_id})
    panel.details(job_id).locator("button.ds-job-clone").click()
    panel.page.locator('.jp-Dialog input.ds-jobs-clone-arg[data-name="GREETING"]').fill("world")
    panel.dialog_button("Clone and run").click()
    panel.page.wait_for_function(
        "(id) => { const d = window.jupyterapp.shell.currentWidget.node.querySelector('.ds-job-details');"
        " return d && d.dataset.jobId !== id; }",
        arg=job_id,
    )
    clone = panel.current_job()
    panel.wait_log(clone, "greeting world")
    panel.wait_details_status(clone, "SUCCESS")
    assert "world" in panel.details(clone).locator(".ds-job-args").inner_text()
    panel.wait_row_status(clone, "SUCCESS")
    return clone


def check_filters_and_keyboard(panel: Panel, sleeper: str, clone: str, greeter: str) -> None:
    page, root = panel.page, panel.root
    count = "(n) => document.querySelectorAll('#ds-jobs-panel .ds-jobs-row').length === n"
    root.locator("input.ds-jobs-text-filter").fill("greeter")
    page.wait_for_function(count, arg=2)
    assert set(panel.rows()) == {clone, greeter}
    root.locator("select.ds-jobs-status-filter").select_option("cancelled")
    page.wait_for_function(count, arg=0)
    root.locator("input.ds-jobs-text-filter").fill("")
    page.wait_for_function(count, arg=1)
    assert panel.rows() == [sleeper]
    root.locator("select.ds-jobs-status-filter").select_option("all")
    page.wait_for_function(count, arg=3)
    root.locator(".ds-jobs-list").focus()
    for key in ("Home", "ArrowDown", "Enter"):
        page.keyboard.press(key)
    assert panel.current_job() == clone


def check_data_and_delete(panel: Panel, greeter: str, clone: str, sleeper: str) -> None:
    """Keep the greeter's data forever, delete the clone's data, delete the sleeper."""
    page = panel.page
    panel.command("ds-jobs:open-job", {"id": greeter})
    panel.details(greeter).locator("button.ds-job-ttl").click()
    page.locator(".jp-Dialog input.ds-jobs-ttl-forever").check()
    panel.dialog_button("Set").click()
    panel.details(greeter).locator(".ds-job-data", has_text="kept forever").wait_for(timeout=10_000)

    panel.command("ds-jobs:open-job", {"id": clone})
    clone_details = panel.details(clone)
    assert clone_details.locator("a.ds-job-download").count() > 0
    clone_details.locator("button.ds-job-delete-data").click()
    panel.dialog_button("Delete data").click()
    clone_details.locator(".ds-job-data", has_text="deleted").wait_for(timeout=10_000)
    assert clone_details.locator("a.ds-job-download").count() == 0  # nothing left to download

    panel.command("ds-jobs:open-job", {"id": sleeper})
    panel.details(sleeper).locator("button.ds-job-delete").click()
    panel.dialog_button("Delete").click()
    panel.details(sleeper).locator(".ds-job-deleted").wait_for(timeout=10_000)
    panel.row(sleeper).wait_for(state="detached", timeout=10_000)


def check_missing_extension(panel: Panel) -> None:
    """A Jupyter server without the extension, faked by answering its status route as such a
    server does (an HTML 404), then Refresh; with the real route back, Retry recovers."""
    page, root = panel.page, panel.root
    page.route(
        "**/ds-jobs/status*", lambda route: route.fulfill(status=404, body="<html>404 : Not Found</html>")
    )
    root.locator("button.ds-jobs-refresh").click()
    panel.state("missing")
    assert "server extension" in root.locator(".ds-jobs-notice").inner_text()
    page.unroute("**/ds-jobs/status*")
    root.locator("button.ds-jobs-retry").click()
    panel.state("ready")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_panel_lists_jobs_live_and_acts_on_them(lab: JupyterLab, panel: Panel, jobs: Any) -> None:
    lab.stop_job_server()  # whatever an earlier test left running: the panel starts without one
    panel.load()

    # no job server yet: a clear message; the panel recovers when one starts
    panel.state("unreachable", timeout=60)
    notice = panel.root.locator(".ds-jobs-notice").inner_text()
    assert "No job server" in notice and "no local job server is running" in notice, notice
    client = jobs["connect"]()
    panel.state("ready", timeout=30)

    # a job created outside JupyterLab shows up, live, with where it came from
    go = lab.base / "panel-go"
    greeter = greeter_job(lab, client, go)
    panel.row(greeter).wait_for(timeout=20_000)
    assert panel.row(greeter).locator(".ds-jobs-name").inner_text() == "panel-greeter"
    assert panel.row(greeter).locator(".ds-jobs-origin").inner_text() == "origin.ipynb [7]"
    panel.wait_row_status(greeter, "EXECUTING")

    check_live_log(panel, greeter, go)
    check_downloads(panel, greeter)
    check_origin_and_attach(panel, greeter)
    clone = check_clone(panel, greeter)

    # cancel a running job
    sleeper = make_job(
        lab,
        client,
        "sleeper",
        {"sleeper.py": SLEEPER},
        "name: panel-sleeper\ncmd: python sleeper.py\ninputs:\n  - sleeper.py\n",
    )
    panel.row(sleeper).wait_for(timeout=20_000)
    assert panel.rows()[:3] == [sleeper, clone, greeter]  # newest first
    panel.row(sleeper).click()
    panel.wait_log(sleeper, "sleeping")
    panel.details(sleeper).locator("button.ds-job-cancel").click()
    panel.dialog_button("Cancel hard").click()
    panel.wait_details_status(sleeper, "CANCELLED", timeout=20)
    panel.wait_row_status(sleeper, "CANCELLED")

    check_filters_and_keyboard(panel, sleeper, clone, greeter)
    check_data_and_delete(panel, greeter, clone, sleeper)
    check_missing_extension(panel)
    panel.row(greeter).wait_for()
    assert panel.page.evaluate("window.__dsNoReload") is True  # all of it live, without a reload


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_run_notebook_as_job(lab: JupyterLab, panel: Panel, jobs: Any) -> None:
    if "client" not in jobs:  # run alone
        panel.load()
        jobs["connect"]()
        panel.state("ready", timeout=30)
    page = panel.page
    folder = lab.root / "nbjob"
    shutil.copytree(EXAMPLES / "data", folder / "data", dirs_exist_ok=True)
    for name in ("report.ipynb", "nbhelpers.py"):
        shutil.copy(EXAMPLES / name, folder / name)
    panel.command("docmanager:open", {"path": "nbjob/report.ipynb"})
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   return w && w.context && w.context.path === 'nbjob/report.ipynb' && w.context.isReady; }""",
        timeout=30_000,
    )
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .ds-jobs-run-notebook-button button").click()

    # the parameters, prefilled from the cell tagged "parameters"
    params = page.locator(".jp-Dialog input.ds-jobs-param")
    params.first.wait_for()
    prefilled = {p.get_attribute("data-name"): p.input_value() for p in params.all()}
    assert prefilled == {"region": '"all"', "min_amount": "0.0", "top": "3"}
    page.locator('.jp-Dialog input.ds-jobs-param[data-name="region"]').fill("'eu'")
    page.locator('.jp-Dialog input.ds-jobs-param[data-name="top"]').fill("2")
    panel.dialog_button("Run as job").click()

    # the job shows in the panel, selected, and its details open
    job_id = panel.current_job()
    panel.row(job_id).wait_for(timeout=20_000)
    assert panel.row(job_id).get_attribute("aria-selected") == "true"
    assert panel.row(job_id).locator(".ds-jobs-origin").inner_text() == "report.ipynb"

    # cell by cell: each cell's output in the log, in order, as it runs
    panel.wait_log(job_id, "[cell 3]", timeout=60)
    panel.wait_details_status(job_id, "SUCCESS", timeout=60)
    lines = panel.page.evaluate(
        "(id) => document.querySelector(`.ds-job-details[data-job-id='${id}'] .ds-log-window`).innerText",
        job_id,
    ).splitlines()
    cells = [int(m.group(1)) for line in lines if (m := re.match(r"\[cell (\d+)\]", line))]
    assert cells == sorted(cells) and len(set(cells)) >= 4, lines
    assert any("rows, total" in line for line in lines), lines

    # the executed notebook opens, with the parameters given and the cells' outputs
    panel.details(job_id).locator("button.ds-job-open-executed").click()
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   return w && w.context && w.context.path === 'nbjob/report.executed.ipynb' && w.context.isReady; }""",
        timeout=30_000,
    )
    executed = json.loads((folder / "report.executed.ipynb").read_text())
    sources = ["".join(c["source"]) for c in executed["cells"]]
    assert any("region = 'eu'" in s or 'region = "eu"' in s for s in sources), sources
    shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea").all_inner_texts()
    assert any("rows, total" in text for text in shown), shown
    assert (folder / "summary.txt").read_text().startswith("region=eu ")


TRAIN = """%%ds_job --name train
import sys, time
for epoch in range(1, 6):
    print(f"epoch {epoch}: loss {1 / epoch:.3f}", flush=True)
    time.sleep(0.3)
print("a warning on stderr", file=sys.stderr)
score = 0.93"""


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not SCREENSHOTS, reason="DS_JOBS_SCREENSHOTS=DIR makes the docs' screenshots in DIR")
def test_docs_screenshots(lab: JupyterLab, panel: Panel, jobs: Any) -> None:
    from tests.labhelpers import LabPage

    if "client" not in jobs:
        jobs["connect"]()
    nb = lab.write_notebook("train.ipynb", ["%load_ext jupyter_ds_jobs", "data = list(range(10))", TRAIN])
    page = LabPage(panel.page, lab)
    page.open(nb)  # a reload: the last test of the module
    page.run_and_wait(0)
    page.run_and_wait(1)
    page.run_and_wait(2, timeout=90)
    widget = page.cell(2).locator(".ds-job-widget")
    assert "variables loaded" in widget.locator(".ds-job-summary").inner_text()
    panel.shot("widget.png", page.cell(2))

    panel.command("ds-jobs:show-panel")
    panel.state("ready")
    row = panel.root.locator(".ds-jobs-row", has=panel.page.locator(".ds-jobs-name", has_text="train"))
    row.first.click()
    job_id = panel.current_job()
    panel.wait_log(job_id, "exited with code")
    panel.shot("panel.png")
    panel.command("apputils:change-theme", {"theme": "JupyterLab Dark"})
    panel.page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    panel.page.wait_for_timeout(500)
    panel.shot("panel-dark.png")
    panel.command("apputils:change-theme", {"theme": "JupyterLab Light"})
    panel.page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")

    folder = lab.root / "nbjob"
    shutil.copytree(EXAMPLES / "data", folder / "data", dirs_exist_ok=True)
    for name in ("report.ipynb", "nbhelpers.py"):
        shutil.copy(EXAMPLES / name, folder / name)
    panel.command("docmanager:open", {"path": "nbjob/report.ipynb"})
    panel.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .ds-jobs-run-notebook-button button").click()
    dialog = panel.page.locator(".jp-Dialog-content")
    dialog.locator("input.ds-jobs-param").first.wait_for()
    panel.shot("run-notebook.png", dialog)
    panel.dialog_button("Cancel").click()
