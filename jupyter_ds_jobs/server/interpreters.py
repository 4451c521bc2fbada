"""Installed CPython interpreters by ``major.minor``, each reached by absolute path; never downloaded.

Looked for in this order, the first one found for a ``major.minor`` wins:

1. the server's own base interpreter (for its own version);
2. ``pythonX.Y`` in each ``PATH`` directory, skipping shim directories (pyenv, asdf: they re-exec
   through a shell script, slow, and may not even run) and virtual environments' ``bin/``;
3. pyenv: ``$PYENV_ROOT/versions/X.Y.Z/bin/pythonX.Y``, newest release first;
4. uv-managed: ``$UV_PYTHON_INSTALL_DIR`` (else ``$XDG_DATA_HOME/uv/python``)
   ``/cpython-X.Y.Z-<platform>/bin/pythonX.Y``, newest release first; free-threaded builds skipped.

Release directories are ordered as PEP 440 versions (``3.11.10`` after ``3.11.9``); a release
candidate is picked only when its ``major.minor`` has no final release. A name that is not a
CPython release (``3.12-dev``, ``miniconda3-latest``, ``3.13.0t``) is never picked.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.version import InvalidVersion, Version

from jupyter_ds_jobs.common.errors import InvalidArgument

__all__ = ["discover_pythons", "own_base_interpreter", "python_major_minor", "release_version"]

# A narrower grammar than PEP 440 on purpose: the field takes "3.11" or "3.11.4", nothing else.
_MAJOR_MINOR = re.compile(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*")
_PATH_NAME = re.compile(r"python(\d+)\.(\d+)")  # a file name on PATH, not a version


def python_major_minor(text: str, field: str) -> str:
    """``"3.11.4"`` -> ``"3.11"``; anything else is ``InvalidArgument`` naming ``field``."""
    m = _MAJOR_MINOR.fullmatch(text)
    if m is None:
        raise InvalidArgument(f"python version {text!r} must be major.minor, like 3.11", field=field)
    return f"{int(m.group(1))}.{int(m.group(2))}"


def release_version(name: str) -> Version | None:
    """A CPython release (``3.11.7``, ``3.13.0rc1``) as a ``Version``; None for any other name."""
    try:
        v = Version(name)
    except InvalidVersion:
        return None
    if len(v.release) != 3 or v.epoch or v.is_devrelease or v.is_postrelease or v.local:
        return None
    return v


def own_base_interpreter() -> Path:
    """The interpreter the server's own (virtual) environment is based on."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    return Path(base).absolute()


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _on_path(path: str) -> Iterable[tuple[str, Path]]:
    for entry in path.split(os.pathsep):
        directory = Path(entry)
        if not entry or directory.name == "shims" or (directory.parent / "pyvenv.cfg").exists():
            continue
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            m = _PATH_NAME.fullmatch(name)
            if m:
                yield f"{m.group(1)}.{m.group(2)}", directory.absolute() / name


def _releases(root: Path, release_of: Mapping[str, str] | None = None) -> Iterable[tuple[str, Path]]:
    """``(major.minor, bin/pythonX.Y)`` of the release directories under ``root``, best first.

    ``release_of`` maps a directory name to its release string when that is not the whole name.
    """
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    found: list[tuple[Version, Path]] = []
    for vdir in entries:
        text = release_of.get(vdir.name, "") if release_of is not None else vdir.name
        v = release_version(text)
        if v is not None:
            found.append((v, vdir))
    for v, vdir in sorted(found, key=lambda item: (not item[0].is_prerelease, item[0]), reverse=True):
        version = f"{v.major}.{v.minor}"
        yield version, vdir / "bin" / f"python{version}"


def _uv_release_names(root: Path) -> dict[str, str]:
    """``cpython-3.11.9-linux-x86_64-gnu`` -> ``3.11.9``; other implementations and builds left out."""
    out: dict[str, str] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for name in names:
        parts = name.split("-")
        if len(parts) > 2 and parts[0] == "cpython":
            out[name] = parts[1]  # '3.13.0+freethreaded' has a local part: not a release
    return out


def discover_pythons(env: Mapping[str, str]) -> dict[str, Path]:
    """Installed CPython interpreters by major.minor (oldest first), as the module docstring says."""
    found: dict[str, Path] = {}
    pyenv = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    uv_root = Path(
        env.get("UV_PYTHON_INSTALL_DIR")
        or Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "uv" / "python"
    )
    candidates: list[Iterable[tuple[str, Path]]] = [
        [(f"{sys.version_info.major}.{sys.version_info.minor}", own_base_interpreter())],
        _on_path(env.get("PATH", "")),
        _releases(pyenv),
        _releases(uv_root, _uv_release_names(uv_root)),
    ]
    for source in candidates:
        for version, path in source:
            if version.startswith("3.") and version not in found and _is_executable(path):
                found[version] = path
    return dict(sorted(found.items(), key=lambda kv: Version(kv[0])))
