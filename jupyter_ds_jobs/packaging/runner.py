"""Runs one notebook cell inside a job; shipped into the job as ``_ds_runner.py``.

This file is copied as a single file into the job, so it imports only the standard
library and cloudpickle; it keeps its own copies of the few names it shares with the
package (file names, ``job_progress.jsonl``), pinned by tests/test_runner.py.
``python _ds_runner.py [JOB_DIR]`` (JOB_DIR defaults to the current directory) expects::

    _ds_cell.py            the cell source (line 1 = the first line after ``%%ds_job``)
    _ds_manifest.json      {"inputs": [names], "outputs": [names] | null,
                            "cell_filename": "<cell>", "modules": {name: module},
                            "input_files": {name: relative path},   (optional)
                            "zip_outputs": true | false}            (optional, default true)
    _ds_inputs/<name>.pkl  one cloudpickle per input variable (or ``<name>.pkl`` at the
                           top of the job dir, or its ``input_files`` path)

and writes::

    _ds_outputs/<name>.pkl         one cloudpickle per returned variable, each its own file
                                   (empty for a listed name that did not come back: every
                                   listed name's file exists, the job declares each)
    _ds_outputs/_manifest.json     {"outputs": [names written], "unpicklable": {name: reason},
                                    "missing": [names]}
    _ds_outputs.zip                the same directory as one ZIP, only with ``zip_outputs``
    _ds_error.json                 always (the job declares it): ``null`` when the cell did not
                                   raise, the record of ``error_record`` when it did; a
                                   missing file (older runners) means ``null`` too
    job_progress.jsonl             what the cell reports with ``report_progress`` (below)

``outputs`` lists the variables to return; each is its own output file of the job, so the
magic, which knows them in advance, sets ``zip_outputs: false``. With ``outputs: null``
every top-level name the cell bound is returned (not ``_names``, not modules, not an
input the cell left unchanged); the job cannot name those files in advance, so it
declares ``_ds_outputs.zip`` instead. What the cell bound before it raised is returned too.

Exit code: 0 on success, 1 when the cell (or loading its inputs, or writing its outputs)
raised, ``n`` for ``sys.exit(n)`` in the cell, 2 when the job dir itself is unusable.

The cell runs in a fresh module named ``__main__`` (also ``sys.modules['__main__']``,
so that notebook-defined functions and classes unpickle and pickle by value), with the
job dir importable. The cell can report progress with::

    import _ds_runner
    _ds_runner.report_progress("epoch 3/10", 30)
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import json
import linecache
import os
import sys
import types
from collections.abc import Iterable, Mapping
from typing import IO, Any

import cloudpickle

# Imports are kept lean: every module imported here is paid on each job's start.
_PyCF_ALLOW_TOP_LEVEL_AWAIT = 0x2000  # ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, without importing ast
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE

__all__ = [
    "CELL_FILE",
    "ERROR_FILE",
    "INPUTS_DIR",
    "MANIFEST_FILE",
    "OUTPUTS_DIR",
    "OUTPUTS_MANIFEST",
    "OUTPUTS_ZIP",
    "PROGRESS_FILE",
    "RUNNER_FILE",
    "error_record",
    "main",
    "report_progress",
]

# The job dir layout; the server reads PROGRESS_FILE (server/runtime.py) and starts RUNNER_FILE warm
# (server/executors/zygote.py): copies, not imports (this file stands alone), pinned by tests/test_runner.py.
CELL_FILE = "_ds_cell.py"
RUNNER_FILE = "_ds_runner.py"
MANIFEST_FILE = "_ds_manifest.json"
INPUTS_DIR = "_ds_inputs"
OUTPUTS_DIR = "_ds_outputs"
OUTPUTS_MANIFEST = "_manifest.json"
OUTPUTS_ZIP = "_ds_outputs.zip"
ERROR_FILE = "_ds_error.json"
PROGRESS_FILE = "job_progress.jsonl"

#: A pickled exception larger than this is not embedded in ``_ds_error.json``.
MAX_PICKLED_ERROR = 16 * 2**20
#: Output files up to this size are deflated in the ZIP; larger ones are stored.
_DEFLATE_LIMIT = 64 * 2**20
_COPY_CHUNK = 2**20

_THIS_FILE = os.path.normcase(os.path.abspath(__file__))
_job_dir: str | None = None


class _JobDirError(Exception):
    """The job dir is not usable (no manifest, bad manifest); exit code 2."""


def report_progress(message: str, progress: float | None = None) -> None:
    """Append ``{"message": ..., "progress": 0..100}`` to ``job_progress.jsonl`` in the job dir."""
    record: dict[str, Any] = {"message": str(message)}
    if progress is not None:
        record["progress"] = round(min(100.0, max(0.0, float(progress))))
    path = os.path.join(_job_dir or os.getcwd(), PROGRESS_FILE)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


# --------------------------------------------------------------------------- errors


def _add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on a job Python older than 3.11."""
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        with contextlib.suppress(Exception):
            exc.__notes__ = notes
    notes.append(note)


def _is_cell_or_user_frame(filename: str, cell_filename: str) -> bool:
    return filename == cell_filename or os.path.normcase(os.path.abspath(filename)) != _THIS_FILE


def _trim_traceback(exc: BaseException, cell_filename: str) -> types.TracebackType | None:
    """The traceback of ``exc`` without the runner's own leading frames.

    When the cell's frames are in it, everything before the first cell frame goes
    (the runner, and asyncio for a cell with top-level ``await``).
    """
    tb = exc.__traceback__
    first_cell = tb
    while first_cell is not None and first_cell.tb_frame.f_code.co_filename != cell_filename:
        first_cell = first_cell.tb_next
    if first_cell is not None:
        return first_cell
    while tb is not None and not _is_cell_or_user_frame(tb.tb_frame.f_code.co_filename, cell_filename):
        tb = tb.tb_next
    return tb


def _pickle_exception(exc: BaseException) -> str | None:
    try:
        data = cloudpickle.dumps(exc, protocol=cloudpickle.DEFAULT_PROTOCOL)
    except BaseException:  # whatever the exception's own pickling code raises
        return None
    if len(data) > MAX_PICKLED_ERROR:
        return None
    import base64

    return base64.b64encode(data).decode("ascii")


def error_record(exc: BaseException, cell_filename: str) -> dict[str, Any]:
    """The ``_ds_error.json`` record of ``exc``; trims the runner frames from its traceback.

    Keys: ``type`` (qualified class name), ``module``, ``message``, ``traceback`` (frames
    of the cell and the code it called: filename, lineno, name, line), ``formatted`` (as
    Python prints it), ``lineno`` (the cell line, or null), ``pickled`` (base64 cloudpickle
    of the exception, or null when it cannot be pickled).
    """
    exc.__traceback__ = _trim_traceback(exc, cell_filename)
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    frames = [
        {"filename": fs.filename, "lineno": fs.lineno, "name": fs.name, "line": fs.line} for fs in te.stack
    ]
    lineno: int | None = None
    for fs in te.stack:
        if fs.filename == cell_filename:
            lineno = fs.lineno
    if isinstance(exc, SyntaxError) and exc.filename == cell_filename:
        lineno = exc.lineno
    formatted = "".join(te.format())
    if sys.version_info < (3, 11):  # noqa: UP036 - the job may run an older Python; it omits notes
        formatted += "".join(f"{note}\n" for note in getattr(exc, "__notes__", None) or ())
    try:
        message = str(exc)
    except Exception as e:  # a broken __str__ must not hide the error
        message = f"<unprintable {type(exc).__name__}: {type(e).__name__}>"
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": message,
        "traceback": frames,
        "formatted": formatted,
        "lineno": lineno,
        "pickled": _pickle_exception(exc),
    }


# --------------------------------------------------------------------------- files


# Hand-written (no common.connection / bundle helpers): the runner must not import the package.
def _write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def _fallback_record(error: BaseException, why: BaseException) -> dict[str, Any]:
    """The record of an exception whose own (``error_record``) could not be made: its type and
    message, no traceback."""
    name = type(error).__qualname__
    try:
        message = str(error)
    except BaseException:  # the same trouble again
        message = f"<unprintable {type(error).__name__}>"
    return {
        "type": name,
        "module": type(error).__module__,
        "message": message,
        "traceback": [],
        "formatted": f"{name}: {message}\n(no traceback: {type(why).__name__} while formatting it)\n",
        "lineno": None,
        "pickled": None,
    }


def _write_error_file(job_dir: str, error: BaseException | None, cell_filename: str) -> None:
    """``_ds_error.json``: ``null`` (no error) or the record of ``error``, whose traceback goes to
    stderr too. The job declares the file: it is written before the cell runs (so that it exists
    however the cell ends: ``sys.exit``, ``os._exit``, a signal) and again after it (so that the
    cell cannot have removed or changed it)."""
    record: dict[str, Any] | None = None
    if error is not None:
        try:
            record = error_record(error, cell_filename)
        except BaseException as e:  # whatever the exception does while it is described
            record = _fallback_record(error, e)
    _write_json(os.path.join(job_dir, ERROR_FILE), record)
    if record is not None:
        with contextlib.suppress(Exception):  # the cell may have closed or replaced stderr
            sys.stderr.write(record["formatted"])


def _read_manifest(job_dir: str) -> dict[str, Any]:
    path = os.path.join(job_dir, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise _JobDirError(f"{path}: no job manifest; is this a %%ds_job job dir?") from None
    except ValueError as e:
        raise _JobDirError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise _JobDirError(f"{path}: expected a JSON object")
    for key in ("inputs", "outputs"):
        value = manifest.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
            raise _JobDirError(f"{path}: {key!r} must be a list of variable names or null")
    for key in ("modules", "input_files"):
        value = manifest.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise _JobDirError(f"{path}: {key!r} must be an object of strings")
    return manifest


class _HashingWriter:
    """A write-only file object that hashes and counts what goes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        import hashlib

        self._f = f
        self.sha = hashlib.sha256()

    def write(self, b: Any) -> int:
        self.sha.update(b)
        return self._f.write(b)


# Own copy of common.bundle.sha256_file (pinned by a test): the runner must not import the package.
def _sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _dump(value: Any, path: str, hashed: bool = True) -> str:
    """Pickle ``value`` to ``path`` (streaming); returns the sha256 ("" unless ``hashed``).
    Leaves no file on error."""
    try:
        with open(path, "wb") as f:
            w = _HashingWriter(f) if hashed else f
            cloudpickle.dump(value, w, protocol=cloudpickle.DEFAULT_PROTOCOL)
    except BaseException:
        _unlink(path)
        raise
    return w.sha.hexdigest() if isinstance(w, _HashingWriter) else ""


# --------------------------------------------------------------------------- the run


class _Loaded:
    """Inputs as loaded: the objects (to tell an unchanged input) and their files."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.files: dict[str, str] = {}


def _load_inputs(job_dir: str, manifest: Mapping[str, Any], ns: dict[str, Any], loaded: _Loaded) -> None:
    input_files: Mapping[str, str] = manifest.get("input_files") or {}
    for name, module_name in (manifest.get("modules") or {}).items():
        try:
            ns[name] = loaded.objects[name] = importlib.import_module(module_name)
        except BaseException as e:
            _add_note(e, f"(while importing module {module_name!r} as input variable {name!r} of the cell)")
            raise
    for name in manifest.get("inputs") or ():
        path = os.path.join(job_dir, input_files.get(name, f"{INPUTS_DIR}/{name}.pkl"))
        top = os.path.join(job_dir, f"{name}.pkl")
        if not os.path.isfile(path) and name not in input_files and os.path.isfile(top):
            path = top
        try:
            with open(path, "rb") as f:
                value = cloudpickle.load(f)
        except BaseException as e:
            _add_note(e, f"(while loading input variable {name!r} of the cell from {os.path.basename(path)})")
            raise
        ns[name] = loaded.objects[name] = value
        loaded.files[name] = path


def _output_names(manifest: Mapping[str, Any], ns: Mapping[str, Any]) -> list[str]:
    listed = manifest.get("outputs")
    if listed is not None:
        return list(dict.fromkeys(listed))
    return [
        name
        for name, value in ns.items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    ]


def _write_outputs(job_dir: str, manifest: Mapping[str, Any], ns: Mapping[str, Any], loaded: _Loaded) -> None:
    out = os.path.join(job_dir, OUTPUTS_DIR)
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    written: list[str] = []
    unpicklable: dict[str, str] = {}
    missing: list[str] = []
    explicit = manifest.get("outputs") is not None
    names = _output_names(manifest, ns)
    for name in names:
        if not name.isidentifier():
            unpicklable[name] = "not a valid variable name"
            continue
        if name not in ns:
            missing.append(name)
            continue
        value = ns[name]
        path = os.path.join(out, f"{name}.pkl")
        # An input the cell did not rebind is returned (without a list) only if it was mutated:
        # only then is the pickle hashed, to compare it with the input's.
        unchanged = not explicit and name in loaded.files and loaded.objects[name] is value
        try:
            sha = _dump(value, path, hashed=unchanged)
        except Exception as e:
            unpicklable[name] = f"{type(e).__name__}: {e}"
            continue
        if unchanged and sha == _sha256_file(loaded.files[name]):
            _unlink(path)
            continue
        written.append(name)
    # Each listed name is a declared output file of the job: one that did not come back gets an
    # empty file (the manifest says why), so that no declared output is missing.
    came_back = set(written)
    for name in names if explicit else ():
        if name not in came_back and name.isidentifier():
            with open(os.path.join(out, f"{name}.pkl"), "wb"):
                pass
    _write_json(
        os.path.join(out, OUTPUTS_MANIFEST),
        {"outputs": written, "unpicklable": unpicklable, "missing": missing},
    )
    # A job that declares each output file on its own (the magic does) needs no ZIP of them.
    if manifest.get("zip_outputs", True):
        _zip_dir(out, os.path.join(job_dir, OUTPUTS_ZIP))


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# Not common.bundle.zip_path (deterministic, for inputs): the runner must not import the package.
def _zip_dir(src: str, dest: str) -> None:
    tmp = dest + ".tmp"
    import zipfile

    with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for name in sorted(os.listdir(src)):
            path = os.path.join(src, name)
            if not os.path.isfile(path):
                continue
            big = os.path.getsize(path) > _DEFLATE_LIMIT
            zf.write(
                path,
                name,
                compress_type=zipfile.ZIP_STORED if big else zipfile.ZIP_DEFLATED,
                compresslevel=None if big else 1,
            )
    os.replace(tmp, dest)


def _new_main(cell_filename: str) -> types.ModuleType:
    mod = types.ModuleType("__main__")
    mod.__dict__["__builtins__"] = builtins
    mod.__dict__["__spec__"] = None
    mod.__dict__["__loader__"] = None
    sys.modules["__main__"] = mod
    return mod


def _compile_cell(source: str, cell_filename: str) -> types.CodeType:
    # dont_inherit: the runner's own ``from __future__`` flags must not leak into the cell.
    code: types.CodeType = compile(
        source, cell_filename, "exec", flags=_PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    return code


def _exec_cell(code: types.CodeType, ns: dict[str, Any]) -> None:
    result = eval(code, ns)
    if code.co_flags & _CO_COROUTINE:
        import asyncio  # only for cells with top-level await: it costs ~40 ms to import

        asyncio.run(result)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _line_buffered(streams: Iterable[Any]) -> None:
    for stream in streams:
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    """Run the cell of the job dir ``argv[0]`` (default: the current directory)."""
    global _job_dir
    args = sys.argv[1:] if argv is None else argv
    job_dir = os.path.realpath(args[0] if args else os.getcwd())
    _job_dir = job_dir
    _line_buffered((sys.stdout, sys.stderr))
    # ``import _ds_runner`` in the cell gets this module, not a second copy.
    this = sys.modules.get(__name__)
    if this is not None:
        sys.modules.setdefault("_ds_runner", this)
    if job_dir not in sys.path:
        sys.path.insert(0, job_dir)

    try:
        _write_error_file(job_dir, None, "")
    except OSError as e:
        print(f"ds_job runner: cannot write {ERROR_FILE} into the job dir: {e}", file=sys.stderr)
        return 2
    try:
        manifest = _read_manifest(job_dir)
        cell_path = os.path.join(job_dir, CELL_FILE)
        try:
            with open(cell_path, encoding="utf-8") as f:
                source = f.read()
        except FileNotFoundError:
            raise _JobDirError(f"{cell_path}: no cell source") from None
    except _JobDirError as e:
        print(f"ds_job runner: {e}", file=sys.stderr)
        return 2
    cell_filename = str(manifest.get("cell_filename") or "<cell>")
    linecache.cache[cell_filename] = (len(source), None, source.splitlines(True), cell_filename)

    mod = _new_main(cell_filename)
    ns = mod.__dict__
    loaded = _Loaded()
    error: BaseException | None = None
    exit_code = 0
    try:
        _load_inputs(job_dir, manifest, ns, loaded)
        code = _compile_cell(source, cell_filename)
        _exec_cell(code, ns)
    except SystemExit as e:
        exit_code = _exit_code(e)
    except BaseException as e:
        error = e
        exit_code = 1
    _flush()

    try:
        _write_error_file(job_dir, error, cell_filename)
    except OSError as e:
        print(f"ds_job runner: could not write {ERROR_FILE}: {e}", file=sys.stderr)
        exit_code = exit_code or 1
    # Like a notebook, what the cell bound before it raised is kept (and returned).
    try:
        _write_outputs(job_dir, manifest, ns, loaded)
    except Exception as e:
        print(f"ds_job runner: could not write the outputs: {type(e).__name__}: {e}", file=sys.stderr)
        exit_code = exit_code or 1
    _flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
