"""Turn one notebook cell and the kernel's namespace into a job: ``JobParameters`` + local files.

Used by the ``%%ds_job`` magic; no IPython import here. :func:`build_cell_job` does, in order,
everything that can refuse a cell *before* anything is submitted:

1. static analysis of the cell (:func:`~jupyter_ds_jobs.packaging.cell.analyze_cell`): IPython-only
   syntax (``!cmd``, ``%magic``) is refused naming the line;
2. inputs: the names the cell reads that exist in the namespace (or ``inputs``), each pickled with
   cloudpickle to its own file (modules go by reference, as ``import``), refused naming the variable
   when it cannot be pickled or is over ``max_input_bytes``;
3. outputs: the names the cell assigns (or ``outputs``; none with ``no_outputs``);
4. local modules the cell imports (transitively) as ZIPs, and pinned ``name==version``
   requirements of the installed distributions used by the cell, those modules and the objects
   sent (``requirements="auto"``, the same analysis as the CLI's ``python: auto``);
5. files (:func:`~jupyter_ds_jobs.packaging.files.find_file_refs`, shared with notebooks): what
   the cell reads by literal relative path that exists in ``base_dir`` goes in at the same
   relative path; what it writes is declared as an output file, to come back beside the notebook
   (files over ``max_output_file_bytes`` stay with the job; the handle says so).

The job's working directory holds the runner's job dir (see :mod:`.runner`)::

    _ds_cell.py  _ds_runner.py  _ds_manifest.json  _ds_inputs/<name>.pkl  <extra input files>

and the files the cell reads at their relative paths; the job runs ``python _ds_runner.py``. Each input pickle is its own job input file, so the
server's content addressing dedupes an unchanged one: it is hashed again, never uploaded again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import ENV_NAME_RE, MAX_FILE_BYTES
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.common.requirements import read_requirements_file
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.packaging import cellio
from jupyter_ds_jobs.packaging.analysis import analyze_source, requirements_for_modules
from jupyter_ds_jobs.packaging.cell import CellAnalysis, analyze_cell
from jupyter_ds_jobs.packaging.files import find_file_refs
from jupyter_ds_jobs.packaging.jobspec_python import local_module_files
from jupyter_ds_jobs.packaging.runner import (
    CELL_FILE,
    ERROR_FILE,
    INPUTS_DIR,
    MANIFEST_FILE,
    OUTPUTS_DIR,
    OUTPUTS_MANIFEST,
    OUTPUTS_ZIP,
    RUNNER_FILE,
)

__all__ = [
    "CELL_FILENAME",
    "DEFAULT_MAX_OUTPUT_FILE_BYTES",
    "RESERVED_PREFIX",
    "CellJob",
    "CellJobOptions",
    "CellResults",
    "IPythonSyntaxError",
    "build_cell_job",
    "is_cell_output",
    "kernel_python_version",
    "load_cell_results",
    "object_modules",
    "output_path",
    "over_cap_message",
    "parse_env",
    "parse_file_spec",
]

#: The name of the cell in remote tracebacks.
CELL_FILENAME = "<ds_job cell>"
_RUNNER_CMD = f"python {RUNNER_FILE}"
#: The runner's own files in the job dir start so: no --file or --output-file may.
RESERVED_PREFIX = "_ds_"
#: Files the job writes come back up to this size each (a directory: its ZIP), unless named.
DEFAULT_MAX_OUTPUT_FILE_BYTES = 100 * 2**20


class IPythonSyntaxError(InvalidArgument):
    """The cell uses IPython-only syntax (``!cmd``, ``%magic``) that the job cannot run."""

    def __init__(self, lineno: int, text: str) -> None:
        super().__init__(
            f"cell line {lineno}: {text!r} is IPython syntax, which the job (plain Python) cannot run; "
            "run it in a cell of its own before the %%ds_job cell, or use subprocess / the module's API"
        )
        self.field = f"line {lineno}"
        self.lineno = lineno
        self.text = text


def kernel_python_version() -> str:
    """The kernel's Python ``major.minor``: what the job runs on by default."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass
class CellJobOptions:
    """What the magic's options say about packaging (see ``%%ds_job?``)."""

    inputs: Sequence[str] | None = None
    """Variables to send (overrides the analysis); ``None``: what the cell reads."""
    outputs: Sequence[str] | None = None
    """Variables to bring back (overrides the analysis); ``None``: what the cell assigns."""
    no_outputs: bool = False
    files: Sequence[tuple[Path, str]] = ()
    """Extra input files ``(local path, VAR)``; VAR (may be empty) holds the path in the job."""
    output_files: Sequence[str] = ()
    """Extra files the job writes (relative paths), brought back beside the notebook."""
    requirements: str = "auto"
    """``auto`` (pinned from the analysis), ``none``, or a requirements file."""
    pip: Sequence[str] = ()
    python: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    instance_types: Sequence[str] = ()
    graceful_timeout: float | None = None
    search_path: Sequence[Path] = ()
    """Where local modules are looked for (the notebook's directory...); default: the cwd."""
    max_input_bytes: int | None = cellio.DEFAULT_MAX_INPUT_BYTES
    base_dir: Path | None = None
    """Where the cell's relative paths are (the notebook's directory); default: the cwd."""
    read_files: bool = True
    """Send the files the cell reads by literal relative path (``--no-input-files``: off)."""
    written_files: bool = True
    """Bring back the files the cell writes by literal relative path (``--no-output-files``: off)."""
    max_output_file_bytes: int | None = DEFAULT_MAX_OUTPUT_FILE_BYTES
    """Output files larger than this (each) stay with the job unless named with ``--output-file``."""


@dataclass
class CellJob:
    """A packaged cell: what to send (``params`` + ``files``) and what the analysis found."""

    params: jobs_pb2.JobParameters
    files: list[LocalFile]
    inputs: list[str]
    """Variables pickled and sent."""
    modules: dict[str, str]
    """Inputs sent by reference: ``{variable: module name}``."""
    outputs: list[str] | None
    """Variables to bring back (``[]`` for none)."""
    deletes: list[str]
    """Variables the cell deletes (``del x``): removed from the namespace after a success."""
    requirements: list[str]
    local_modules: list[Path]
    unresolved: list[str]
    """Imported modules neither local, standard nor installed here (the job may fail on them)."""
    input_sizes: dict[str, int]
    output_files: list[str]
    """The output files named (``--output-file``)."""
    staging: Path
    analysis: CellAnalysis
    read_files: list[str] = field(default_factory=list)
    """Files the cell reads (found by the analysis), sent at their relative paths."""
    written_files: list[str] = field(default_factory=list)
    """Files the cell writes (found by the analysis), declared as output files."""
    max_output_file_bytes: int | None = DEFAULT_MAX_OUTPUT_FILE_BYTES

    def cleanup(self) -> None:
        """Remove the staging directory (the pickles); call once the job is created."""
        shutil.rmtree(self.staging, ignore_errors=True)


# --------------------------------------------------------------------------- option parsing


def parse_file_spec(spec: str) -> tuple[Path, str]:
    """``PATH[:VAR]`` of ``--file``; VAR must be a valid Python name (it becomes one in the job)."""
    path, sep, var = spec.rpartition(":")
    if not sep or not var.isidentifier() or not path:
        path, var = spec, ""
    if not path:
        raise InvalidArgument("empty path", field="--file")
    return Path(path).expanduser(), var


def parse_env(items: Iterable[str]) -> dict[str, str]:
    """``K=V`` items of ``--env``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not ENV_NAME_RE.fullmatch(key):
            raise InvalidArgument(f"{item!r}: expected NAME=VALUE", field="--env")
        out[key] = value
    return out


def _names(items: Sequence[str] | None, what: str) -> list[str] | None:
    if items is None:
        return None
    out: list[str] = []
    for item in items:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if not name.isidentifier():
                raise InvalidArgument(f"{name!r} is not a valid Python variable name", field=what)
            out.append(name)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- requirements


def object_modules(value: object, *, depth: int = 2, max_items: int = 64) -> set[str]:
    """Modules a pickled ``value`` needs on the other side (its type's, a function's globals...).

    A bounded walk: containers are looked into ``depth`` levels deep, ``max_items`` items each;
    functions and classes defined in the notebook (``__main__``, pickled by value) add the modules
    their global names refer to.
    """
    found: set[str] = set()
    seen: set[int] = set()

    def add_module_of(obj: object) -> None:
        mod = getattr(obj, "__module__", None)
        if isinstance(mod, str) and mod:
            found.add(mod)

    def walk(obj: object, level: int) -> None:
        if id(obj) in seen or level < 0:
            return
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            found.add(obj.__name__)
            return
        add_module_of(type(obj))
        if isinstance(obj, types.FunctionType):
            add_module_of(obj)
            if obj.__module__ == "__main__":
                g = obj.__globals__
                for name in obj.__code__.co_names:
                    if name in g:
                        walk(g[name], level - 1)
                for cell in obj.__closure__ or ():
                    with contextlib.suppress(ValueError):
                        walk(cell.cell_contents, level - 1)
            return
        if isinstance(obj, type):
            add_module_of(obj)
            for base in obj.__mro__[1:]:
                add_module_of(base)
            if obj.__module__ == "__main__":
                for attr in list(vars(obj).values())[:max_items]:
                    walk(attr, level - 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for i, item in enumerate(obj):
                if i >= max_items:
                    break
                walk(item, level - 1)
        elif isinstance(obj, dict):
            for i, (k, v) in enumerate(obj.items()):
                if i >= max_items:
                    break
                walk(k, level - 1)
                walk(v, level - 1)
        elif getattr(type(obj), "__module__", "") == "__main__":
            with contextlib.suppress(TypeError):
                for i, v in enumerate(vars(obj).values()):
                    if i >= max_items:
                        break
                    walk(v, level - 1)

    walk(value, depth)
    found.discard("builtins")
    found.discard("__main__")
    return found


# --------------------------------------------------------------------------- building the job


def _desc_path_for(local: Path) -> str:
    return local.name or "input"


def build_cell_job(
    source: str,
    namespace: Mapping[str, object],
    options: CellJobOptions | None = None,
    *,
    staging_root: Path | None = None,
) -> CellJob:
    """Package ``source`` (the cell body, line 1 = the line after ``%%ds_job``) with ``namespace``.

    Raises :class:`IPythonSyntaxError`, :class:`~.cellio.UnpicklableInput`,
    :class:`~.cellio.InputTooLarge` or ``InvalidArgument`` (naming the variable, line, file or
    option) before anything is written outside ``staging_root``. The caller owns the returned
    job's staging dir (:meth:`CellJob.cleanup`).
    """
    opts = options or CellJobOptions()
    analysis = analyze_cell(source)
    for lineno, text in analysis.ipython_syntax:
        raise IPythonSyntaxError(lineno + 1, text)  # +1: the %%ds_job line is line 1 of the cell

    explicit_inputs = _names(opts.inputs, "--inputs")
    if explicit_inputs is not None:
        missing = [n for n in explicit_inputs if n not in namespace]
        if missing:
            raise InvalidArgument(f"input variable {missing[0]!r} is not defined", field="--inputs")
        input_names = explicit_inputs
    else:
        input_names = [n for n in analysis.reads if n in namespace]
    if opts.no_outputs:
        outputs: list[str] | None = []
    else:
        outputs = _names(opts.outputs, "--outputs")
        if outputs is None:
            outputs = list(analysis.assigns)

    # extra input files: checked before any pickling
    file_vars: dict[str, str] = {}
    extra_files: list[LocalFile] = []
    used_paths: set[str] = set()
    for local, var in opts.files:
        local = Path(local).expanduser()
        if not local.exists():
            raise InvalidArgument(f"no such file or directory: {str(local)!r}", field="--file")
        desc = _desc_path_for(local)
        if desc in used_paths or desc.startswith(RESERVED_PREFIX):
            raise InvalidArgument(f"two input files named {desc!r} (or a reserved name)", field="--file")
        used_paths.add(desc)
        is_dir = local.is_dir()
        extra_files.append(LocalFile(local_path=local.absolute(), desc_path=desc, var="", zip=is_dir))
        if var:
            if var in input_names:
                raise InvalidArgument(
                    f"variable {var!r} is both an input variable and a --file", field="--file"
                )
            file_vars[var] = desc
    output_files: list[str] = []
    for path in opts.output_files:
        p = PurePosixPath(path.replace(os.sep, "/"))
        if p.is_absolute() or ".." in p.parts or not p.parts or str(p).startswith(RESERVED_PREFIX):
            raise InvalidArgument(
                f"{path!r} must be a relative path inside the job's directory, without '..'",
                field="--output-file",
            )
        output_files.append(str(p))
    read_files, read_paths, written = _found_files(
        source, namespace, opts, analysis, used_paths, output_files
    )

    staging = Path(tempfile.mkdtemp(prefix="ds-cell-", dir=staging_root))
    try:
        job = _stage(source, namespace, opts, analysis, input_names, outputs, file_vars, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    job.files.extend(extra_files + read_files)
    job.output_files = output_files
    job.read_files, job.written_files = read_paths, written
    job.max_output_file_bytes = opts.max_output_file_bytes
    for path in output_files + written:
        job.params.output_files.add(path=path)
    return job


def _size_past(path: Path, limit: int) -> int:
    """The size of a file, or of a directory's files until their sum passes ``limit`` (a directory
    goes as one ZIP input: one job file)."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
            if total > limit:
                return total
    return total


def _found_files(
    source: str,
    namespace: Mapping[str, object],
    opts: CellJobOptions,
    analysis: CellAnalysis,
    named_inputs: set[str],
    named_outputs: Sequence[str],
) -> tuple[list[LocalFile], list[str], list[str]]:
    """The files the cell reads (as job inputs at their relative paths) and writes (output
    paths), besides the ``--file`` / ``--output-file`` ones; refuses a read over the file limit."""
    if not (opts.read_files or opts.written_files):
        return [], [], []
    base = Path(opts.base_dir) if opts.base_dir is not None else Path.cwd()
    values = {n: namespace[n] for n in analysis.reads if n in namespace}
    refs = find_file_refs(source, base, filename=CELL_FILENAME, values=values)

    def taken(path: str, named: Iterable[str]) -> bool:
        return path.startswith(RESERVED_PREFIX) or any(path == n or path.startswith(n + "/") for n in named)

    files: list[LocalFile] = []
    reads: list[str] = []
    for path in refs.reads if opts.read_files else []:
        if taken(path, named_inputs):
            continue
        local = base / path
        size = _size_past(local, MAX_FILE_BYTES)
        if size > MAX_FILE_BYTES:
            raise InvalidArgument(
                f"the cell reads {path!r} ({'over ' if local.is_dir() else ''}{cellio._human(size)}), over the job's "
                f"{cellio._human(MAX_FILE_BYTES)} file limit; add --no-input-files and read it "
                "another way (e.g. from the project disk)",
                field=f"line {refs.lines.get(path, 0) + 1}",
            )
        files.append(LocalFile(local_path=local.absolute(), desc_path=path, var="", zip=local.is_dir()))
        reads.append(path)
    writes = [p for p in refs.writes if not taken(p, named_outputs)] if opts.written_files else []
    return files, reads, writes


def _stage(
    source: str,
    namespace: Mapping[str, object],
    opts: CellJobOptions,
    analysis: CellAnalysis,
    input_names: list[str],
    outputs: list[str] | None,
    file_vars: Mapping[str, str],
    staging: Path,
) -> CellJob:
    modules = cellio.module_inputs(namespace, input_names)
    pickled = [n for n in input_names if n not in modules]
    ns: dict[str, object] = {n: namespace[n] for n in pickled}
    ns.update(file_vars)  # a --file VAR is a str variable holding the path in the job
    pickled += [v for v in file_vars if v not in pickled]
    paths = cellio.write_inputs(ns, pickled, staging / INPUTS_DIR, max_bytes=opts.max_input_bytes)
    # "\n" first: line numbers in remote tracebacks are those of the notebook cell (%%ds_job = 1)
    # Known outputs are declared one file each: no ZIP to write in the job, none to open here.
    cellio.write_job_dir(
        staging,
        "\n" + source,
        pickled,
        outputs,
        modules,
        cell_filename=CELL_FILENAME,
        zip_outputs=outputs is None,
    )
    params = jobs_pb2.JobParameters(cmd=_RUNNER_CMD)
    files = _job_files(params, staging, pickled, paths, outputs)
    requirements, local_modules, unresolved = _environment(params, source, namespace, opts, modules, pickled)
    files.extend(local_module_files(local_modules))
    return CellJob(
        params=params,
        files=files,
        inputs=[n for n in pickled if n not in file_vars],
        modules=modules,
        outputs=outputs,
        deletes=list(analysis.deletes),
        requirements=requirements,
        local_modules=local_modules,
        unresolved=unresolved,
        input_sizes={n: p.stat().st_size for n, p in paths.items()},
        output_files=[],
        staging=staging,
        analysis=analysis,
    )


def _job_files(
    params: jobs_pb2.JobParameters,
    staging: Path,
    pickled: Sequence[str],
    paths: Mapping[str, Path],
    outputs: list[str] | None,
) -> list[LocalFile]:
    """The job dir's input files (runner, cell, manifest, one per pickle); its output files into ``params``."""
    files: list[LocalFile] = [
        LocalFile(local_path=staging / name, desc_path=name, var="", zip=False)
        for name in (CELL_FILE, RUNNER_FILE, MANIFEST_FILE)
    ]
    for name in pickled:
        files.append(
            LocalFile(local_path=paths[name], desc_path=f"{INPUTS_DIR}/{name}.pkl", var="", zip=False)
        )
    if outputs is not None:
        for name in [*dict.fromkeys(outputs), OUTPUTS_MANIFEST[:-5]]:
            params.output_files.add(path=output_path(name))
    else:
        params.output_files.add(path=OUTPUTS_ZIP)
    params.output_files.add(path=ERROR_FILE)
    return files


def _environment(
    params: jobs_pb2.JobParameters,
    source: str,
    namespace: Mapping[str, object],
    opts: CellJobOptions,
    modules: Mapping[str, str],
    pickled: Sequence[str],
) -> tuple[list[str], list[Path], list[str]]:
    """The job's environment into ``params``; returns (requirements, local modules, unresolved)."""
    py = params.env.python_env
    py.python_version = opts.python or kernel_python_version()
    search = [Path(p) for p in opts.search_path] or [Path.cwd()]
    needed: set[str] = set(modules.values())
    for name in pickled:
        if name in namespace:
            needed |= object_modules(namespace[name])
    found = analyze_source("\n" + source, search, filename=CELL_FILENAME, extra_modules=sorted(needed))
    requirements: list[str] = []
    unresolved: list[str] = []
    mode = opts.requirements
    if mode == "auto":
        requirements = list(found.requirements)
        unresolved = list(found.unresolved)
        cp, _ = requirements_for_modules(["cloudpickle"])  # the runner needs it
        for pin in cp:
            if pin not in requirements:
                requirements.append(pin)
    elif mode != "none":
        pip = jobs_pb2.PipOptions()
        requirements = read_requirements_file(Path(mode).expanduser(), pip, field="--requirements")
        if pip.ListFields():
            py.pip_options.CopyFrom(pip)
    for spec in opts.pip:
        if spec not in requirements:
            requirements.append(spec)
    py.requirements.extend(requirements)
    for k, v in opts.env.items():
        params.env.vars[k] = v
    for t in opts.instance_types:
        params.cloud_instance_types.add(name=t)
    if opts.graceful_timeout is not None:
        gsp = params.graceful_shutdown_parameters
        gsp.timeout.FromNanoseconds(int(opts.graceful_timeout * 1e9))
    return requirements, list(found.local_modules), unresolved


# --------------------------------------------------------------------------- results


@dataclass
class CellResults:
    """What came back from a cell's job."""

    values: dict[str, object] = field(default_factory=dict)
    unpicklable: dict[str, str] = field(default_factory=dict)
    """Returned names that could not be pickled in the job / unpickled here, with the reason."""
    error: BaseException | None = None
    """The exception the cell raised in the job (rebuilt, ``__cause__`` the remote traceback)."""


def over_cap_message(path: str, size: int, cap: int, job_id: str) -> str:
    """Why output file ``path`` of ``size`` bytes did not come back (over ``cap``), and what to do."""
    return (
        f"{path!r} ({cellio._human(size)}) was not brought back: over the {cellio._human(cap)} cap "
        f"on files coming back; it stays with the job (jupyter ds-jobs download {job_id}), or run "
        f"the cell again with --output-file {path} or --max-output-file-size {-(-size // 2**20)}M"
    )


def output_path(name: str) -> str:
    """The output file of variable ``name`` (``_manifest`` for the outputs manifest)."""
    return f"{OUTPUTS_DIR}/{name}.{'json' if name == OUTPUTS_MANIFEST[:-5] else 'pkl'}"


def is_cell_output(path: str) -> bool:
    """Is ``path`` one of the files the runner writes for the magic (not a user's output file)?"""
    return path in (OUTPUTS_ZIP, ERROR_FILE) or path.startswith(OUTPUTS_DIR + "/")


def load_cell_results(outputs: Path | None, error_json: Path | None) -> CellResults:
    """Load a finished cell job's outputs (the ``_ds_outputs`` dir or ``_ds_outputs.zip``) and
    ``_ds_error.json`` (either may be None; no error file, from an older runner, and its ``null``
    both mean that the cell raised nothing)."""
    res = CellResults()
    if outputs is not None and Path(outputs).exists():
        res.values, res.unpicklable = cellio.read_outputs(Path(outputs))
    if error_json is not None and Path(error_json).exists():
        res.error = cellio.load_error(Path(error_json))
    return res
