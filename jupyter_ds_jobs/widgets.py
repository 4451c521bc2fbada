"""What a ``%%ds_job`` cell shows while its job runs: an ipywidgets 8 view, or plain text.

Both views take the same events, from any thread (the log follower, the waiting loop):

* ``started(job_id)``, ``status(name, details)``, ``progress(message, percent)``;
* ``log(text, stderr)`` — a chunk of the job's output (whole lines, usually);
* ``finished(summary)`` — the final :class:`Summary`.

:class:`JobWidget` shows a header (name, job id, status, elapsed time), a progress bar driven by the
job's status stages and its ``JobProgress``, the live stdout and stderr (stderr marked, a bounded
buffer), a Cancel button and the final summary; its parts carry stable CSS classes (``ds-job-widget``,
``ds-job-status`` with a ``data-status`` attribute, ``ds-job-logs``, ``ds-job-cancel``, ...). Where no
widget frontend exists (terminal IPython, nbclient, nbconvert, papermill) :class:`TextView` writes the
same information as plain stream output, so the logs are never lost. :func:`make_view` picks one
(:func:`widget_frontend`).

The Cancel button works while the cell blocks: a kernel busy in a cell handles no comm message on
its main shell, so :func:`route_comm_off_main` sends the button's messages to a private kernel
subshell (ipykernel 7), whose own thread runs the click handler.
"""

from __future__ import annotations

import collections
import html
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from jupyter_ds_jobs.common.contract import FINAL_STATUS_NAMES

__all__ = [
    "STAGE_PERCENT",
    "JobView",
    "JobWidget",
    "Summary",
    "TextView",
    "format_duration",
    "make_view",
    "route_comm_off_main",
    "widget_frontend",
]

#: Where the progress bar stands at each status, before the job reports its own progress.
STAGE_PERCENT: dict[str, int] = {
    "CREATING": 1,
    "PREPARING": 5,
    "EXECUTING": 10,
    "UPLOADING_OUTPUT": 95,
    "CANCELLING": 95,
    "SUCCESS": 100,
    "ERROR": 100,
    "CANCELLED": 100,
}
_BAR_STYLE = {"SUCCESS": "success", "ERROR": "danger", "CANCELLED": "warning", "CANCELLING": "warning"}


def format_duration(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``3 min 04 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


@dataclass
class Summary:
    """The end of a job as the cell reports it."""

    status: str
    return_code: int | None = None
    duration_s: float = 0.0
    variables: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    unpicklable: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def lines(self) -> list[str]:
        out = [
            f"{self.status}"
            + (f", return code {self.return_code}" if self.return_code is not None else "")
            + f", {format_duration(self.duration_s)}"
        ]
        if self.variables:
            out.append("variables loaded: " + ", ".join(self.variables))
        if self.files:
            out.append("files downloaded: " + ", ".join(self.files))
        for name, why in self.unpicklable.items():
            out.append(f"variable {name!r} did not come back: {why}")
        if self.message:
            out.append(self.message)
        return out


class JobView(Protocol):
    def started(self, job_id: str) -> None: ...
    def status(self, name: str, details: str = "") -> None: ...
    def progress(self, message: str, percent: int) -> None: ...
    def log(self, text: str, stderr: bool = False) -> None: ...
    def note(self, text: str) -> None: ...
    def finished(self, summary: Summary) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------- plain text


class TextView:
    """Plain stream output: the job's stdout/stderr as is, status lines prefixed ``[ds_job]``."""

    def __init__(
        self,
        name: str = "",
        *,
        quiet: bool = False,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.name = name
        self.quiet = quiet
        self._out = stdout if stdout is not None else sys.stdout
        self._err = stderr if stderr is not None else sys.stderr
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.job_id = ""
        self._last_status = ""
        # The job's stdout may stop mid-line (``print(..., end="")``, a line in pieces): a status
        # line then waits for the job's line to end instead of cutting into it.
        self._midline = False
        self._held: list[str] = []

    def _say(self, text: str) -> None:
        if self.quiet:
            return
        label = f"{self.name} " if self.name else ""
        with self._lock:
            line = f"[ds_job] {label}{text}\n"
            if self._midline:
                self._held.append(line)
                return
            self._out.write(line)
            self._out.flush()

    def _end_line(self) -> None:
        """Close the job's unfinished stdout line and let held status lines out (lock held)."""
        if self._midline:
            self._out.write("\n")
            self._midline = False
        self._release_held()

    def _release_held(self) -> None:
        if self._held:
            self._out.write("".join(self._held))
            self._held.clear()
        self._out.flush()

    def started(self, job_id: str) -> None:
        self.job_id = job_id
        self._say(f"job {job_id} submitted")

    def status(self, name: str, details: str = "") -> None:
        if name == self._last_status:
            return
        self._last_status = name
        if name in FINAL_STATUS_NAMES:
            return  # the summary says it
        elapsed = format_duration(time.monotonic() - self._t0)
        self._say(f"{name.lower()}{': ' + details if details else ''} ({elapsed})")

    def progress(self, message: str, percent: int) -> None:
        pass  # the status lines are enough in text; progress is for the bar

    def log(self, text: str, stderr: bool = False) -> None:
        if not text:
            return
        stream = self._err if stderr else self._out
        with self._lock:
            stream.write(text)
            if not stderr:
                self._midline = not text.endswith("\n")
                if not self._midline:
                    self._release_held()
            stream.flush()

    def note(self, text: str) -> None:
        self._say(text)

    def finished(self, summary: Summary) -> None:
        with self._lock:
            self._end_line()
        lines = summary.lines()
        self._say(f"job {self.job_id}: " + lines[0])
        for line in lines[1:]:
            self._say(line)

    def close(self) -> None:
        with self._lock:
            self._end_line()


# --------------------------------------------------------------------------- widget


_OUT, _ERR, _NOTE = 0, 1, 2  # the kinds of lines in a _LogBuffer


class _LogBuffer:
    """The last ``max_lines`` lines of output, stderr lines and our own notes marked; renders as HTML
    or text."""

    def __init__(self, max_lines: int = 500, max_line_chars: int = 2000) -> None:
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=max_lines)
        self.dropped = 0
        self.max_line_chars = max_line_chars
        self._partial: dict[bool, str] = {False: "", True: ""}

    def add(self, text: str, stderr: bool) -> None:
        text = self._partial[stderr] + text
        parts = text.split("\n")
        self._partial[stderr] = parts.pop()
        for line in parts:
            self._append(_ERR if stderr else _OUT, line)

    def add_note(self, text: str) -> None:
        for line in text.splitlines():
            self._append(_NOTE, line)

    def _append(self, kind: int, line: str) -> None:
        if len(self.lines) == self.lines.maxlen:
            self.dropped += 1
        if len(line) > self.max_line_chars:
            line = line[: self.max_line_chars] + " …"
        self.lines.append((kind, line))

    def flush_partial(self) -> None:
        for stderr in (False, True):
            if self._partial[stderr]:
                self.add("\n", stderr)

    def html(self) -> str:
        rows = []
        if self.dropped:
            rows.append(f'<span style="color:gray">… {self.dropped} earlier lines not shown</span>')
        for kind, line in self.lines:
            esc = html.escape(line)
            if kind == _ERR:
                esc = f'<span style="color:#c62828" title="stderr">{esc}</span>'
            elif kind == _NOTE:
                esc = f'<span class="ds-job-note" style="color:gray">{esc}</span>'
            rows.append(esc)
        for stderr in (False, True):
            if self._partial[stderr]:
                esc = html.escape(self._partial[stderr])
                rows.append(f'<span style="color:#c62828">{esc}</span>' if stderr else esc)
        body = "\n".join(rows)
        return (
            '<pre style="max-height:24em;overflow:auto;margin:0;font-size:12px;'
            f'line-height:1.3;white-space:pre-wrap">{body}</pre>'
        )

    def text(self) -> str:
        out = [f"... {self.dropped} earlier lines not shown"] if self.dropped else []
        prefix = {_OUT: "", _ERR: "[stderr] ", _NOTE: "[ds_job] "}
        out += [prefix[kind] + line for kind, line in self.lines]
        return "\n".join(out)


class JobWidget:
    """The ipywidgets view of a job; display it with ``IPython.display.display(view)``.

    Attributes (the widget models, for tests and customization): ``header`` (HTML), ``bar``
    (IntProgress), ``progress_label`` (Label), ``output`` (HTML of the bounded log), ``cancel_button``,
    ``summary_html`` and ``box`` (the VBox of them all). ``cancel_while_busy``: whether a click
    reaches the kernel while a cell blocks in it (:func:`route_comm_off_main`).
    """

    def __init__(
        self,
        name: str = "",
        *,
        on_cancel: Callable[[], None] | None = None,
        max_lines: int = 500,
        refresh_s: float = 0.1,
    ) -> None:
        import ipywidgets as w

        self.name = name
        self.job_id = ""
        self.state = "CREATING"
        self.details = ""
        self.percent = 0
        self.on_cancel = on_cancel
        self._t0 = time.monotonic()
        self._t_end: float | None = None
        self._lock = threading.RLock()
        self._buffer = _LogBuffer(max_lines)
        self._dirty = False
        self._last_render = 0.0
        self._refresh_s = refresh_s
        self._summary: Summary | None = None
        self.header = w.HTML()
        self.bar = w.IntProgress(value=0, min=0, max=100, bar_style="info", layout=w.Layout(width="60%"))
        self.progress_label = w.Label(value="")
        self.output = w.HTML(value="")
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="warning")
        self.cancel_button.on_click(self._clicked)
        self.cancel_while_busy = route_comm_off_main(self.cancel_button)
        if not self.cancel_while_busy:
            self.cancel_button.tooltip = "While the cell runs, interrupt the kernel to cancel the job"
        self.summary_html = w.HTML(value="")
        self.box = w.VBox(
            [
                w.HBox([self.header]),
                w.HBox([self.bar, self.progress_label, self.cancel_button]),
                self.output,
                self.summary_html,
            ]
        )
        for part, css in [
            (self.box, "ds-job-widget"),
            (self.header, "ds-job-header"),
            (self.bar, "ds-job-bar"),
            (self.progress_label, "ds-job-progress"),
            (self.cancel_button, "ds-job-cancel"),
            (self.output, "ds-job-logs"),
            (self.summary_html, "ds-job-summary"),
        ]:
            part.add_class(css)
        self._render_header()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="ds-job-widget-ticker", daemon=True)
        self._ticker.start()

    # -- display -------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle: dict[str, Any] | None = self.box._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = self.text()
        return bundle

    def text(self) -> str:
        """The same information as plain text (the display's ``text/plain`` fallback)."""
        with self._lock:
            lines = [self._header_text()]
            log = self._buffer.text()
            if log:
                lines.append(log)
            if self._summary is not None:
                lines += self._summary.lines()
            return "\n".join(lines)

    # -- events --------------------------------------------------------------------------------
    def started(self, job_id: str) -> None:
        with self._lock:
            self.job_id = job_id
            self._render_header()

    def status(self, name: str, details: str = "") -> None:
        with self._lock:
            self.state = name
            self.details = details
            self._set_percent(STAGE_PERCENT.get(name, self.percent))
            self.bar.bar_style = _BAR_STYLE.get(name, "info")
            if name in FINAL_STATUS_NAMES:
                self._t_end = self._t_end or time.monotonic()
                self.cancel_button.disabled = True
            elif name == "CANCELLING":
                self.cancel_button.disabled = True
            self._render_header()

    def progress(self, message: str, percent: int) -> None:
        with self._lock:
            if message:
                self.progress_label.value = message
            if self.state == "EXECUTING":
                self._set_percent(max(10, min(95, int(percent))))

    def log(self, text: str, stderr: bool = False) -> None:
        with self._lock:
            self._buffer.add(text, stderr)
            self._dirty = True
            now = time.monotonic()
            if now - self._last_render >= self._refresh_s:
                self._render_log(now)

    def note(self, text: str) -> None:
        with self._lock:
            self._buffer.add_note(text)
            self._render_log(time.monotonic())

    def finished(self, summary: Summary) -> None:
        with self._lock:
            self._summary = summary
            self._buffer.flush_partial()
            self._render_log(time.monotonic())
            self._t_end = self._t_end or time.monotonic()
            self.status(summary.status)
            lines = summary.lines()
            color = {"SUCCESS": "#2e7d32", "ERROR": "#c62828"}.get(summary.status, "#ef6c00")
            rows = [f'<b style="color:{color}">{html.escape(lines[0])}</b>']
            rows += [html.escape(line) for line in lines[1:]]
            self.summary_html.value = "<br>".join(rows)
        self._stop.set()

    def close(self) -> None:
        self._stop.set()

    # -- internals -----------------------------------------------------------------------------
    def _clicked(self, _button: Any) -> None:
        # runs in the kernel's subshell thread while a cell blocks (route_comm_off_main)
        with self._lock:
            if self.state in FINAL_STATUS_NAMES:
                return
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancelling…"
        if self.on_cancel is not None:
            try:
                self.on_cancel()
            except Exception as e:  # shown, never raised into the comm handler
                self.note(f"cancel failed: {type(e).__name__}: {e}")
                with self._lock:
                    self.cancel_button.disabled = False
                    self.cancel_button.description = "Cancel"

    def _set_percent(self, value: int) -> None:
        self.percent = max(self.percent, value) if self.state not in FINAL_STATUS_NAMES else value
        self.bar.value = self.percent

    def _elapsed(self) -> float:
        return (self._t_end or time.monotonic()) - self._t0

    def _header_text(self) -> str:
        parts = [self.name or "ds_job", self.job_id or "(submitting)", self.state.lower()]
        return " · ".join(parts) + f" · {format_duration(self._elapsed())}"

    def _render_header(self) -> None:
        name = html.escape(self.name or "ds_job")
        job = html.escape(self.job_id or "(submitting)")
        state = html.escape(self.state)
        details = f" — {html.escape(self.details)}" if self.details and self.state not in ("SUCCESS",) else ""
        self.header.value = (
            f'<b class="ds-job-name">{name}</b> · <code class="ds-job-id">{job}</code> · '
            f'<b class="ds-job-status" data-status="{state}">{state.lower()}</b>{details} · '
            f'<span class="ds-job-elapsed">{format_duration(self._elapsed())}</span>'
        )

    def _render_log(self, now: float) -> None:
        self._last_render = now
        self._dirty = False
        self.output.value = self._buffer.html()

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, max(self._refresh_s, 0.05))):
            with self._lock:
                if self._dirty:
                    self._render_log(time.monotonic())
                self._render_header()
        with self._lock:
            if self._dirty:
                self._render_log(time.monotonic())
            self._render_header()


# --------------------------------------------------------------------------- choosing


def widget_frontend() -> bool:
    """Whether the frontend that runs this cell renders widgets.

    ``DS_JOBS_DISPLAY=widget|text`` decides when set. Otherwise: ipywidgets is importable, this is
    an ipykernel (not terminal IPython), and either the request running this cell carries a
    ``cellId`` in its metadata (JupyterLab, Notebook 7 and VS Code send one with every cell, from
    the first cell of a session; nbclient, nbconvert and papermill never do) or a widget manager
    has opened the ``jupyter.widget.control`` comm (it does on reconnecting to a kernel that has
    ipywidgets imported already).
    """
    forced = os.environ.get("DS_JOBS_DISPLAY", "").strip().lower()
    if forced in ("widget", "widgets"):
        return True
    if forced == "text":
        return False
    try:
        from ipykernel.zmqshell import ZMQInteractiveShell
        from IPython import get_ipython
        from ipywidgets import Widget
    except ImportError:
        return False
    shell = get_ipython()  # type: ignore[no-untyped-call]
    if not isinstance(shell, ZMQInteractiveShell):
        return False
    if getattr(Widget, "_control_comm", None) is not None:
        return True
    get_parent = getattr(shell.kernel, "get_parent", None)
    parent = get_parent("shell") if get_parent is not None else shell.parent_header
    metadata = parent.get("metadata") if isinstance(parent, dict) else None
    return isinstance(metadata, dict) and bool(metadata.get("cellId"))


class _Side:
    """This kernel's private subshell (one per process, made on first use)."""

    lock = threading.Lock()
    tried = False
    subshell: str | None = None


def _side_subshell(kernel: Any) -> str | None:
    """The id of this kernel's private subshell, created on first use (None where subshells are
    missing). A subshell has its own thread and event loop: what is routed to it is handled while
    the main shell is busy in a cell."""
    with _Side.lock:
        if _Side.tried:
            return _Side.subshell
        _Side.tried = True
        try:
            channel = kernel.shell_channel_thread
            create = channel.manager._create_subshell
        except Exception:  # no subshells here (ipykernel 6, subshells off)
            return None
        if threading.current_thread() is channel:
            return None
        made: list[str] = []
        done = threading.Event()

        def make() -> None:  # subshells are made in the shell channel thread
            try:
                made.append(create())
            finally:
                done.set()

        channel.io_loop.add_callback(make)
        if done.wait(10) and made:
            _Side.subshell = made[0]
        return _Side.subshell


def route_comm_off_main(widget: Any) -> bool:
    """Have the kernel handle the frontend's messages to ``widget`` (a click...) in a private
    subshell, so that they are handled while a cell blocks the main shell; True when done.

    ipykernel 7 routes a comm's incoming messages to the subshell its ``_reply_subshell_for``
    names (by default: the subshell that last sent on the comm). Elsewhere (ipykernel 6, terminal
    IPython, no kernel) this returns False and the messages wait for the cell to end.
    """
    comm = getattr(widget, "comm", None)
    kernel = getattr(comm, "kernel", None)
    if comm is None or kernel is None or not callable(getattr(comm, "_reply_subshell_for", None)):
        return False
    subshell = _side_subshell(kernel)
    if subshell is None:
        return False

    def reply_subshell_for(data: Any, default: str | None) -> str | None:
        return subshell

    comm._reply_subshell_for = reply_subshell_for
    return True


def make_view(
    name: str = "",
    *,
    quiet: bool = False,
    on_cancel: Callable[[], None] | None = None,
    widget: bool | None = None,
) -> JobView:
    """A :class:`JobWidget` (displayed) when a widget frontend exists, else a :class:`TextView`."""
    use_widget = widget_frontend() if widget is None else widget
    if use_widget and not quiet:
        from IPython.display import display

        view = JobWidget(name, on_cancel=on_cancel)
        display(view)  # type: ignore[no-untyped-call]
        return view
    return TextView(name, quiet=quiet)
