"""How :meth:`JobsClient.connect` and :meth:`JobsClient.datasphere` choose a server, TLS and a token.

* An endpoint (argument, ``DS_JOBS_ENDPOINT``, the settings): ``grpcs://`` / ``grpc://`` say
  whether TLS is used, otherwise TLS for every host but loopback. The server's certificate is
  checked against the system roots plus a CA file (argument, ``DS_JOBS_CA_FILE``, the
  ``ca_file`` setting).
* ``datasphere``: DataSphere's public endpoints over TLS, and IAM tokens from
  :class:`~jupyter_ds_jobs.core.credentials.Credentials` (the official CLI's sources and order;
  ``yc_profile``, ``auth`` and ``iam_endpoint`` from the arguments or the settings).
* No endpoint: the embedded local server of the state dir, found or started; over TLS with the CA
  its connection file names when it was started with a certificate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_ds_jobs.common.errors import Unavailable
from jupyter_ds_jobs.core.config import Settings
from jupyter_ds_jobs.core.credentials import DEFAULT_ORDER, Credentials, parse_order
from jupyter_ds_jobs.core.endpoints import (
    DATASPHERE_ENDPOINT,
    DATASPHERE_OPERATION_ENDPOINT,
    is_loopback,
    parse_endpoint,
)
from jupyter_ds_jobs.core.tls import ENV_CA_FILE

if TYPE_CHECKING:
    from jupyter_ds_jobs.core.client import JobsClient

__all__ = ["connect", "credentials_from", "datasphere"]


def _ca_file(explicit: Path | str | None, settings: Settings) -> Path | None:
    value = explicit or os.environ.get(ENV_CA_FILE) or settings.ca_file
    return Path(value).expanduser() if value else None


def credentials_from(
    settings: Settings, *, token: str | None = None, yc_profile: str | None = None, auth: str | None = None
) -> Credentials:
    """DataSphere credentials from the arguments, else the settings (``auth``, ``yc_profile``,
    ``iam_endpoint``), else the official CLI's defaults."""
    order_text = auth if auth is not None else settings.auth
    return Credentials(
        iam_token=token,
        yc_profile=yc_profile or settings.yc_profile or None,
        order=parse_order(order_text) if order_text else DEFAULT_ORDER,
        iam_endpoint=settings.iam_endpoint or None,
    )


def datasphere(
    cls: type[JobsClient],
    token: str | None = None,
    project_id: str = "",
    *,
    settings: Settings | None = None,
    yc_profile: str | None = None,
    auth: str | None = None,
) -> JobsClient:
    s = settings if settings is not None else Settings.load()
    creds = credentials_from(s, token=token or s.token, yc_profile=yc_profile, auth=auth)
    return cls(
        DATASPHERE_ENDPOINT,
        operation_endpoint=DATASPHERE_OPERATION_ENDPOINT,
        tls=True,
        credentials=creds,
        project_id=project_id,
    )


def connect(
    cls: type[JobsClient],
    endpoint: str | None = None,
    token: str | None = None,
    project_id: str | None = None,
    *,
    start: bool = True,
    settings: Settings | None = None,
    state_dir: Path | None = None,
    ca_file: Path | str | None = None,
    yc_profile: str | None = None,
) -> JobsClient:
    s = settings if settings is not None else Settings.load()
    ep = endpoint or s.endpoint
    tok = token or s.token
    project = project_id or s.project
    if ep == "datasphere":
        return datasphere(cls, tok, project or "", settings=s, yc_profile=yc_profile)
    ca = _ca_file(ca_file, s)
    if ep:
        target, scheme_tls = parse_endpoint(ep)
        tls = scheme_tls if scheme_tls is not None else not is_loopback(target)
        return cls(ep, tok, operation_endpoint=s.operation_endpoint or None, tls=tls, ca_file=ca,
                   project_id=project or "local")  # fmt: skip
    from jupyter_ds_jobs.core.embedded import ensure_server, find_server

    info = ensure_server(state_dir) if start else find_server(state_dir)
    if info is None:
        raise Unavailable("no local job server is running; start one with `jupyter ds-jobs server`")
    return cls(
        info.endpoint,
        info.token,
        tls=info.tls,
        ca_file=Path(info.ca_file) if info.ca_file else ca,
        project_id=project or "local",
        local_blobs=Path(info.state_dir) / "blobs",
    )
