"""IAM tokens for DataSphere, from the sources the official ``datasphere`` CLI uses, in its order.

1. ``YC_IAM_TOKEN``: a ready IAM token. It cannot be refreshed (it expires within hours), which is
   said once, as the official CLI does.
2. An OAuth token (given, or ``YC_TOKEN`` / ``YC_OAUTH_TOKEN``) exchanged for an IAM token through
   ``yandex.cloud.iam.v1.IamTokenService/Create`` (over TLS), refreshed about hourly.
3. The compute metadata service of a Yandex Cloud VM (``http://169.254.169.254``, or
   ``YC_METADATA_ADDR``): the token of the VM's service account, refreshed before it expires.
4. The ``yc`` utility: ``yc iam create-token --no-user-output [--profile P]``, asked again often
   (``yc`` caches the token itself and does not say when it expires).

:class:`Credentials` caches the token, refreshes it before it expires and once more after the
server answers UNAUTHENTICATED (:meth:`Credentials.invalidate`). A token is never logged or
printed: :meth:`Credentials.status` says which source is in use and until when.

The IAM endpoint, the metadata host and the ``yc`` binary can be pointed elsewhere (settings or
environment) for tests and private installations; the defaults are Yandex Cloud's public ones.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import grpc

from jupyter_ds_jobs._proto import iam_grpc, iam_pb2
from jupyter_ds_jobs._version import __version__
from jupyter_ds_jobs.common.errors import FailedPrecondition, Unauthenticated, Unavailable

__all__ = [
    "DEFAULT_IAM_ENDPOINT",
    "DEFAULT_METADATA_HOST",
    "AuthMethod",
    "AuthStatus",
    "Credentials",
    "IssuedToken",
]

log = logging.getLogger(__name__)

DEFAULT_IAM_ENDPOINT = "iam.api.cloud.yandex.net:443"
DEFAULT_METADATA_HOST = "169.254.169.254"
#: The environment variables the official CLI reads.
ENV_IAM_TOKEN = "YC_IAM_TOKEN"
ENV_OAUTH_TOKENS = ("YC_TOKEN", "YC_OAUTH_TOKEN")
ENV_METADATA_ADDR = "YC_METADATA_ADDR"
#: Ours: where the IAM token service and the ``yc`` binary are (tests, private installations).
ENV_IAM_ENDPOINT = "DS_JOBS_IAM_ENDPOINT"
ENV_YC_BIN = "DS_JOBS_YC_BIN"
#: A token is renewed this long before it expires.
REFRESH_MARGIN_S = 300.0
#: How long an IAM token made from an OAuth token is used at most (the official CLI: an hour).
OAUTH_TOKEN_LIFETIME_S = 3600.0
#: How long a token from ``yc`` is used before ``yc`` is asked again.
YC_TOKEN_LIFETIME_S = 60.0
METADATA_TIMEOUT_S = 1.0


class AuthMethod(StrEnum):
    """The sources after ``YC_IAM_TOKEN``, as the official CLI names them."""

    OAUTH = "oauth"
    COMPUTE_METADATA = "md"
    YC_UTILITY = "yc"


DEFAULT_ORDER: tuple[AuthMethod, ...] = (AuthMethod.OAUTH, AuthMethod.COMPUTE_METADATA, AuthMethod.YC_UTILITY)


@dataclass(frozen=True)
class IssuedToken:
    """An IAM token, where it came from (in words) and when it stops being used (epoch seconds;
    None: never refreshed)."""

    value: str
    source: str
    renew_at: float | None

    def __repr__(self) -> str:  # never show the token
        return f"IssuedToken(source={self.source!r}, renew_at={self.renew_at!r})"


@dataclass(frozen=True)
class AuthStatus:
    """What ``jupyter ds-jobs auth status`` prints: the source and when the token is renewed."""

    source: str
    renew_at: float | None

    def line(self) -> str:
        if self.renew_at is None:
            return f"signed in with {self.source}; the token cannot be refreshed (it expires within hours)"
        left = max(0.0, self.renew_at - time.time())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.renew_at))
        return f"signed in with {self.source}; token renewed at {when} (in {left / 60:.0f} min)"


def parse_order(text: str) -> tuple[AuthMethod, ...]:
    """``"oauth,md,yc"`` -> the methods, in order; an unknown name is refused naming the known ones."""
    out: list[AuthMethod] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        try:
            out.append(AuthMethod(name))
        except ValueError:
            known = ", ".join(m.value for m in AuthMethod)
            raise FailedPrecondition(f"unknown sign-in method {name!r}; known: {known}") from None
    return tuple(dict.fromkeys(out)) or DEFAULT_ORDER


class Credentials:
    """A cached IAM token from the official CLI's sources (see the module docstring).

    ``iam_token`` (given explicitly) comes before every source and is never refreshed;
    ``oauth_token`` is used before the environment's; ``yc_profile`` is passed to ``yc``;
    ``order`` replaces the order of the sources after ``YC_IAM_TOKEN``; ``iam_root_certificates``
    are the PEM roots trusted for the IAM endpoint (None: the system's).
    """

    def __init__(
        self,
        *,
        iam_token: str | None = None,
        oauth_token: str | None = None,
        yc_profile: str | None = None,
        order: Sequence[AuthMethod] = DEFAULT_ORDER,
        iam_endpoint: str | None = None,
        metadata_host: str | None = None,
        yc_bin: str | None = None,
        iam_root_certificates: bytes | None = None,
        iam_insecure: bool = False,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        e = os.environ if env is None else env
        self._env = e
        self.iam_token = iam_token or None
        self.oauth_token = oauth_token or next((e[k] for k in ENV_OAUTH_TOKENS if e.get(k)), None)
        self.yc_profile = yc_profile or None
        self.order = tuple(order)
        self.iam_endpoint = iam_endpoint or e.get(ENV_IAM_ENDPOINT) or DEFAULT_IAM_ENDPOINT
        self.metadata_host = metadata_host or e.get(ENV_METADATA_ADDR) or DEFAULT_METADATA_HOST
        self.yc_bin = yc_bin or e.get(ENV_YC_BIN) or "yc"
        self._iam_roots = iam_root_certificates
        self._iam_insecure = iam_insecure
        self._clock = clock
        self._lock = threading.Lock()
        self._current: IssuedToken | None = None
        self._metadata_up: bool | None = None  # unknown until first asked
        self._warned_static = False

    # -- the token ----------------------------------------------------------------------------
    def token(self) -> str:
        """A valid IAM token: the cached one, or a new one when it is due for renewal."""
        with self._lock:
            cur = self._current
            if cur is None or (cur.renew_at is not None and self._clock() >= cur.renew_at):
                cur = self._current = self._issue()
            return cur.value

    def invalidate(self) -> bool:
        """Forget the cached token (the server refused it); True when a new one can be made."""
        with self._lock:
            refreshable = self._current is None or self._current.renew_at is not None
            if refreshable:
                self._current = None
            return refreshable

    def status(self) -> AuthStatus:
        """Which source signs in and when its token is renewed (a token is made if none is cached)."""
        self.token()
        cur = self._current
        assert cur is not None
        return AuthStatus(cur.source, cur.renew_at)

    @property
    def source(self) -> str:
        """The source of the cached token ("" before the first one)."""
        return self._current.source if self._current is not None else ""

    def renew_hint(self) -> str:
        """How to get a working token again from the current source (for error messages)."""
        src = self.source
        if src.startswith("the IAM token given"):
            return "the given IAM token cannot be refreshed: give a new one (yc iam create-token), or none and set YC_TOKEN"
        if src.startswith(ENV_IAM_TOKEN):
            return f"{ENV_IAM_TOKEN} holds a token that cannot be refreshed: set a new one with `export {ENV_IAM_TOKEN}=$(yc iam create-token)`, or unset it and set YC_TOKEN (an OAuth token)"
        if src.startswith("OAuth"):
            return "the OAuth token was refused or has been revoked: get a new one at https://oauth.yandex.com and set YC_TOKEN"
        if src.startswith("the compute metadata"):
            return "the VM's service account token was refused: check the service account bound to this VM and its roles"
        if src.startswith("`yc`"):
            return "`yc iam create-token` gave a token that was refused: run `yc init` (or check the profile)"
        return "set YC_TOKEN (an OAuth token) or YC_IAM_TOKEN, or install and configure `yc`"

    # -- the sources ----------------------------------------------------------------------------
    def _issue(self) -> IssuedToken:
        if self.iam_token:
            return IssuedToken(self.iam_token, "the IAM token given (--token / the token setting)", None)
        static = self._env.get(ENV_IAM_TOKEN)
        if static:
            if not self._warned_static:
                self._warned_static = True
                log.warning("the IAM token from %s cannot be refreshed; it may expire", ENV_IAM_TOKEN)
            return IssuedToken(static, f"{ENV_IAM_TOKEN} (environment)", None)
        handlers: dict[AuthMethod, Callable[[], IssuedToken | None]] = {
            AuthMethod.OAUTH: self._from_oauth,
            AuthMethod.COMPUTE_METADATA: self._from_metadata,
            AuthMethod.YC_UTILITY: self._from_yc,
        }
        tried: list[str] = []
        for method in self.order:
            issued = handlers[method]()
            if issued is not None:
                return issued
            tried.append(method.value)
        raise Unauthenticated(
            "cannot sign in to DataSphere: no IAM token in YC_IAM_TOKEN, no OAuth token (YC_TOKEN), "
            f"no compute metadata service at {self.metadata_host} and no working `{self.yc_bin}` "
            f"(tried: {', '.join(tried)}); set YC_TOKEN or install and configure `yc`"
        )

    def _iam_channel(self) -> grpc.Channel:
        options = [("grpc.primary_user_agent", f"jupyter_ds_jobs/{__version__}")]
        if self._iam_insecure:
            return grpc.insecure_channel(self.iam_endpoint, options=options)
        creds = grpc.ssl_channel_credentials(self._iam_roots)
        return grpc.secure_channel(self.iam_endpoint, creds, options=options)

    def _from_oauth(self) -> IssuedToken | None:
        if not self.oauth_token:
            return None
        with self._iam_channel() as channel:
            stub = iam_grpc.IamTokenServiceStub(channel)
            try:
                resp = stub.Create(
                    iam_pb2.CreateIamTokenRequest(yandex_passport_oauth_token=self.oauth_token),
                    metadata=[("x-client-version", f"jupyter_ds_jobs/{__version__}")],
                    timeout=30,
                )
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.INVALID_ARGUMENT):  # fmt: skip
                    raise Unauthenticated(
                        f"the IAM token service at {self.iam_endpoint} refused the OAuth token "
                        f"(YC_TOKEN / YC_OAUTH_TOKEN): {e.details() if hasattr(e, 'details') else code.name}; "
                        "get a new one at https://oauth.yandex.com"
                    ) from None
                raise Unavailable(
                    f"cannot reach the IAM token service at {self.iam_endpoint}: {code.name}"
                    f"{': ' + e.details() if hasattr(e, 'details') and e.details() else ''}"
                ) from None
        now = self._clock()
        expires = resp.expires_at.ToSeconds() if resp.HasField("expires_at") else now + OAUTH_TOKEN_LIFETIME_S
        renew = min(expires - REFRESH_MARGIN_S, now + OAUTH_TOKEN_LIFETIME_S)
        return IssuedToken(
            resp.iam_token, "OAuth token (exchanged at the IAM token service)", max(renew, now + 1)
        )

    def _from_metadata(self) -> IssuedToken | None:
        if self._metadata_up is False:
            return None
        conn = http.client.HTTPConnection(self.metadata_host, timeout=METADATA_TIMEOUT_S)
        try:
            conn.request(
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/token",
                headers={"Metadata-Flavor": "Google"},
            )
            resp = conn.getresponse()
            body = resp.read(1 << 20)
        except (OSError, http.client.HTTPException):
            self._metadata_up = False
            return None
        finally:
            conn.close()
        self._metadata_up = True
        if resp.status != 200:
            raise Unauthenticated(
                f"the compute metadata service at {self.metadata_host} gave no token (HTTP {resp.status}): "
                "is a service account bound to this VM?"
            )
        try:
            data = json.loads(body)
            token, expires_in = str(data["access_token"]), float(data.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise Unauthenticated(
                f"the compute metadata service at {self.metadata_host} answered something that is not a token"
            ) from None
        now = self._clock()
        renew = now + max(1.0, min(expires_in - REFRESH_MARGIN_S, expires_in / 2) if expires_in > 2 else 1.0)
        return IssuedToken(token, f"the compute metadata service ({self.metadata_host})", renew)

    def _from_yc(self) -> IssuedToken | None:
        exe = shutil.which(self.yc_bin, path=self._env.get("PATH", os.defpath))
        if exe is None:
            log.info(
                "the `yc` utility is not installed (looked for %s); see https://yandex.cloud/cli/",
                self.yc_bin,
            )
            return None
        cmd = [exe, "iam", "create-token", "--no-user-output"]
        if self.yc_profile:
            cmd += ["--profile", self.yc_profile]
        try:
            env = None if self._env is os.environ else dict(self._env)
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unauthenticated(f"`{' '.join(cmd[1:])}` failed: {e}") from None
        lines = [ln.strip() for ln in proc.stdout.strip().splitlines() if ln.strip()]
        if proc.returncode != 0 or not lines:
            err = proc.stderr.strip().splitlines()
            why = err[-1] if err else f"exit code {proc.returncode}"
            profile = f" (profile {self.yc_profile})" if self.yc_profile else ""
            raise Unauthenticated(f"`yc iam create-token`{profile} gave no token: {why}; run `yc init`")
        # yc may print other lines first (a browser sign-in, an update notice): the token is last
        profile = f", profile {self.yc_profile}" if self.yc_profile else ""
        return IssuedToken(lines[-1], f"`yc` ({exe}{profile})", self._clock() + YC_TOKEN_LIFETIME_S)

    # -- for gRPC calls -------------------------------------------------------------------------
    def authorization(self) -> tuple[str, str]:
        """The ``authorization`` metadata entry."""
        return ("authorization", f"Bearer {self.token()}")
