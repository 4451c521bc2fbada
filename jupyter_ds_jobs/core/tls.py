"""What the client trusts over TLS: the system's roots, plus a CA file where one is given.

A team's own job server may use a certificate of a private CA: the client then trusts the system
roots *and* that CA (``--ca-file``, ``DS_JOBS_CA_FILE``, the ``ca_file`` setting, or the one the
local server's connection file names). gRPC takes the roots as one PEM bundle, HTTPS transfers as
an :class:`ssl.SSLContext`; both come from here, so the two agree.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from jupyter_ds_jobs.common.errors import InvalidArgument

__all__ = ["ENV_CA_FILE", "describe_tls_failure", "root_certificates", "ssl_context", "system_roots_file"]

ENV_CA_FILE = "DS_JOBS_CA_FILE"


def system_roots_file() -> Path | None:
    """The system's PEM bundle of trusted roots (OpenSSL's default), when there is one."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env or ""), paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def _read_ca(ca_file: Path) -> bytes:
    try:
        data = Path(ca_file).expanduser().read_bytes()
    except OSError as e:
        raise InvalidArgument(
            f"cannot read the CA file {ca_file}: {e.strerror or e}", field="ca_file"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise InvalidArgument(f"{ca_file} holds no PEM certificate", field="ca_file")
    return data


def root_certificates(ca_file: Path | None) -> bytes | None:
    """The PEM roots for a gRPC channel: None (gRPC's own default roots) without a CA file, else
    the system's roots followed by the CA file's certificates."""
    if ca_file is None:
        return None
    extra = _read_ca(ca_file)
    system = system_roots_file()
    base = system.read_bytes() if system is not None else b""
    return base + (b"\n" if base and not base.endswith(b"\n") else b"") + extra


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The context of HTTPS transfers: the system's roots, plus the CA file's when given."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        _read_ca(ca_file)  # a clear error for an unreadable or empty file
        ctx.load_verify_locations(cafile=str(Path(ca_file).expanduser()))
    return ctx


_TLS_WORDS = ("ssl", "tls", "handshake", "certificate", "x509", "peer name", "verification")


def describe_tls_failure(host: str, ca_file: Path | None, details: str) -> str | None:
    """A message a user can act on when ``details`` (of a failed connection) is about TLS, else None."""
    low = details.lower()
    if not any(w in low for w in _TLS_WORDS):
        return None
    name = host.rsplit(":", 1)[0].strip("[]")
    first = details.strip().splitlines()[0][:200]
    if "hostname" in low or "peer name" in low:
        return (
            f"the TLS handshake with {host} failed: its certificate was not issued for the name {name!r} "
            f"(connect with the name it was issued for, or have it reissued) ({first})"
        )
    trusted = (
        f"the system roots and the CA file {ca_file}" if ca_file else "the system roots (no CA file given)"
    )
    return (
        f"the TLS handshake with {host} failed: its certificate is not signed by {trusted}; give the CA "
        f"that signed it with --ca-file / {ENV_CA_FILE} / the ca_file setting ({first})"
    )
