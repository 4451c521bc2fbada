"""Signing in to DataSphere the way the official CLI does (core/credentials.py).

DataSphere's IAM token service and a VM's metadata service cannot be reached here, so these tests
use named fakes on loopback: ``FakeIamService`` (a real gRPC server speaking the official
``IamTokenService`` proto), ``FakeMetadataServer`` (a real HTTP server answering like the compute
metadata service) and a fake ``yc`` script on PATH.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from jupyter_ds_jobs._proto import iam_grpc, iam_pb2
from jupyter_ds_jobs.common.errors import Unauthenticated
from jupyter_ds_jobs.core.credentials import AuthMethod, Credentials, parse_order


class FakeIamService(iam_grpc.IamTokenServiceServicer):  # type: ignore[misc]
    """A fake of Yandex Cloud's IAM token service: exchanges known OAuth tokens for IAM tokens."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.valid_oauth = {"oauth-good"}
        self.lifetime_s = 12 * 3600

    def Create(self, request: iam_pb2.CreateIamTokenRequest, context: grpc.ServicerContext) -> object:
        self.requests.append(request.yandex_passport_oauth_token)
        if request.yandex_passport_oauth_token not in self.valid_oauth:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "OAuth token is invalid or expired")
        resp = iam_pb2.CreateIamTokenResponse(iam_token=f"iam-{len(self.requests)}")
        resp.expires_at.GetCurrentTime()
        resp.expires_at.seconds += self.lifetime_s
        return resp


@pytest.fixture
def iam() -> Iterator[tuple[FakeIamService, str]]:
    service = FakeIamService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    iam_grpc.add_IamTokenServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


class FakeMetadataServer(http.server.ThreadingHTTPServer):
    """A fake of the compute metadata service of a Yandex Cloud VM (loopback HTTP)."""

    token = "md-token"
    expires_in = 3600
    asked = 0


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    server: FakeMetadataServer

    def do_GET(self) -> None:
        self.server.asked += 1
        if self.headers.get("Metadata-Flavor") != "Google" or not self.path.endswith("/default/token"):
            self.send_error(403)
            return
        body = json.dumps(
            {"access_token": self.server.token, "expires_in": self.server.expires_in, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[FakeMetadataServer]:
    server = FakeMetadataServer(("127.0.0.1", 0), _MetadataHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def fake_yc(directory: Path, token: str = "yc-token", rc: int = 0) -> Path:
    """A fake ``yc`` that records its arguments and prints a notice line, then the token."""
    path = directory / "yc"
    log = directory / "yc.args"
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{log}"\n'
        'echo "You are going to be authenticated via federation-id" \n'
        + (f'echo "{token}"\n' if rc == 0 else 'echo "ERROR: profile not found" >&2\n')
        + f"exit {rc}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


CLOSED = "127.0.0.1:9"  # discard port: nothing listens there


def test_iam_token_from_the_environment_comes_first_and_is_not_refreshed(
    iam: tuple[FakeIamService, str], caplog: pytest.LogCaptureFixture
) -> None:
    service, endpoint = iam
    env = {"YC_IAM_TOKEN": "static-iam", "YC_TOKEN": "oauth-good"}
    with caplog.at_level(logging.WARNING):
        c = Credentials(env=env, iam_endpoint=endpoint, iam_insecure=True)
        assert c.token() == "static-iam"
        assert c.token() == "static-iam"
    assert service.requests == []  # the OAuth token was not even tried
    st = c.status()
    assert st.renew_at is None and "YC_IAM_TOKEN" in st.source and "cannot be refreshed" in st.line()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot be refreshed" in warnings[0]
    assert all("static-iam" not in w for w in warnings)  # the token is never logged
    assert c.invalidate() is False  # nothing to refresh it from
    assert "yc iam create-token" in c.renew_hint()


def test_oauth_token_is_exchanged_cached_and_refreshed(iam: tuple[FakeIamService, str]) -> None:
    service, endpoint = iam
    now = [1_000_000.0]
    c = Credentials(env={"YC_OAUTH_TOKEN": "oauth-good"}, iam_endpoint=endpoint, iam_insecure=True,
                    metadata_host=CLOSED, clock=lambda: now[0])  # fmt: skip
    assert c.token() == "iam-1"
    assert c.token() == "iam-1"  # cached
    assert service.requests == ["oauth-good"]
    st = c.status()
    assert st.source.startswith("OAuth") and st.renew_at is not None
    assert st.renew_at <= now[0] + 3600  # about hourly, like the official CLI
    assert "iam-1" not in repr(c._current) and "iam-1" not in st.line()
    now[0] = st.renew_at + 1  # due: a new token before the old one expires
    assert c.token() == "iam-2"
    assert c.invalidate() is True  # the server said UNAUTHENTICATED: made again
    assert c.token() == "iam-3"
    assert service.requests == ["oauth-good"] * 3


def test_refused_oauth_token_says_which_source_and_how_to_renew(iam: tuple[FakeIamService, str]) -> None:
    _, endpoint = iam
    c = Credentials(env={"YC_TOKEN": "oauth-revoked"}, iam_endpoint=endpoint, iam_insecure=True)
    with pytest.raises(Unauthenticated) as info:
        c.token()
    msg = str(info.value)
    assert "refused the OAuth token" in msg and "YC_TOKEN" in msg and "oauth-revoked" not in msg


def test_metadata_service_when_there_is_no_oauth_token(metadata: FakeMetadataServer, tmp_path: Path) -> None:
    host = f"127.0.0.1:{metadata.server_address[1]}"
    now = [5_000.0]
    c = Credentials(env={"PATH": str(tmp_path)}, metadata_host=host, clock=lambda: now[0])
    assert c.token() == "md-token"
    assert "metadata" in c.source
    renew = c.status().renew_at
    assert renew is not None and now[0] < renew < now[0] + 3600
    now[0] = renew + 1
    metadata.token = "md-token-2"
    assert c.token() == "md-token-2" and metadata.asked == 2


def test_yc_utility_with_a_profile(tmp_path: Path) -> None:
    yc = fake_yc(tmp_path)
    c = Credentials(env={"PATH": str(tmp_path)}, metadata_host=CLOSED, yc_profile="work")
    assert c.token() == "yc-token"  # the last line: yc may print a notice first
    assert (tmp_path / "yc.args").read_text().split() == ["iam", "create-token", "--no-user-output",
                                                          "--profile", "work"]  # fmt: skip
    assert c.source.startswith("`yc`") and "work" in c.source
    assert str(yc) in c.source


def test_yc_failure_and_missing_yc_are_said_plainly(tmp_path: Path) -> None:
    fake_yc(tmp_path, rc=1)
    c = Credentials(env={"PATH": str(tmp_path)}, metadata_host=CLOSED, yc_profile="nope")
    with pytest.raises(Unauthenticated, match=r"`yc iam create-token` \(profile nope\) gave no token: ERROR"):
        c.token()
    empty = tmp_path / "empty"
    empty.mkdir()
    c = Credentials(env={"PATH": str(empty)}, metadata_host=CLOSED)
    with pytest.raises(Unauthenticated) as info:
        c.token()
    msg = str(info.value)
    assert "no working `yc`" in msg and "tried: oauth, md, yc" in msg and "YC_TOKEN" in msg


def test_sources_are_tried_in_the_official_order(
    iam: tuple[FakeIamService, str], metadata: FakeMetadataServer, tmp_path: Path
) -> None:
    """IAM token env > OAuth > metadata > yc, as the official CLI (datasphere.auth, 0.10.0)."""
    _, endpoint = iam
    fake_yc(tmp_path)
    md = f"127.0.0.1:{metadata.server_address[1]}"
    base = {"PATH": str(tmp_path)}

    def source(env: dict[str, str]) -> str:
        return (
            Credentials(env=env, iam_endpoint=endpoint, iam_insecure=True, metadata_host=md).status().source
        )

    assert "YC_IAM_TOKEN" in source({**base, "YC_IAM_TOKEN": "x", "YC_TOKEN": "oauth-good"})
    assert source({**base, "YC_TOKEN": "oauth-good"}).startswith("OAuth")
    assert "metadata" in source(base)
    no_md = Credentials(env=base, metadata_host=CLOSED).status().source
    assert no_md.startswith("`yc`")
    # an explicit order (the `auth` setting) is honoured
    c = Credentials(env={**base, "YC_TOKEN": "oauth-good"}, iam_endpoint=endpoint, iam_insecure=True,
                    metadata_host=md, order=parse_order("yc,oauth"))  # fmt: skip
    assert c.status().source.startswith("`yc`")
    assert parse_order("md") == (AuthMethod.COMPUTE_METADATA,)
    with pytest.raises(Exception, match="unknown sign-in method 'password'; known: oauth, md, yc"):
        parse_order("oauth,password")


def test_environment_is_not_modified(tmp_path: Path) -> None:
    before = dict(os.environ)
    fake_yc(tmp_path)
    Credentials(env={"PATH": str(tmp_path)}, metadata_host=CLOSED).token()
    assert dict(os.environ) == before


# --------------------------------------------------------------------------- through the client


def test_the_client_renews_a_refused_token_once_and_goes_on(
    iam: tuple[FakeIamService, str], tmp_path: Path
) -> None:
    """The server refuses the first IAM token (as DataSphere does an expired one): the client makes
    a new one from the OAuth token and the call goes through; the token is renewed once, not more."""
    from jupyter_ds_jobs.core.client import JobsClient
    from jupyter_ds_jobs.server.app import ServerOptions, ServerThread

    service, endpoint = iam
    opts = ServerOptions(
        state_dir=tmp_path / "s", token="iam-2", write_runtime_file=False, sweep_interval=3600
    )
    with ServerThread(opts) as info:
        creds = Credentials(env={"YC_TOKEN": "oauth-good"}, iam_endpoint=endpoint, iam_insecure=True)
        with JobsClient(info.endpoint, credentials=creds, project_id="p") as client:
            assert list(client.list_jobs()) == []  # iam-1 refused, iam-2 made and accepted
            assert service.requests == ["oauth-good", "oauth-good"]
            assert list(client.list_jobs()) == []  # the cached iam-2: no new exchange
            assert len(service.requests) == 2
        static = Credentials(env={"YC_IAM_TOKEN": "expired-iam"})
        refused = JobsClient(info.endpoint, credentials=static, project_id="p")
        with refused as client, pytest.raises(Unauthenticated) as exc:
            list(client.list_jobs())
        msg = str(exc.value)
        assert "refused the IAM token from YC_IAM_TOKEN" in msg and "yc iam create-token" in msg
        assert "expired-iam" not in msg


def test_datasphere_profile_uses_the_public_endpoints_and_the_official_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from jupyter_ds_jobs.core.client import DATASPHERE_ENDPOINT, DATASPHERE_OPERATION_ENDPOINT, JobsClient
    from jupyter_ds_jobs.core.config import Settings

    settings = Settings(yc_profile="work", auth="yc,oauth", iam_endpoint="iam.example:443")
    with JobsClient.datasphere(project_id="bt1", settings=settings) as client:
        assert (client.endpoint, client.operation_endpoint, client.tls) == (
            DATASPHERE_ENDPOINT, DATASPHERE_OPERATION_ENDPOINT, True)  # fmt: skip
        creds = client.credentials
        assert creds is not None and creds.yc_profile == "work" and creds.iam_endpoint == "iam.example:443"
        assert [m.value for m in creds.order] == ["yc", "oauth"]
    fake_yc(tmp_path, token="from-yc")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("YC_IAM_TOKEN", raising=False)
    with JobsClient.connect("datasphere", project_id="bt1", settings=settings) as client:
        assert client._metadata()[0] == ("authorization", "Bearer from-yc")
    with JobsClient.datasphere("given-iam", project_id="bt1", settings=Settings()) as client:
        assert client._metadata()[0] == ("authorization", "Bearer given-iam")
        assert client.credentials is not None and "given" in client.credentials.status().source


# --------------------------------------------------------------------------- where users set it


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_ds_jobs", *args], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_auth_status_says_the_source_and_never_the_token(tmp_path: Path) -> None:
    fake_yc(tmp_path, token="t1.secret-yc-token")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DS_JOBS_", "YC_"))}
    env.update(PATH=f"{tmp_path}{os.pathsep}{env['PATH']}", DS_JOBS_CONFIG=str(tmp_path / "settings.json"),
               YC_METADATA_ADDR=CLOSED)  # fmt: skip
    r = _cli(["auth", "status", "--yc-profile", "work"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("signed in with `yc` (") and "profile work" in r.stdout
    assert "secret-yc-token" not in r.stdout + r.stderr
    r = _cli(["auth", "status"], {**env, "YC_IAM_TOKEN": "t1.env-token"})
    assert "YC_IAM_TOKEN" in r.stdout and "cannot be refreshed" in r.stdout and "env-token" not in r.stdout
    r = _cli(["auth", "status"], {**env, "PATH": os.path.dirname(sys.executable)})
    assert (
        r.returncode == 1
        and r.stderr.startswith("error: cannot sign in to DataSphere")
        and r.stderr[-1] == "\n"
    )
    assert r.stderr.count("\n") == 1


def test_sign_in_settings_are_checked_and_used(tmp_path: Path) -> None:
    from jupyter_ds_jobs.common.errors import InvalidArgument
    from jupyter_ds_jobs.core.config import Settings
    from jupyter_ds_jobs.core.connecting import credentials_from

    path = tmp_path / "settings.json"
    Settings.update_file({"auth": " MD , yc ", "yc_profile": "work", "iam_endpoint": "iam.local:443"}, path)
    s = Settings.load_file(path)
    assert (s.auth, s.yc_profile, s.iam_endpoint) == ("md,yc", "work", "iam.local:443")
    creds = credentials_from(s)
    assert [m.value for m in creds.order] == ["md", "yc"] and creds.yc_profile == "work"
    before = path.read_text()
    with pytest.raises(
        InvalidArgument, match=r"^auth: unknown sign-in method 'password'; known: oauth, md, yc"
    ):
        Settings.update_file({"auth": "password"}, path)
    assert path.read_text() == before


def test_ds_config_sets_the_sign_in_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_ds_jobs.common.errors import InvalidArgument
    from jupyter_ds_jobs.core.config import Settings

    monkeypatch.setenv("DS_JOBS_CONFIG", str(tmp_path / "settings.json"))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_ds_jobs")
    shell.run_line_magic("ds_config", "auth=yc yc_profile=work")
    s = Settings.load_file()
    assert (s.auth, s.yc_profile) == ("yc", "work")
    with pytest.raises(InvalidArgument, match="unknown sign-in method"):
        shell.run_line_magic("ds_config", "auth=ldap")
