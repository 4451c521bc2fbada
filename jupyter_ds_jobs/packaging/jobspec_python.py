"""The ``env.python`` section of config.yaml (see :mod:`jupyter_ds_jobs.packaging.jobspec`).

* ``type: auto`` (the default, or plain ``python: auto``): the entry script of ``cmd``
  (``python [opts] main.py`` or ``python [opts] -m pkg.mod``, :func:`find_entry`) and any
  ``root-paths`` are analyzed; the local modules they import travel as ZIPs, and the installed
  distributions they use become pinned requirements.
* ``type: manual``: ``requirements-file`` and ``local-paths`` say it all.
* ``version`` (default: the local Python's ``major.minor``) and ``pip`` options in both.

Local modules become :class:`~jupyter_ds_jobs.core.transfer.LocalFile` ZIP inputs with the official
client's ``_LOCAL_MODULE_<i>`` vars (:func:`local_module_files`).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeAlias

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.contract import LOCAL_MODULE_PREFIX
from jupyter_ds_jobs.common.errors import ConfigError
from jupyter_ds_jobs.common.requirements import read_requirements_file
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.packaging.analysis import analyze_script
from jupyter_ds_jobs.packaging.jobspec_nodes import (
    Node,
    as_list,
    as_map,
    as_str,
    check_keys,
    is_safe_relative,
    parse_bool,
)

__all__ = [
    "PIP_KEYS",
    "PYTHON_KEYS",
    "Analyze",
    "Entry",
    "entry_script_input",
    "find_entry",
    "local_module_files",
    "parse_python",
]

#: ``analyze(entry_script, root) -> (local module paths, pinned requirements)``.
Analyze: TypeAlias = Callable[[Path, Path], tuple[list[Path], list[str]]]

PYTHON_KEYS = ("type", "version", "requirements-file", "local-paths", "root-paths", "pip")
PIP_KEYS = ("index-url", "extra-index-urls", "trusted-hosts", "no-deps")

_PY_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_PYTHON_EXE = re.compile(r"python(\d+(\.\d+)?)?(\.exe)?")


# --------------------------------------------------------------------------- the entry script


@dataclass
class Entry:
    script: Path | None  # the file to analyze (a .py file)
    module_path: Path | None  # what travels as a local module (script file or top package dir)
    input_path: str  # relative path as in cmd, for the input copy ("" if not to be sent)


def find_entry(cmd: str, base_dir: Path) -> Entry | None:
    """The entry of ``python [opts] script.py`` or ``python [opts] -m pkg.mod`` in cmd, if any."""
    try:
        tokens = shlex.split(cmd, comments=False, posix=True)
    except ValueError:
        tokens = cmd.split()
    for i, tok in enumerate(tokens):
        if _PYTHON_EXE.fullmatch(PurePosixPath(tok).name):
            return _entry_after(tokens, i + 1, base_dir)
    return None


def _entry_after(tokens: list[str], j: int, base_dir: Path) -> Entry | None:
    """The entry named by the options and arguments of ``python`` from ``tokens[j]`` on."""
    while j < len(tokens):
        t = tokens[j]
        if t.startswith("--"):  # --check-hash-based-pycs takes a value; other long options none
            j += 2 if t == "--check-hash-based-pycs" else 1
            continue
        if t.startswith("-") and t != "-":  # a cluster of short options, like -u, -OO, -um pkg
            for k, ch in enumerate(t[1:], start=2):
                if ch in "mcWX":
                    value = t[k:] or (tokens[j + 1] if j + 1 < len(tokens) else "")
                    if ch == "m":
                        return _module_entry(value, base_dir)
                    if ch == "c":
                        return None
                    if not t[k:]:
                        j += 1
                    break
            j += 1
            continue
        if "${" in t:
            return None
        script = (base_dir / t).resolve()
        rel = t if is_safe_relative(t) else ""
        return Entry(script=script, module_path=script, input_path=rel)
    return None


def _module_entry(mod: str, base_dir: Path) -> Entry | None:
    if not mod or "${" in mod:
        return None
    parts = mod.split(".")
    target = base_dir.joinpath(*parts)
    top = base_dir / parts[0]
    if target.is_dir():
        script: Path | None = target / "__main__.py"
    elif target.with_suffix(".py").is_file():
        script = target.with_suffix(".py")
    else:
        script = None
    if top.is_dir():
        module_path: Path | None = top.resolve()
    elif top.with_suffix(".py").is_file():
        module_path = top.with_suffix(".py").resolve()
    else:
        module_path = None
    return Entry(script=script.resolve() if script else None, module_path=module_path, input_path="")


def entry_script_input(entry: Entry | None, inputs: list[LocalFile]) -> LocalFile | None:
    """The entry script as an input of its own (at its path in cmd), unless already among ``inputs``."""
    if (
        entry is not None
        and entry.input_path
        and entry.script is not None
        and entry.script.is_file()
        and all(f.local_path != entry.script for f in inputs)
    ):
        return LocalFile(local_path=entry.script, desc_path=entry.input_path, var="", zip=False)
    return None


# --------------------------------------------------------------------------- the section


def _default_analyze(entry: Path, root: Path) -> tuple[list[Path], list[str]]:
    result = analyze_script(entry, root)
    return list(result.local_modules), list(result.requirements)


def _python_version(node: Node, key: str) -> str:
    text = as_str(node, key).strip()
    m = _PY_VERSION.fullmatch(text)
    if m is None:
        raise ConfigError(f"bad python version {text!r}: expected like '3.11' or '3.11.4'", field=key)
    return f"{m.group(1)}.{m.group(2)}"


def _python_spec(node: Node, key: str) -> tuple[dict[str, Node], str]:
    """The section as a mapping, and its type (``auto`` or ``manual``) with the keys checked for it."""
    if isinstance(node, str):
        if node.strip() != "auto":
            raise ConfigError(f"expected 'auto' or a mapping with type: auto|manual, got {node!r}", field=key)
        spec: dict[str, Node] = {"type": "auto"}
    else:
        spec = as_map(node, key)
        check_keys(spec, PYTHON_KEYS, key)
    if "type" in spec:
        mode = as_str(spec["type"], f"{key}.type").strip()
        if mode not in ("auto", "manual"):
            raise ConfigError(f"expected auto or manual, got {mode!r}", field=f"{key}.type")
    else:
        mode = "manual" if ("requirements-file" in spec or "local-paths" in spec) else "auto"
    if mode == "auto":
        for bad in ("requirements-file", "local-paths"):
            if bad in spec:
                raise ConfigError(
                    f"{bad} is for type: manual; in auto mode the client finds them", field=f"{key}.{bad}"
                )
    elif "root-paths" in spec:
        raise ConfigError(
            "root-paths is for type: auto; in manual mode list local-paths", field=f"{key}.root-paths"
        )
    return spec, mode


def _pip_options(spec: dict[str, Node], key: str) -> jobs_pb2.PipOptions:
    pip = jobs_pb2.PipOptions()
    if "pip" not in spec:
        return pip
    pkey = f"{key}.pip"
    pspec = as_map(spec["pip"], pkey)
    check_keys(pspec, PIP_KEYS, pkey)
    if "index-url" in pspec:
        pip.index_url = as_str(pspec["index-url"], f"{pkey}.index-url").strip()
    for k, target in (("extra-index-urls", pip.extra_index_urls), ("trusted-hosts", pip.trusted_hosts)):
        if k in pspec:
            for i, v in enumerate(as_list(pspec[k], f"{pkey}.{k}", allow_scalar=True)):
                target.append(as_str(v, f"{pkey}.{k}[{i}]").strip())
    if "no-deps" in pspec:
        pip.no_deps = parse_bool(
            as_str(pspec["no-deps"], f"{pkey}.no-deps", nonempty=False), f"{pkey}.no-deps"
        )
    return pip


def _manual_modules(
    spec: dict[str, Node], key: str, base_dir: Path, py: jobs_pb2.PythonEnv, pip: jobs_pb2.PipOptions
) -> list[Path]:
    """``type: manual``: requirements from ``requirements-file`` (its pip options into ``pip``)."""
    if "requirements-file" in spec:
        rkey = f"{key}.requirements-file"
        rel = as_str(spec["requirements-file"], rkey)
        py.requirements.extend(read_requirements_file(base_dir / rel, pip, field=rkey))
    modules: list[Path] = []
    if "local-paths" in spec:
        lkey = f"{key}.local-paths"
        for i, p in enumerate(as_list(spec["local-paths"], lkey, allow_scalar=True)):
            rel = as_str(p, f"{lkey}[{i}]")
            local = (base_dir / rel).resolve()
            if not local.exists():
                raise ConfigError(
                    f"no such file or directory: {rel!r} (looked at {local})", field=f"{lkey}[{i}]"
                )
            modules.append(local)
    return modules


def _auto_modules(
    spec: dict[str, Node],
    key: str,
    entry: Entry | None,
    base_dir: Path,
    analyze: Analyze | None,
    py: jobs_pb2.PythonEnv,
) -> list[Path]:
    """``type: auto``: the entry script and ``root-paths`` analyzed; requirements into ``py``."""
    if entry is None or entry.script is None or not entry.script.is_file():
        what = (
            f"entry script {entry.script} does not exist"
            if entry is not None and entry.script is not None
            else "cmd runs no local python script ('python main.py' or 'python -m pkg')"
        )
        raise ConfigError(f"python: auto needs the entry script of cmd: {what}", field=key)
    scripts: list[tuple[Path, str]] = [(entry.script, key)]
    modules: list[Path] = []
    if entry.module_path is not None:
        modules.append(entry.module_path)
    if "root-paths" in spec:
        rkey = f"{key}.root-paths"
        for i, p in enumerate(as_list(spec["root-paths"], rkey, allow_scalar=True)):
            rel = as_str(p, f"{rkey}[{i}]")
            local = (base_dir / rel).resolve()
            if not local.is_file():
                raise ConfigError(f"no such file: {rel!r} (looked at {local})", field=f"{rkey}[{i}]")
            scripts.append((local, f"{rkey}[{i}]"))
            modules.append(local)
    run = analyze or _default_analyze
    requirements: list[str] = []
    for script, skey in scripts:
        try:
            found, reqs = run(script, base_dir)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"cannot analyze {script.name}: {type(exc).__name__}: {exc}", field=skey
            ) from exc
        modules += [(base_dir / m).resolve() for m in found]
        requirements += [r for r in reqs if r not in requirements]
    py.requirements.extend(requirements)
    return modules


def parse_python(
    node: Node, cmd: str, base_dir: Path, analyze: Analyze | None
) -> tuple[jobs_pb2.PythonEnv, list[Path], Entry | None]:
    """``env.python`` -> the ``PythonEnv`` (without local modules), the local module paths, the entry."""
    key = "env.python"
    spec, mode = _python_spec(node, key)
    py = jobs_pb2.PythonEnv()
    py.python_version = (
        _python_version(spec["version"], f"{key}.version")
        if "version" in spec
        else f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    pip = _pip_options(spec, key)
    entry = find_entry(cmd, base_dir)
    if mode == "manual":
        modules = _manual_modules(spec, key, base_dir, py, pip)
    else:
        modules = _auto_modules(spec, key, entry, base_dir, analyze, py)
    if pip.ListFields():
        py.pip_options.CopyFrom(pip)
    return py, list(dict.fromkeys(modules)), entry


def local_module_files(paths: list[Path]) -> list[LocalFile]:
    """One ZIP input per local module, with the official client's ``_LOCAL_MODULE_<i>`` vars."""
    out: list[LocalFile] = []
    used: set[str] = set()
    for i, p in enumerate(paths):
        desc = f"{p.name}.zip"
        if desc in used:
            desc = f"{p.name}-{i}.zip"
        used.add(desc)
        out.append(LocalFile(local_path=p, desc_path=desc, var=f"{LOCAL_MODULE_PREFIX}{i}", zip=True))
    return out
