"""Where a :class:`~jupyter_ds_jobs.core.client.JobsClient` connects: DataSphere's public
endpoints, ``grpcs://`` / ``grpc://`` prefixes, whether a target is this machine (plain gRPC is
the default only there), and the channel itself."""

from __future__ import annotations

import ipaddress

import grpc

from jupyter_ds_jobs._version import __version__

__all__ = [
    "DATASPHERE_ENDPOINT",
    "DATASPHERE_OPERATION_ENDPOINT",
    "is_loopback",
    "make_channel",
    "parse_endpoint",
]

DATASPHERE_ENDPOINT = "datasphere.api.cloud.yandex.net:443"
DATASPHERE_OPERATION_ENDPOINT = "operation.api.cloud.yandex.net:443"

_SCHEMES = (("grpcs://", True), ("https://", True), ("grpc://", False), ("http://", False))


def parse_endpoint(endpoint: str) -> tuple[str, bool | None]:
    """``grpcs://h:p`` / ``https://`` -> TLS, ``grpc://`` / ``http://`` -> plain, else None (unsaid)."""
    for prefix, tls in _SCHEMES:
        if endpoint.startswith(prefix):
            return endpoint[len(prefix) :].rstrip("/"), tls
    return endpoint, None


def is_loopback(target: str) -> bool:
    """``localhost``, ``127.x.y.z``, ``[::1]`` (with or without a port) or an empty host."""
    host = target.rsplit(":", 1)[0].strip("[]") if target.count(":") <= 1 or "]" in target else target
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_channel(target: str, *, tls: bool, root_certificates: bytes | None = None) -> grpc.Channel:
    """A channel to ``target`` (TLS with ``root_certificates``, default the system roots, or plain):
    64 MiB messages, keepalive pings while calls are open, this package as the user agent."""
    options = [
        ("grpc.max_receive_message_length", 64 * 2**20),
        ("grpc.max_send_message_length", 64 * 2**20),
        ("grpc.primary_user_agent", f"jupyter_ds_jobs/{__version__}"),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if tls:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)
    return grpc.insecure_channel(target, options=options)
