"""Tiny hand-crafted wheels for tests: no build backend, no network.

``build_wheel`` writes a valid pure-Python ``py3-none-any`` wheel (METADATA, WHEEL, RECORD with
hashes) and ``write_simple_index`` lays wheels out as a PEP 503 "simple" index on disk, usable as
``--index-url file:///...`` by uv and pip alike. A plain directory of wheels also works as
``--find-links``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["build_wheel", "normalize_name", "write_simple_index"]


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name (``My_Pkg`` -> ``my-pkg``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def build_wheel(
    dest_dir: Path | str,
    name: str,
    version: str,
    modules: dict[str, str],
    requires: Sequence[str] = (),
    *,
    console_scripts: dict[str, str] | None = None,
) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` into ``dest_dir`` and return its path.

    ``modules`` maps a file path relative to site-packages (``"pkg/__init__.py"``) or a bare module
    name (``"mymod"`` -> ``mymod.py``) to its source text. ``requires`` become ``Requires-Dist``.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    dist = re.sub(r"[-_.]+", "_", name)
    dist_info = f"{dist}-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    for key, source in modules.items():
        arcname = key if ("/" in key or key.endswith(".py")) else f"{key}.py"
        files.append((arcname, source.encode("utf-8")))
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        "Summary: tiny test package",
        *(f"Requires-Dist: {req}" for req in requires),
    ]
    files.append((f"{dist_info}/METADATA", ("\n".join(metadata) + "\n").encode("utf-8")))
    if console_scripts:
        lines = "".join(f"{cmd} = {target}\n" for cmd, target in console_scripts.items())
        files.append((f"{dist_info}/entry_points.txt", f"[console_scripts]\n{lines}".encode()))
    wheel_meta = "Wheel-Version: 1.0\nGenerator: tests.wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files.append((f"{dist_info}/WHEEL", wheel_meta.encode("utf-8")))
    record_lines = [f"{arc},{_record_hash(data)},{len(data)}" for arc, data in files]
    record_lines.append(f"{dist_info}/RECORD,,")
    files.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode("utf-8")))

    path = dest / f"{dist}-{version}-py3-none-any.whl"
    tmp = path.with_suffix(".whl.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arc, data in files:
            info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(path)
    return path


def write_simple_index(index_dir: Path | str, wheels: Iterable[Path]) -> str:
    """Copy ``wheels`` into a PEP 503 simple index under ``index_dir``; return its ``file://`` URL."""
    root = Path(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        project = normalize_name(wheel.name.split("-", 1)[0])
        target_dir = root / project
        target_dir.mkdir(exist_ok=True)
        target = target_dir / wheel.name
        if wheel.resolve() != target.resolve():
            shutil.copyfile(wheel, target)
        projects.setdefault(project, []).append(target)
    for project, files in projects.items():
        links = "".join(
            f'<a href="{html.escape(f.name)}#sha256={_file_sha256(f)}">{html.escape(f.name)}</a>\n'
            for f in sorted(files)
        )
        (root / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    all_projects = sorted(p.name for p in root.iterdir() if p.is_dir())
    body = "".join(f'<a href="{p}/">{p}</a>\n' for p in all_projects)
    (root / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{body}</body></html>\n")
    return root.resolve().as_uri()
