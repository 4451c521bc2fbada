"""Requirement strings and pip options, parsed once for the client and the server.

* :func:`normalize_requirement` validates one PEP 508 requirement with pypa ``packaging`` (what pip
  and uv accept: ``pkg~=1`` and ``pkg>=1.0+local`` are refused here, not later in uv) and returns
  its normal form: the canonical name, extras and specifiers sorted, markers normalized.
* :func:`split_pip_option` and :func:`apply_pip_option` read the pip options a job may carry
  (``--index-url``, ``--extra-index-url``, ``--trusted-host``, ``--no-deps``) into ``PipOptions``,
  whether written ``--opt=value`` or ``--opt value`` (a requirements file, conda's ``pip:``).
* :func:`read_requirements_file` reads a pip requirements file (``-r`` includes, continuation
  lines, comments, the options above).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import ConfigError

__all__ = [
    "PIP_OPTIONS",
    "apply_pip_option",
    "canonicalize_name",
    "normalize_requirement",
    "read_requirements_file",
    "split_pip_option",
]

#: The pip options a job may carry, by spelling -> ``PipOptions`` field.
PIP_OPTIONS: dict[str, str] = {
    "-i": "index_url",
    "--index-url": "index_url",
    "--extra-index-url": "extra_index_urls",
    "--trusted-host": "trusted_hosts",
    "--no-deps": "no_deps",
}
_OPTION = re.compile(r"(-{1,2}[A-Za-z][A-Za-z-]*)(?:(?:=|\s+)(.*))?", re.DOTALL)


def normalize_requirement(requirement: str) -> str:
    """Validate one pip requirement string (PEP 508) and return its normal form.

    Raises ``ValueError`` with the reason for a string pip would not accept as a requirement.
    """
    text = requirement.strip()
    if not text:
        raise ValueError("empty requirement")
    if text.startswith("-"):
        raise ValueError("pip options are not requirements; use pip_options")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if req.url is not None and not urlsplit(req.url).scheme:
        raise ValueError(f"{req.url!r} after '@' is not a URL")
    req.name = canonicalize_name(req.name)
    req.extras = {canonicalize_name(e) for e in req.extras}
    return str(req)


def split_pip_option(line: str) -> tuple[str, str]:
    """``"--index-url=https://x"`` / ``"--index-url https://x"`` / ``"-i https://x"`` -> (option, value)."""
    m = _OPTION.fullmatch(line.strip())
    if m is None:
        return line.strip(), ""
    return m.group(1), (m.group(2) or "").strip()


def apply_pip_option(pip: jobs_pb2.PipOptions, option: str, value: str) -> None:
    """Record one pip option in ``pip``; the first index URL wins, repeats are kept once.

    Raises ``ValueError`` for an option jobs do not support, a missing value or a value given to
    ``--no-deps``.
    """
    fld = PIP_OPTIONS.get(option)
    if fld is None:
        supported = ", ".join(o for o in PIP_OPTIONS if o != "-i")
        raise ValueError(f"pip option {option!r} is not supported in a job (only {supported})")
    if fld == "no_deps":
        if value:
            raise ValueError(f"{option} takes no value, got {value!r}")
        pip.no_deps = True
        return
    if not value:
        raise ValueError(f"{option} needs a value")
    if fld == "index_url":
        if not pip.index_url:
            pip.index_url = value
    elif fld == "extra_index_urls":
        if value not in pip.extra_index_urls:
            pip.extra_index_urls.append(value)
    elif value not in pip.trusted_hosts:
        pip.trusted_hosts.append(value)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each logical line: ``\\`` continues a line."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        if raw.endswith("\\"):
            buf += raw[:-1]
            continue
        out.append((start, buf + raw))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def read_requirements_file(
    path: Path, pip: jobs_pb2.PipOptions, *, field: str, _stack: tuple[Path, ...] = ()
) -> list[str]:
    """Requirement lines of a pip requirements file; its pip options go into ``pip``.

    ``-r FILE`` includes resolve against the including file. Every problem is a
    :class:`ConfigError` naming ``field`` and ``file:line``.
    """
    path = path.resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in _stack)
        raise ConfigError(f"{path} includes itself (via {chain})", field=field)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read requirements file {str(path)!r}: {exc.strerror or exc}", field=field
        ) from exc
    out: list[str] = []
    for n, raw in _logical_lines(text):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        where = f"{path.name}:{n}"
        if not line.startswith("-"):
            out.append(line)
            continue
        opt, value = split_pip_option(line)
        if opt in ("-r", "--requirement"):
            if not value:
                raise ConfigError(f"{where}: {opt} needs a file name", field=field)
            out += read_requirements_file(path.parent / value, pip, field=field, _stack=(*_stack, path))
            continue
        try:
            apply_pip_option(pip, opt, value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}", field=field) from None
    return out
