"""A whole notebook -> a job: parameters injected, cells analysed, a ``config.yaml`` equivalent.

:func:`build_notebook_job` reads the notebook (plain JSON, no nbformat import), injects the
parameters (:mod:`.nbparams`) and analyses the code of the cells that will run, refusing before
anything is submitted, with the cell named (``cell N``: its position in the notebook, the numbers
of the job's logs and progress, see :func:`~.nbrunner.cell_labels`):

* a syntax error (IPython syntax is fine: ``%magic``, ``!cmd``, ``%%bash``; a ``%%ds_job`` cell's
  body is Python);
* a file read by a literal relative path that does not exist beside the notebook and that no cell
  writes (:func:`~.files.find_file_refs`, the analysis ``%%ds_job`` shares).

What it finds goes in: local modules (shipped as ZIPs), pinned requirements of the installed
distributions the cells import plus ``ipython`` (the runner's one need), the files the cells read
(at the same relative paths). The job's working directory is the notebook's directory::

    NOTEBOOK.ipynb  _ds_nbrunner.py  <files read>  <local modules>

and it runs ``python _ds_nbrunner.py NOTEBOOK.ipynb STEM.executed.ipynb`` (:mod:`.nbrunner`). Outputs:
the executed notebook, the ``--output-file`` paths, and either ``_ds_files/`` (``collect``: the
files the notebook created or changed, each up to :data:`DEFAULT_MAX_FILE_BYTES`; what
``run-notebook`` does) or the paths the cells write by literal path (a ``convert``ed folder, which
declares its outputs up front for any DataSphere client). The same :class:`NotebookJob` becomes
``JobParameters`` (:meth:`JobsClient.create_from_spec`) or a folder (:func:`.nbfolder.write_job_folder`).
"""

from __future__ import annotations

import ast
import bisect
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import INSTANCE_TYPES, MAX_FILE_BYTES, is_safe_relpath
from jupyter_ds_jobs.common.errors import InvalidArgument, NotFound
from jupyter_ds_jobs.common.origin import Origin, with_origin
from jupyter_ds_jobs.common.requirements import read_requirements_file
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.packaging import nbrunner
from jupyter_ds_jobs.packaging.analysis import analyze_source, requirements_for_modules
from jupyter_ds_jobs.packaging.files import find_file_refs
from jupyter_ds_jobs.packaging.jobspec_python import local_module_files
from jupyter_ds_jobs.packaging.nbfolder import COLLECT_DIR, config_text, job_config
from jupyter_ds_jobs.packaging.nbparams import inject_parameters
from jupyter_ds_jobs.packaging.source import parse_cell

__all__ = [
    "COLLECT_DIR",
    "DEFAULT_MAX_FILE_BYTES",
    "NotebookAnalysis",
    "NotebookJob",
    "NotebookJobOptions",
    "analyze_notebook",
    "build_notebook_job",
    "default_output_path",
    "executed_name",
    "load_notebook",
]

#: Files the notebook writes come back up to this size each (as ``%%ds_job``'s), unless named.
DEFAULT_MAX_FILE_BYTES = 100 * 2**20
_RESERVED = "_ds_"
_NOTEBOOK_FILE = "<notebook>"


@dataclass
class NotebookJobOptions:
    """What ``run-notebook`` / ``convert`` / :func:`jupyter_ds_jobs.run_notebook` options say."""

    parameters: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    """Job name (default: the notebook's stem)."""
    desc: str = ""
    """Description; the origin line ``from notebook PATH`` is appended."""
    instance_types: Sequence[str] = ()
    """In order of preference (default: the notebook's ``metadata.ds_jobs.instance_type``)."""
    requirements: str = "auto"
    """``auto`` (pinned from the analysis, plus ipython), ``none``, or a requirements file."""
    pip: Sequence[str] = ()
    python: str | None = None
    """The job's Python ``major.minor`` (default: this one's)."""
    files: Sequence[Path] = ()
    """Extra input files or directories, placed at their path relative to the notebook's
    directory (their base name when outside it)."""
    output_files: Sequence[str] = ()
    """Paths the notebook writes (relative) that come back whatever their size."""
    collect: bool = True
    """Bring back the files the notebook wrote (``_ds_files/``); False: declare its literal writes."""
    written_files: bool = True
    """False (``--no-output-files``): neither collect nor declare the files written."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class NotebookAnalysis:
    """What the static analysis of the cells that will run found."""

    local_modules: list[Path]
    requirements: list[str]
    unresolved: list[str]
    reads: list[str]
    """Files and directories read by literal relative path that exist beside the notebook."""
    writes: list[str]
    """Files and directories written by literal relative path."""


@dataclass
class NotebookJob:
    """A notebook packaged as a job; a :class:`~jupyter_ds_jobs.core.client.JobSource`."""

    path: Path
    """The notebook (absolute)."""
    base_dir: Path
    name: str
    desc: str
    notebook_name: str
    """The notebook's name in the job's working directory."""
    executed_name: str
    """The executed notebook the job writes (an output file)."""
    notebook: dict[str, Any]
    """The notebook as sent: parameters injected."""
    parameters: dict[str, Any]
    params: jobs_pb2.JobParameters
    inputs: list[LocalFile]
    local_modules: list[LocalFile]
    analysis: NotebookAnalysis
    requirements: list[str]
    outputs: list[str]
    """Declared output files besides the executed notebook (``_ds_files`` when collecting)."""
    output_files: list[str]
    """The ``output_files`` option: declared, never collected."""
    collect: bool
    warnings: list[str]
    staging: Path
    config: dict[str, Any]
    """The ``config.yaml`` of the job, as a mapping (see :mod:`.nbfolder`)."""
    config_text: str = ""

    def cleanup(self) -> None:
        """Remove the staging directory (the notebook as sent); call once the job is created."""
        shutil.rmtree(self.staging, ignore_errors=True)


def executed_name(path: Path) -> str:
    """``report.ipynb`` -> ``report.executed.ipynb``."""
    return f"{path.stem}.executed.ipynb"


def default_output_path(path: Path) -> Path:
    """Where the executed notebook goes by default: beside the original, never over it."""
    return path.with_name(executed_name(path))


def load_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` as nbformat 4 JSON (``NotFound`` / ``InvalidArgument`` naming it)."""
    if not path.is_file():
        raise NotFound(f"no such notebook: {path}")
    try:
        return nbrunner.read_notebook(str(path))
    except ValueError as e:
        raise InvalidArgument(f"{path}: not a notebook this can run: {e}") from None


# --------------------------------------------------------------------------- analysis


def _cell_python(source: str, label: str) -> str:
    """The cell's code as plain Python with the same names and calls (IPython syntax rewritten;
    a ``%%ds_job`` cell's body), or ``InvalidArgument`` naming the cell on a syntax error."""
    lines = source.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%ds_job"):
        source = "\n".join(["", *lines[first + 1 :]])  # the body runs as Python (line numbers kept)
        try:
            ast.parse(source)
        except SyntaxError as e:
            raise InvalidArgument(
                f"syntax error on {label}, line {e.lineno}: {e.msg} (a %%ds_job body is plain Python)",
                field=label,
            ) from None
    tree, _ = parse_cell(source, filename=label)
    return ast.unparse(tree)


def analyze_notebook(
    nb: Mapping[str, Any], base_dir: Path, *, provided: Sequence[str] = ()
) -> NotebookAnalysis:
    """Analyse the cells that will run as one program (cell after cell, as the job runs them).

    ``provided`` are paths the job gets otherwise (extra input files): not missing when read.
    """
    cells = list(nb["cells"])
    labels = nbrunner.cell_labels(cells)
    chunks: list[str] = []
    starts: list[int] = []
    owners: list[str] = []
    line = 1
    for cell, label in zip(cells, labels, strict=True):
        if not nbrunner.runnable(cell):
            continue
        code = _cell_python(str(cell["source"]), label)
        starts.append(line)
        owners.append(label)
        chunks.append(code)
        line += code.count("\n") + 1
    program = "\n".join(chunks)

    def owner(lineno: int) -> str:
        return owners[max(0, bisect.bisect_right(starts, lineno) - 1)] if owners else "a cell"

    refs = find_file_refs(program, base_dir, filename=_NOTEBOOK_FILE)
    for path in refs.missing:
        if path in provided or any(path.startswith(p + "/") for p in provided):
            continue
        raise InvalidArgument(
            f"reads {path!r}, which is not in the notebook's directory "
            f"({base_dir}) and that no cell writes; the job would fail on it (put it there, pass it with "
            "--file, or tag the cell ds-skip)",
            field=owner(refs.lines.get(path, 1)),
        )
    for path in refs.reads:
        local = base_dir / path
        size = local.stat().st_size if local.is_file() else 0
        if size > MAX_FILE_BYTES:
            raise InvalidArgument(
                f"reads {path!r} ({size} bytes), over the job's {MAX_FILE_BYTES} byte file limit",
                field=owner(refs.lines.get(path, 1)),
            )
    found = analyze_source(program, [base_dir], filename=_NOTEBOOK_FILE)
    return NotebookAnalysis(
        local_modules=list(found.local_modules),
        requirements=list(found.requirements),
        unresolved=list(found.unresolved),
        reads=list(refs.reads),
        writes=list(refs.writes),
    )


# --------------------------------------------------------------------------- options


def _relative_output(path: str, opt: str) -> str:
    p = PurePosixPath(path.replace("\\", "/"))
    text = str(p)
    if p.is_absolute() or not is_safe_relpath(text) or text.startswith(_RESERVED) or text == ".":
        raise InvalidArgument(
            f"{path!r} must be a relative path inside the notebook's directory, without '..'", field=opt
        )
    return text


def _extra_inputs(files: Sequence[Path], base_dir: Path) -> list[LocalFile]:
    out: list[LocalFile] = []
    seen: set[str] = set()
    for f in files:
        local = Path(f).expanduser().absolute()
        if not local.exists():
            raise InvalidArgument(f"no such file or directory: {str(f)!r}", field="--file")
        try:
            desc = local.relative_to(base_dir).as_posix()
        except ValueError:
            desc = local.name
        if desc in seen or desc.startswith(_RESERVED):
            raise InvalidArgument(f"two input files named {desc!r} (or a reserved name)", field="--file")
        seen.add(desc)
        out.append(LocalFile(local_path=local, desc_path=desc, var="", zip=local.is_dir()))
    return out


def _instance_types(opts: NotebookJobOptions, nb: Mapping[str, Any]) -> list[str]:
    types = list(opts.instance_types)
    if not types:
        meta = nb.get("metadata", {}).get("ds_jobs", {})
        value = meta.get("instance_type") if isinstance(meta, dict) else None
        types = [value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)]
    for t in types:
        if t not in INSTANCE_TYPES:
            raise InvalidArgument(
                f"unknown instance type {t!r}; known: {', '.join(INSTANCE_TYPES)}", field="--instance-type"
            )
    return types


def _requirements(opts: NotebookJobOptions, analysis: NotebookAnalysis) -> tuple[list[str], jobs_pb2.PipOptions, list[str]]:  # fmt: skip
    """(requirements, pip options, warnings): the analysis' pins or a file, ipython, ``--pip``."""
    pip = jobs_pb2.PipOptions()
    warnings: list[str] = []
    if opts.requirements == "none":
        reqs: list[str] = []
    elif opts.requirements == "auto":
        reqs = list(analysis.requirements)
        if analysis.unresolved:
            warnings.append(
                "imported but neither local, standard nor installed here (the job may fail on them): "
                + ", ".join(analysis.unresolved)
            )
    else:
        reqs = read_requirements_file(Path(opts.requirements).expanduser(), pip, field="--requirements")
    if opts.requirements != "none" and "ipython" not in _names(reqs):
        runner_pins, _ = requirements_for_modules(["IPython"])  # the runner's one need
        reqs.extend(runner_pins)
    reqs.extend(spec for spec in opts.pip if spec not in reqs)
    return reqs, pip, warnings


def _names(requirements: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for line in requirements:
        try:
            out.add(canonicalize_name(Requirement(line).name))
        except InvalidRequirement:
            continue
    return out


# --------------------------------------------------------------------------- the job


def _cmd(job_nb: str, executed: str, collect: bool, max_bytes: int, keep: Sequence[str]) -> str:
    argv = ["python", nbrunner.RUNNER_FILE, job_nb, executed]
    if collect:
        argv += ["--collect", COLLECT_DIR, "--max-file-bytes", str(max_bytes)]
    for path in keep:
        argv += ["--keep", path]
    return " ".join(shlex.quote(a) for a in argv)


def build_notebook_job(
    path: Path, options: NotebookJobOptions | None = None, *, staging_root: Path | None = None
) -> NotebookJob:
    """Package the notebook at ``path``; refuses (naming the cell, option or file) before anything
    is written outside ``staging_root``. The caller owns the job's staging dir (:meth:`NotebookJob.cleanup`)."""
    opts = options or NotebookJobOptions()
    path = Path(path).expanduser().absolute()
    base_dir = path.parent
    nb = load_notebook(path)
    warnings = inject_parameters(nb, opts.parameters)
    parameters = dict(opts.parameters)
    extra = _extra_inputs(opts.files, base_dir)
    output_files = list(dict.fromkeys(_relative_output(p, "--output-file") for p in opts.output_files))
    analysis = analyze_notebook(nb, base_dir, provided=[f.desc_path for f in extra])
    requirements, pip, more = _requirements(opts, analysis)
    warnings += more
    collect = opts.collect and opts.written_files
    outputs = [COLLECT_DIR] if collect else []
    if not opts.collect and opts.written_files:
        outputs += [w for w in analysis.writes if not w.startswith(_RESERVED) and w != path.name]
    outputs = list(dict.fromkeys(o for o in [*outputs, *output_files] if o != executed_name(path)))
    nb.setdefault("metadata", {})["ds_jobs"] = {"source": str(path), "parameters": parameters}
    staging = Path(tempfile.mkdtemp(prefix="ds-notebook-", dir=staging_root))
    try:
        nbrunner.write_notebook(nb, str(staging / path.name))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    inputs = [
        LocalFile(local_path=staging / path.name, desc_path=path.name, var="", zip=False),
        LocalFile(local_path=Path(nbrunner.__file__), desc_path=nbrunner.RUNNER_FILE, var="", zip=False),
    ]
    provided = {f.desc_path for f in extra} | {path.name}
    for rel in analysis.reads:
        if rel not in provided and not rel.startswith(_RESERVED):
            local = base_dir / rel
            inputs.append(LocalFile(local_path=local, desc_path=rel, var="", zip=local.is_dir()))
    inputs += extra
    job = NotebookJob(
        path=path,
        base_dir=base_dir,
        name=opts.name or path.stem,
        desc=with_origin(opts.desc, Origin(notebook=str(path))),
        notebook_name=path.name,
        executed_name=executed_name(path),
        notebook=nb,
        parameters=parameters,
        params=jobs_pb2.JobParameters(),
        inputs=inputs,
        local_modules=local_module_files(analysis.local_modules),
        analysis=analysis,
        requirements=requirements,
        outputs=outputs,
        output_files=output_files,
        collect=collect,
        warnings=warnings,
        staging=staging,
        config={},
    )
    _fill(job, opts, pip, _instance_types(opts, nb))
    return job


def _fill(job: NotebookJob, opts: NotebookJobOptions, pip: jobs_pb2.PipOptions, types: list[str]) -> None:
    """The job's ``JobParameters`` and its ``config.yaml`` mapping, from the same values."""
    p = job.params
    p.cmd = _cmd(job.notebook_name, job.executed_name, job.collect, opts.max_file_bytes, job.output_files)
    p.output_files.add(path=job.executed_name)
    for out in job.outputs:
        p.output_files.add(path=out)
    py = p.env.python_env
    py.python_version = opts.python or f"{sys.version_info.major}.{sys.version_info.minor}"
    py.requirements.extend(job.requirements)
    if pip.ListFields():
        py.pip_options.CopyFrom(pip)
    for k, v in opts.env.items():
        p.env.vars[k] = v
    for t in types:
        p.cloud_instance_types.add(name=t)
    job.config = job_config(job)
    job.config_text = config_text(job)
