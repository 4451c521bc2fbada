"""A real JupyterLab in a real Chromium, for the browser tests (``tests/test_lab_*.py``).

Load it as a plugin from a test module (``pytest_plugins = ["tests.labhelpers"]``): its fixtures
are then registered once per session, so every browser test shares one JupyterLab and one Chromium.

* :class:`JupyterLab`: ``python -m jupyterlab`` on a free 127.0.0.1 port with a token, as a
  subprocess stopped by its PID. Every Jupyter, IPython, XDG, HOME and temp dir points into the
  test's own directory, and so do the job server's state dir (``DS_JOBS_STATE_DIR``) and the
  runtime dir (``JUPYTER_RUNTIME_DIR``): a kernel's ``%%ds_job`` starts a private local job
  server, which :meth:`JupyterLab.stop` stops by its PID too. ``window.jupyterapp`` is exposed.
* Chromium is Debian's (``/usr/bin/chromium``, or ``DS_JOBS_CHROMIUM``) driven by Python
  playwright; it is never downloaded. When it is missing the browser tests fail, unless
  ``DS_JOBS_SKIP_BROWSER_TESTS=1`` says to skip them (``scripts/test`` installs it as root).
* :class:`LabPage`: a page object over one open notebook (run a cell, wait for it, read its
  outputs).
* The DS Jobs server extension runs with ``start_server=False``: it finds the private job server
  (started by a kernel, or by :meth:`JupyterLab.start_job_server`) and never starts one itself.

Fixtures: ``lab`` (session), ``chromium`` (session: a persistent context on a fresh profile),
``lab_page`` (a new page per test, closed after it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

CHROMIUM = os.environ.get("DS_JOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SKIP_ENV = "DS_JOBS_SKIP_BROWSER_TESTS"

# Dirs the server, kernels, IPython and Chromium would otherwise write under $HOME or /tmp.
_PRIVATE_DIRS = {
    "HOME": "home",
    "TMPDIR": "tmp",
    "IPYTHONDIR": "ipython",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "JUPYTERLAB_SETTINGS_DIR": "jupyter/lab-settings",
    "JUPYTERLAB_WORKSPACES_DIR": "jupyter/lab-workspaces",
    "XDG_CONFIG_HOME": "xdg/config",
    "XDG_CACHE_HOME": "xdg/cache",
    "XDG_DATA_HOME": "xdg/data",
    "XDG_RUNTIME_DIR": "xdg/runtime",
    "DS_JOBS_STATE_DIR": "ds-jobs-state",
}
# No news or update checks: their toasts can cover what a test clicks, and they fetch from the net.
# Every cell rendered (no windowing): a test reads any cell's DOM, wherever it is scrolled.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def require_chromium() -> None:
    """Fail (or skip, with ``DS_JOBS_SKIP_BROWSER_TESTS=1``) when Chromium is not installed."""
    if Path(CHROMIUM).exists():
        return
    why = f"{CHROMIUM} is missing: install it (apt-get install -y chromium; scripts/test does as root)"
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{why}; skipped because {SKIP_ENV}=1")
    pytest.fail(f"{why}, or set {SKIP_ENV}=1 to skip the browser tests", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterLab:
    """A JupyterLab server of its own under ``base`` (see the module docstring)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "notebooks"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = base / "jupyterlab.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DS_JOBS_", "JPY_", "VSCODE_"))}
        for var, sub in _PRIVATE_DIRS.items():
            self.env[var] = str(base / sub)
        self.env["DS_JOBS_CONFIG"] = str(base / "ds_jobs.json")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        """The private job server's state dir."""
        return Path(self.env["DS_JOBS_STATE_DIR"])

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def start(self, timeout: float = 90.0) -> None:
        for var in _PRIVATE_DIRS:
            Path(self.env[var]).mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        for rel, value in _LAB_SETTINGS.items():
            path = Path(self.env["JUPYTERLAB_SETTINGS_DIR"]) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # the DS Jobs server extension finds the private job server but never starts it: a
            # kernel's %%ds_job starts it (test_lab_widgets sees that), or start_job_server() does
            "--DsJobsApp.start_server=False",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer in {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def write_notebook(self, name: str, cells: Sequence[str]) -> str:
        """Write ``name`` (``.ipynb``) with these code cells into the root dir; its path there."""
        nb = new_notebook(cells=[new_code_cell(c) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, self.root / name)
        return name

    def job_server(self) -> Any:
        """The private job server's ``ConnectionInfo`` (None when no kernel started one)."""
        from jupyter_ds_jobs.core.embedded import find_server

        return find_server(self.state_dir)

    def start_job_server(self) -> Any:
        """Start the private job server as a kernel would (in the lab's environment), or find the
        running one; its ``ConnectionInfo``."""
        from jupyter_ds_jobs.core.embedded import ensure_server

        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)  # the detached server inherits this process's environment
        try:
            return ensure_server(self.state_dir, timeout=30)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def stop_job_server(self) -> None:
        """Stop the private job server, if one runs (its jobs stay in its state dir)."""
        from jupyter_ds_jobs.core.embedded import stop_server

        info = self.job_server()
        if info is not None:
            stop_server(info, timeout=20)

    def stop(self) -> None:
        """Stop JupyterLab (SIGTERM: it shuts its kernels down), then the private job server."""
        from jupyter_ds_jobs.core.embedded import stop_server

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        info = self.job_server()
        if info is not None:
            stop_server(info, timeout=20)


class LabPage:
    """One notebook open in JupyterLab in a Chromium page."""

    def __init__(self, page: Any, lab: JupyterLab) -> None:
        self.page = page
        self.lab = lab

    def open(self, notebook: str, timeout: float = 90.0) -> None:
        """Open ``notebook`` (a path under the root dir) and wait for its kernel to be idle; its
        cells' nodes get a ``data-cell-index`` attribute (see :meth:`cell`)."""
        ms = timeout * 1000
        self.page.goto(self.lab.url(f"lab/tree/{notebook}"))
        self.page.wait_for_selector("#jp-main-dock-panel", timeout=ms)
        self.page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=ms)
        self.page.wait_for_function(
            """(path) => {
                const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                const kernel = w && w.context && w.context.path === path && w.sessionContext.session
                    && w.sessionContext.session.kernel;
                if (!kernel || kernel.status !== 'idle' || w.content.widgets.length === 0) return false;
                w.content.widgets.forEach((cell, i) => cell.node.setAttribute('data-cell-index', i));
                return true;
            }""",
            arg=notebook,
            timeout=ms,
        )

    def run_cell(self, index: int) -> None:
        """Start running cell ``index`` (as Shift+Enter would, without moving on); returns at once."""
        self.page.evaluate(
            """(index) => {
                const app = window.jupyterapp;
                const nb = app.shell.currentWidget.content;
                nb.mode = 'command';
                nb.deselectAll();
                nb.activeCellIndex = index;
                app.commands.execute('notebook:run-cell');
            }""",
            index,
        )

    def wait_cell(self, index: int, timeout: float = 60.0) -> int:
        """Wait until cell ``index`` has run; its execution count."""
        handle = self.page.wait_for_function(
            """(index) => {
                const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
                const prompt = cell.node.querySelector('.jp-InputPrompt').textContent;
                return !prompt.includes('*') && cell.model.executionCount !== null
                    && cell.model.executionCount;
            }""",
            arg=index,
            timeout=timeout * 1000,
        )
        return int(handle.json_value())

    def run_and_wait(self, index: int, timeout: float = 60.0) -> str:
        """Run cell ``index``, wait for it; the text of its outputs."""
        self.run_cell(index)
        self.wait_cell(index, timeout)
        return self.output_text(index)

    def cell(self, index: int) -> Any:
        """The playwright Locator of cell ``index`` of the open notebook."""
        return self.page.locator(f'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell[data-cell-index="{index}"]')

    def output_text(self, index: int) -> str:
        return str(self.cell(index).locator(".jp-OutputArea").inner_text())

    def outputs_of_type(self, index: int, mime: str) -> int:
        """How many outputs of cell ``index`` render ``mime`` (e.g. application/vnd.jupyter.stderr)."""
        return int(self.cell(index).locator(f'.jp-OutputArea-output[data-mime-type="{mime}"]').count())


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    require_chromium()
    server = JupyterLab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chromium(lab: JupyterLab) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(lab.base / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            env=lab.env,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def lab_page(lab: JupyterLab, chromium: Any) -> Iterator[LabPage]:
    page = chromium.new_page()
    try:
        yield LabPage(page, lab)
    finally:
        page.close()
