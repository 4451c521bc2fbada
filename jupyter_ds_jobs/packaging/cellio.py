"""Kernel side of a ``%%ds_job`` cell: write the job dir and inputs, read outputs and errors.

The job side is :mod:`jupyter_ds_jobs.packaging.runner` (copied into the job as
``_ds_runner.py``); the file names and JSON layouts are defined there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import types
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import cloudpickle

from jupyter_ds_jobs.common.contract import MAX_FILE_BYTES
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging import runner
from jupyter_ds_jobs.packaging.runner import (
    CELL_FILE,
    INPUTS_DIR,
    MANIFEST_FILE,
    OUTPUTS_MANIFEST,
    RUNNER_FILE,
)

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "InputTooLarge",
    "RemoteError",
    "UnpicklableInput",
    "load_error",
    "module_inputs",
    "read_outputs",
    "write_inputs",
    "write_job_dir",
]

DEFAULT_MAX_INPUT_BYTES = MAX_FILE_BYTES  # each input pickle is one job file


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - unreachable


class InputTooLarge(InvalidArgument):
    """An input variable whose pickle is over ``max_bytes``; ``size`` is its pickled size."""

    def __init__(self, name: str, size: int, max_bytes: int) -> None:
        super().__init__(
            f"input variable {name!r} is {_human(size)} ({size} bytes) when pickled, over the limit of "
            f"{_human(max_bytes)} (max_bytes={max_bytes}); save it to a file and read it in the cell, "
            "or raise the limit"
        )
        self.field = name
        self.name = name
        self.size = size
        self.max_bytes = max_bytes


class UnpicklableInput(InvalidArgument):
    """An input variable that cloudpickle cannot pickle; ``cause`` is the pickling error."""

    def __init__(self, name: str, cause: BaseException, type_name: str | None = None) -> None:
        of_type = f" (a {type_name})" if type_name else ""
        super().__init__(
            f"input variable {name!r}{of_type} cannot be pickled: {type(cause).__name__}: {cause}; "
            "create it inside the cell instead"
        )
        self.field = name
        self.name = name
        self.cause = cause


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidArgument(f"{name!r} is not a valid Python variable name", field="names")


def module_inputs(namespace: Mapping[str, object], names: Sequence[str]) -> dict[str, str]:
    """The inputs among ``names`` that are modules, as ``{name: module name}``.

    :func:`write_inputs` skips these; pass them to :func:`write_job_dir` so that the
    runner does ``import <module> as <name>``.
    """
    return {
        name: value.__name__ for name in names if isinstance(value := namespace.get(name), types.ModuleType)
    }


class _LimitedWriter:
    """Writes to ``f`` until ``limit`` bytes, then only counts (so the size can be reported)."""

    def __init__(self, f: IO[bytes], limit: int | None) -> None:
        self._f = f
        self._limit = limit
        self.size = 0

    @property
    def over(self) -> bool:
        return self._limit is not None and self.size > self._limit

    def write(self, b: Any) -> int:
        n = memoryview(b).nbytes
        self.size += n
        if not self.over:
            self._f.write(b)
        return n


def write_inputs(
    namespace: Mapping[str, object],
    names: Sequence[str],
    dest: Path,
    *,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
) -> dict[str, Path]:
    """Cloudpickle each variable of ``names`` to ``dest/<name>.pkl``, streaming to disk.

    Each variable is pickled on its own, so equal objects give equal bytes where pickle
    is deterministic (and an unchanged large variable dedups by sha256). Module objects
    are skipped (see :func:`module_inputs`). Raises :class:`UnpicklableInput` or
    :class:`InputTooLarge` naming the variable, and leaves no partial file behind; a
    name missing from ``namespace`` is an :class:`InvalidArgument`. Returns ``{name: path}``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in dict.fromkeys(names):
        _check_name(name)
        if name not in namespace:
            raise InvalidArgument(f"input variable {name!r} is not defined", field=name)
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            continue
        path = dest / f"{name}.pkl"
        tmp = dest / f".{name}.pkl.tmp"
        try:
            with open(tmp, "wb") as f:
                w = _LimitedWriter(f, max_bytes)
                cloudpickle.dump(value, w, protocol=cloudpickle.DEFAULT_PROTOCOL)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise UnpicklableInput(name, e, type(value).__qualname__) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if w.over:
            tmp.unlink(missing_ok=True)
            assert max_bytes is not None
            raise InputTooLarge(name, w.size, max_bytes)
        os.replace(tmp, path)
        paths[name] = path
    return paths


def write_job_dir(
    dest: Path,
    cell_source: str,
    inputs: Sequence[str],
    outputs: Sequence[str] | None,
    modules: Mapping[str, str],
    cell_filename: str = "<cell>",
    *,
    zip_outputs: bool = True,
) -> None:
    """Write the cell, a copy of the runner and the manifest into the job dir ``dest``.

    ``inputs`` are the pickled input variables (in ``dest/_ds_inputs/``, see
    :func:`write_inputs`), ``outputs`` the variables to bring back (``None``: every
    top-level name the cell bound, except modules, ``_names`` and unchanged inputs),
    ``modules`` the inputs passed by reference as ``{name: module name}``. With
    ``zip_outputs`` the runner also writes ``_ds_outputs.zip``; a job that declares each
    ``_ds_outputs/<name>.pkl`` as an output file of its own does without it.
    """
    dest = Path(dest)
    for name in [*inputs, *(outputs or ()), *modules]:
        _check_name(name)
    both = sorted(set(inputs) & set(modules))
    if both:
        raise InvalidArgument(f"variable {both[0]!r} is both a pickled input and a module", field="modules")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / INPUTS_DIR).mkdir(exist_ok=True)
    with open(dest / CELL_FILE, "w", encoding="utf-8", newline="") as f:
        f.write(cell_source)
    shutil.copyfile(Path(runner.__file__), dest / RUNNER_FILE)
    manifest = {
        "inputs": list(dict.fromkeys(inputs)),
        "outputs": None if outputs is None else list(dict.fromkeys(outputs)),
        "cell_filename": cell_filename,
        "modules": dict(modules),
        "zip_outputs": zip_outputs,
    }
    with open(dest / MANIFEST_FILE, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)


# --------------------------------------------------------------------------- outputs


@contextlib.contextmanager
def _opener(path: Path) -> Iterator[tuple[Mapping[str, Any], Any]]:
    """Yields (outputs manifest, open(name) -> binary file) for a dir or a ZIP of it."""
    if path.is_dir():
        with open(path / OUTPUTS_MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)

        def open_dir(name: str) -> IO[bytes]:
            return open(path / name, "rb")

        yield manifest, open_dir
        return
    with zipfile.ZipFile(path) as zf:
        # The runner writes the entries at the top; a server zipping the dir may prefix them.
        entries = [n for n in zf.namelist() if n == OUTPUTS_MANIFEST or n.endswith("/" + OUTPUTS_MANIFEST)]
        if not entries:
            raise InvalidArgument(f"{path}: no {OUTPUTS_MANIFEST} in the outputs ZIP", field="outputs")
        prefix = min(entries, key=len)[: -len(OUTPUTS_MANIFEST)]
        with zf.open(prefix + OUTPUTS_MANIFEST) as zf_manifest:
            manifest = json.load(zf_manifest)

        def open_zip(name: str) -> IO[bytes]:
            return zf.open(prefix + name)

        yield manifest, open_zip


def read_outputs(outputs_dir_or_zip: Path) -> tuple[dict[str, object], dict[str, str]]:
    """Load the outputs of a job: ``(values, unpicklable)``.

    ``outputs_dir_or_zip`` is the ``_ds_outputs`` dir or ``_ds_outputs.zip``. Each value
    is unpickled from its file (streamed). ``unpicklable`` maps a variable to the reason
    it did not come back: it could not be pickled in the job, or not be unpickled here
    (e.g. a package missing in the kernel).
    """
    path = Path(outputs_dir_or_zip)
    values: dict[str, object] = {}
    with _opener(path) as (manifest, open_file):
        unpicklable = {str(k): str(v) for k, v in (manifest.get("unpicklable") or {}).items()}
        for name in manifest.get("outputs") or ():
            try:
                with open_file(f"{name}.pkl") as f:
                    values[name] = cloudpickle.load(f)
            except Exception as e:
                unpicklable[name] = f"could not be unpickled in the kernel: {type(e).__name__}: {e}"
    return values, unpicklable


# --------------------------------------------------------------------------- errors


class RemoteError(Exception):
    """An exception raised by the cell in the job; ``str()`` is the remote traceback.

    Used as is when the original exception cannot be rebuilt in the kernel, and as the
    ``__cause__`` of the original exception when it can.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        formatted: str = "",
        *,
        module: str | None = None,
        frames: Sequence[Mapping[str, Any]] = (),
        lineno: int | None = None,
    ) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message
        self.formatted = formatted
        self.module = module
        self.frames = list(frames)
        self.lineno = lineno

    def __str__(self) -> str:
        text = self.formatted.rstrip("\n")
        if text:
            return "\n" + text
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


def load_error(error_json: Path) -> BaseException | None:
    """The exception the cell raised in the job, from ``_ds_error.json``; None when it raised none.

    The original exception (unpickled) when possible, with ``__cause__`` a
    :class:`RemoteError` carrying the remote traceback; otherwise that RemoteError. The runner
    writes ``null`` when the cell did not raise (older runners wrote no file then).
    """
    with open(error_json, encoding="utf-8") as f:
        record = json.load(f)
    if record is None:
        return None
    if not isinstance(record, dict):
        raise InvalidArgument(f"{error_json}: expected a JSON object", field="error")
    remote = RemoteError(
        str(record.get("type") or "Exception"),
        str(record.get("message") or ""),
        str(record.get("formatted") or ""),
        module=record.get("module"),
        frames=record.get("traceback") or (),
        lineno=record.get("lineno"),
    )
    pickled = record.get("pickled")
    if pickled:
        try:
            exc = cloudpickle.loads(base64.b64decode(pickled))
        except Exception as e:
            remote.add_note(f"(the original exception could not be rebuilt here: {type(e).__name__}: {e})")
            return remote
        if isinstance(exc, BaseException):
            exc.__cause__ = remote
            exc.__suppress_context__ = True
            return exc
    return remote
