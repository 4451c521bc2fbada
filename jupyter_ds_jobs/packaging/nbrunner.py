"""Runs a whole notebook inside a job; shipped into the job as ``_ds_nbrunner.py`` (docs/notebooks.md).

Self-contained like :mod:`.runner`: copied alone into the job, it imports the standard library and,
once it runs, **IPython** (the job environment's one requirement; the notebook is read and written
as JSON exactly as nbformat 4 writes it). Its copies of shared names are pinned by tests::

    python _ds_nbrunner.py NOTEBOOK OUTPUT [--collect DIR [--max-file-bytes N]] [--keep PATH]...

Code cells run in order in one IPython ``InteractiveShell`` in this process (no kernel to start),
their outputs recorded as nbclient records them from an IPython kernel. Each line a cell writes
goes to the job's stdout / stderr prefixed ``[cell N]`` (:func:`cell_labels`); progress is
``cell N of M``. A failing cell stops the run (error banners tagged ``ds-error``).
``--collect DIR`` moves the files the notebook created or changed (each up to ``--max-file-bytes``;
not the notebooks, this file, ``_ds_*``, ``__pycache__`` or a ``--keep`` path) into DIR.

Exit code: 0; 1 when a cell raised; 2 when the notebook cannot be read or IPython is missing.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import os
import re
import stat
import sys
import tempfile
import time
import uuid
from typing import Any, TextIO

__all__ = [
    "ERROR_TAG",
    "INJECTED_TAG",
    "PARAMETERS_TAG",
    "PROGRESS_FILE",
    "RAISES_TAG",
    "RUNNER_FILE",
    "SKIP_TAGS",
    "cell_labels",
    "cell_tags",
    "main",
    "read_notebook",
    "report_progress",
    "runnable",
    "write_notebook",
]

RUNNER_FILE = "_ds_nbrunner.py"
PROGRESS_FILE = "job_progress.jsonl"  # read by the server (server/runtime.py); pinned by a test
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
SKIP_TAGS = ("ds-skip", "skip-execution")
RAISES_TAG = "raises-exception"
ERROR_TAG = "ds-error"
_ERROR_ANCHOR = "ds-error-cell"
_ERROR_STYLE = 'style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;"'
_AUTOSAVE_SECONDS = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LINES = re.compile(r"(?<=\n)")
_NON_TEXT_SPLIT = ("application/javascript", "image/svg+xml")

_job_dir: str | None = None


def report_progress(message: str, progress: float | None = None) -> None:
    """Append ``{"message": ..., "progress": 0..100}`` to ``job_progress.jsonl`` in the job dir."""
    record: dict[str, Any] = {"message": str(message)}
    if progress is not None:
        record["progress"] = round(min(100.0, max(0.0, float(progress))))
    with open(os.path.join(_job_dir or os.getcwd(), PROGRESS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: UP017


# --------------------------------------------------------------------------- notebook JSON


def _join(value: Any) -> Any:
    return "".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value


def read_notebook(path: str) -> dict[str, Any]:
    """The notebook at ``path`` (nbformat 4) with multi-line strings joined, as nbformat reads it."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path}: not a version 4 notebook")
    for cell in nb["cells"]:
        if not isinstance(cell, dict):
            raise ValueError(f"{path}: a cell is not a JSON object")
        cell["source"] = _join(cell.get("source", ""))
        cell.setdefault("metadata", {})
        for output in cell.get("outputs", ()) if cell.get("cell_type") == "code" else ():
            if isinstance(output.get("data"), dict):
                data = output["data"]
                for key in list(data):  # JSON mime types (application/json, */*+json) stay as they are
                    data[key] = data[key] if key.endswith("json") else _join(data[key])
            if "text" in output:
                output["text"] = _join(output["text"])
    return nb


def _split_lines(nb: dict[str, Any]) -> dict[str, Any]:
    """A copy with multi-line strings split into lists of lines, as nbformat writes them."""
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(True)
        for output in cell.get("outputs", ()) if cell.get("cell_type") == "code" else ():
            if output.get("output_type") in ("execute_result", "display_data"):
                data = output.get("data", {})
                for key, value in data.items():
                    if isinstance(value, str) and (key.startswith("text/") or key in _NON_TEXT_SPLIT):
                        data[key] = value.splitlines(True)
            elif output.get("output_type") == "stream" and isinstance(output.get("text"), str):
                output["text"] = output["text"].splitlines(True)
    return nb


def write_notebook(nb: dict[str, Any], path: str) -> None:
    """Write ``nb`` as nbformat does (sorted keys, indent 1, lines split), atomically."""
    text = json.dumps(_split_lines(nb), sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=False)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """A display bundle as the kernel sends it: bytes as base64, tuples as lists."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def cell_tags(cell: dict[str, Any]) -> list[str]:
    """The cell's tags (strings only)."""
    tags = cell.get("metadata", {}).get("tags", [])
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def cell_labels(cells: list[dict[str, Any]]) -> list[str]:
    """Each cell's label: ``cell N`` (its position without the injected parameters cell, from 1) or
    ``parameters`` (that cell). The same numbers name cells in logs, progress and errors."""
    out: list[str] = []
    for cell in cells:
        injected = INJECTED_TAG in cell_tags(cell)
        out.append("parameters" if injected else f"cell {sum(1 for x in out if x != 'parameters') + 1}")
    return out


def runnable(cell: dict[str, Any]) -> bool:
    """A code cell with code, not tagged to be skipped: what the runner executes."""
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    return (
        cell.get("cell_type") == "code" and bool(source.strip()) and not set(SKIP_TAGS) & set(cell_tags(cell))
    )


def _new_id(nb: dict[str, Any]) -> dict[str, str]:
    return {"id": uuid.uuid4().hex[:8]} if (nb.get("nbformat_minor") or 0) >= 5 else {}


# --------------------------------------------------------------------------- outputs


class _Recorder:
    """The running cell's outputs, kept as nbclient keeps them from an IPython kernel's messages."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.display_ids: dict[str, list[dict[str, Any]]] = {}
        self.error: dict[str, Any] | None = None
        self.clear_pending, self.label = False, ""

    def begin(self, cell: dict[str, Any], label: str) -> None:
        self.outputs = cell["outputs"] = []
        self.clear_pending, self.label, self.error = False, label, None

    def add(self, output: dict[str, Any]) -> None:
        if self.clear_pending:
            self._clear_now()
        self.outputs.append(output)

    def _clear_now(self) -> None:
        gone = {id(o) for o in self.outputs}
        for key, outs in self.display_ids.items():
            self.display_ids[key] = [o for o in outs if id(o) not in gone]
        self.outputs.clear()
        self.clear_pending = False

    def stream(self, name: str, text: str) -> None:
        last = self.outputs[-1] if self.outputs and not self.clear_pending else {}
        if last.get("output_type") == "stream" and last.get("name") == name:
            last["text"] += text
        elif text:
            self.add({"output_type": "stream", "name": name, "text": text})

    def display(self, data: Any, metadata: Any, transient: Any, update: bool) -> None:
        out = {"output_type": "display_data", "data": _jsonable(data), "metadata": _jsonable(metadata or {})}
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if display_id:
            for old in self.display_ids.get(display_id, ()):
                old["data"], old["metadata"] = out["data"], out["metadata"]
            if update:
                return
            self.display_ids.setdefault(display_id, []).append(out)
        elif update:
            return
        self.add(out)

    def clear(self, wait: bool) -> None:
        self.clear_pending = wait
        if not wait:
            self._clear_now()

    def traceback(self, ename: str, evalue: str, stb: list[str]) -> None:
        self.error = {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": stb}
        self.add(self.error)


class _Tee(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` while cells run: into the cell's outputs, and to the job's
    own stream live, each line prefixed with the cell's label."""

    encoding = "utf-8"

    def __init__(self, name: str, real: TextIO, recorder: _Recorder) -> None:
        super().__init__()
        self.name, self.real, self.recorder = name, real, recorder
        self.at_line_start = True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.recorder.stream(self.name, text)
        self.log(text)
        return len(text)

    def log(self, text: str) -> None:
        """Write ``text`` to the job's stream with the running cell's prefix at each line start."""
        prefix = f"[{self.recorder.label}] " if self.recorder.label else ""
        out = []
        for piece in _LINES.split(text):
            if piece and self.at_line_start:
                out.append(prefix if piece != "\n" else prefix.rstrip())
            if piece:
                out.append(piece)
                self.at_line_start = piece.endswith("\n")
        self.real.write("".join(out))

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()

    def writable(self) -> bool:
        return True


# --------------------------------------------------------------------------- the shell


def _system(cmd: str) -> int:
    """``!cmd`` through a pipe, stderr merged as a terminal shows it (IPython uses a pseudo-terminal,
    which a job may not have); the output goes to ``sys.stdout`` as it comes. The exit code."""
    import codecs
    import subprocess

    proc = subprocess.Popen(
        cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
        sys.stdout.write(decoder.decode(b"", final=True))
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()


def _add_magics(shell: Any) -> None:
    """``%%ds_job`` runs its body here (the job is already remote); ``%load_ext jupyter_ds_jobs``
    only enables that, other extensions load as usual."""

    def ds_job(line: str, cell: str) -> None:
        shell.ex(cell)

    original_load_ext = shell.find_line_magic("load_ext")

    def load_ext(module: str) -> Any:
        return None if module.strip() == "jupyter_ds_jobs" else original_load_ext(module)

    shell.register_magic_function(ds_job, "cell", "ds_job")
    shell.register_magic_function(load_ext, "line", "load_ext")


def _make_shell(recorder: _Recorder, ipython_dir: str) -> Any:
    """An ``InteractiveShell`` whose display publisher, display hook and traceback go to ``recorder``."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Publisher(DisplayPublisher):  # type: ignore[misc]
        def publish(self, data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> None:
            recorder.display(data, metadata, kwargs.get("transient"), bool(kwargs.get("update")))

        def clear_output(self, wait: bool = False) -> None:
            recorder.clear(wait)

    class Hook(DisplayHook):  # type: ignore[misc]
        result: dict[str, Any] | None = None

        def start_displayhook(self) -> None:
            self.result = None

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
            self.result = {
                "output_type": "execute_result",
                "execution_count": self.prompt_count,
                "data": _jsonable(format_dict),
                "metadata": _jsonable(md_dict if md_dict is not None else {}),
            }

        def finish_displayhook(self) -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            if self.result is not None and self.result["data"]:
                recorder.add(self.result)
            self.result = None

    class Shell(InteractiveShell):  # type: ignore[misc]
        def _showtraceback(self, etype: Any, evalue: Any, stb: list[str]) -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            recorder.traceback(str(etype.__name__), str(evalue), list(stb))
            tee = sys.stderr
            text = _ANSI.sub("", "\n".join(stb)) + "\n"
            (tee.log if isinstance(tee, _Tee) else tee.write)(text)

        def init_virtualenv(self) -> None:  # as in ipykernel: the job's Python is the one
            pass

        def enable_gui(self, gui: str | None = None) -> None:  # %matplotlib inline: no event loop
            if gui not in (None, "inline"):
                raise RuntimeError(f"a job has no GUI event loop ({gui}); use %matplotlib inline")

        def system_piped(self, cmd: str) -> None:
            if cmd.rstrip().endswith("&"):
                raise OSError("Background processes not supported.")
            expand: Any = self.var_expand  # untyped
            code = _system(expand(cmd, depth=1))
            self.user_ns["_exit_code"] = code
            if self.system_raise_on_error and code != 0:
                import subprocess

                raise subprocess.CalledProcessError(code, cmd)

        system = system_piped

    config = Config()
    config.HistoryManager.enabled = False
    shell: Any = Shell.instance(
        config=config, ipython_dir=ipython_dir, displayhook_class=Hook, display_pub_class=Publisher
    )
    shell.set_hook("show_in_pager", lambda *a, **k: None, 99)  # help (obj?) as nbclient keeps it: none

    _add_magics(shell)
    return shell


# --------------------------------------------------------------------------- the run


class _Run:
    def __init__(self, nb: dict[str, Any], output: str) -> None:
        self.nb, self.output, self.saved_at = nb, output, time.monotonic()
        self.failed: tuple[int, str, dict[str, Any]] | None = None  # (index, label, error output)

    def execute(self, shell: Any, recorder: _Recorder) -> None:
        cells = self.nb["cells"]
        labels = cell_labels(cells)
        total = sum(1 for c in cells if INJECTED_TAG not in cell_tags(c))
        for cell in cells:
            if runnable(cell):  # as papermill: what will run starts empty
                cell["outputs"], cell["execution_count"] = [], None
        count = 0
        for index, cell in enumerate(cells):
            if not runnable(cell):
                continue
            label = labels[index]
            n = int(label[5:]) if label.startswith("cell ") else 0
            report_progress(f"{label} of {total}" if n else label, 100 * max(n - 1, 0) / total)
            count += 1
            recorder.begin(cell, label)
            timing = cell["metadata"]["execution"] = dict.fromkeys(
                ("iopub.status.busy", "iopub.execute_input"), _now()
            )
            result = shell.run_cell(cell["source"], store_history=True)
            sys.stdout.flush()
            sys.stderr.flush()
            recorder.label = ""
            cell["execution_count"] = count
            timing["shell.execute_reply"] = timing["iopub.status.idle"] = _now()
            if not result.success and RAISES_TAG not in cell_tags(cell):
                error = recorder.error or {"ename": "Error", "evalue": "the cell failed", "traceback": []}
                self.failed = (index, label, error)
                return
            if time.monotonic() - self.saved_at > _AUTOSAVE_SECONDS:
                self.save()

    def save(self) -> None:
        write_notebook(self.nb, self.output)
        self.saved_at = time.monotonic()

    def add_error_banners(self) -> None:
        if self.failed is None:
            return
        index, label, error = self.failed
        cells = self.nb["cells"]
        count = cells[index].get("execution_count")
        anchor = f'<span id="{_ERROR_ANCHOR}" {_ERROR_STYLE}>The job stopped here: {label} raised an exception:</span>'
        link = f'<a href="#{_ERROR_ANCHOR}">{label} (In [{count}])</a>'
        top = (
            f"<span {_ERROR_STYLE}>An exception was raised at '{link}': {html.escape(error['ename'])}.</span>"
        )
        for position, text in ((index, anchor), (0, top)):
            cell = {"cell_type": "markdown", "metadata": {"tags": [ERROR_TAG]}, "source": text}
            cells.insert(position, {**_new_id(self.nb), **cell})


def _language_info() -> dict[str, Any]:
    """What an IPython kernel reports, as nbclient stores it in the notebook."""
    info = dict(name="python", mimetype="text/x-python", file_extension=".py", pygments_lexer="ipython3")
    info.update(nbconvert_exporter="python", version=".".join(str(v) for v in sys.version_info[:3]))
    return {**info, "codemirror_mode": {"name": "ipython", "version": 3}}


# --------------------------------------------------------------------------- files written


def _walk(root: str, skip: set[str]) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the regular files under ``root``, but ``skip``."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = [
            d for d in dirnames if d not in ("__pycache__", ".ipynb_checkpoints") and rel_dir + d not in skip
        ]
        for name in filenames:
            rel = rel_dir + name
            if rel in skip or (not rel_dir and name.startswith("_ds_")):
                continue
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def _collect(root: str, before: dict[str, tuple[int, int]], skip: set[str], into: str, limit: int) -> tuple[list[str], list[str]]:  # fmt: skip
    """Move the files created or changed since ``before`` into ``into``: (moved, left: over ``limit``)."""
    after = _walk(root, skip | {into})
    changed = sorted(p for p, st in after.items() if before.get(p) != st)
    moved: list[str] = []
    left: list[str] = []
    for rel in changed:
        if after[rel][0] > limit:
            left.append(rel)
            continue
        dest = os.path.join(root, into, *rel.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(os.path.join(root, *rel.split("/")), dest)
        moved.append(rel)
    os.makedirs(os.path.join(root, into), exist_ok=True)  # the job declares it: always there
    return moved, left


# --------------------------------------------------------------------------- main


def _private_caches(tmp: str) -> None:
    """Matplotlib's config and font cache in ``tmp`` when the home directory cannot take them (a
    sandboxed job may not even see it): no "could not save" warning in every cell that plots."""
    home = os.path.expanduser("~")
    probe = os.path.join(home, ".cache") if os.path.isdir(os.path.join(home, ".cache")) else home
    try:
        with tempfile.TemporaryFile(dir=probe):
            return
    except OSError:
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=RUNNER_FILE, description="Run a notebook in this process (IPython).")
    p.add_argument("notebook")
    p.add_argument("output")
    p.add_argument("--collect", default=None, help="move the files the notebook wrote into this directory")
    p.add_argument("--max-file-bytes", type=int, default=2**62, help="larger files are not collected")
    p.add_argument("--keep", action="append", default=[], help="a path never collected (repeatable)")
    return p.parse_args(argv)


def _finish(run: _Run, started: float, moved: list[str], left: list[str]) -> None:
    meta = run.nb.setdefault("metadata", {})
    meta["language_info"] = _language_info()
    info = meta.setdefault("ds_jobs", {})
    info.update(status="failed" if run.failed else "completed", duration=round(time.monotonic() - started, 3))
    info["end_time"] = _now()
    if run.failed is not None:
        _index, label, error = run.failed
        info["error"] = {"cell": label, "ename": error["ename"], "evalue": error["evalue"]}
    if moved or left:
        info["files"] = moved
        info["files_left"] = left
    run.add_error_banners()
    run.save()


def main(argv: list[str] | None = None) -> int:
    """Run the notebook ``argv[0]`` and write the executed one to ``argv[1]``; the exit code."""
    global _job_dir
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    _job_dir = os.getcwd()
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, errors="backslashreplace")
    sys.modules.setdefault("_ds_nbrunner", sys.modules[__name__])
    try:
        nb = read_notebook(args.notebook)
    except (OSError, ValueError) as e:
        print(f"ds_nbrunner: cannot read the notebook: {e}", file=sys.stderr)
        return 2
    skip = {os.path.normpath(p).replace(os.sep, "/") for p in (args.notebook, args.output, *args.keep)}
    skip |= {RUNNER_FILE, PROGRESS_FILE, args.output + ".tmp"}
    before = _walk(_job_dir, skip) if args.collect else {}
    started = time.monotonic()
    nb.setdefault("metadata", {}).setdefault("ds_jobs", {})["start_time"] = _now()
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as ipykernel
    if "" not in sys.path:
        sys.path.insert(0, "")  # as ipykernel: the working directory is importable
    recorder = _Recorder()
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee("stdout", real_out, recorder), _Tee("stderr", real_err, recorder)  # type: ignore[assignment]
    run = _Run(nb, args.output)
    try:
        with tempfile.TemporaryDirectory(prefix="ds-nb-ipython-") as ipython_dir:
            _private_caches(ipython_dir)
            try:
                shell = _make_shell(recorder, ipython_dir)
            except ImportError as e:
                print(f"ds_nbrunner: IPython is needed to run a notebook: {e}", file=real_err)
                return 2
            run.execute(shell, recorder)
            shell.cleanup()
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    moved, left = (
        _collect(_job_dir, before, skip, args.collect, args.max_file_bytes) if args.collect else ([], [])
    )
    if left:
        names = ", ".join(left[:10]) + (" ..." if len(left) > 10 else "")
        print(f"ds_nbrunner: not brought back, over {args.max_file_bytes} bytes: {names}", file=sys.stderr)
    _finish(run, started, moved, left)
    if run.failed is not None:
        _index, label, error = run.failed
        print(f"ds_nbrunner: stopped at {label}: {error['ename']}: {error['evalue']}", file=sys.stderr)
        return 1
    report_progress("done", 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
