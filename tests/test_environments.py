"""Job Python environments: real uv, real venvs, real installs from local wheels; no network."""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import FailedPrecondition, InvalidArgument
from jupyter_ds_jobs.common.requirements import normalize_requirement
from jupyter_ds_jobs.server.environments import (
    EnvironmentBuildError,
    EnvironmentCache,
    EnvSpec,
)

pytestmark = pytest.mark.timeout(120)

OWN = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="session")
def uv_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment uv runs in: a uv cache shared by the session, no retries, no network index."""
    env = dict(os.environ)
    env["UV_CACHE_DIR"] = str(tmp_path_factory.mktemp("uv-cache"))
    env["UV_HTTP_RETRIES"] = "0"
    env["UV_INDEX_URL"] = "http://127.0.0.1:9/never-used"  # any accidental index use fails fast
    return env


@pytest.fixture
def cache(tmp_path: Path, uv_env: dict[str, str]) -> EnvironmentCache:
    return EnvironmentCache(tmp_path / "envcache", env=uv_env)


def spec(index_url: str, *reqs: str, **kw: object) -> EnvSpec:
    return EnvSpec.create(kw.pop("python_version", ""), reqs, index_url=index_url, **kw)  # type: ignore[arg-type]


def run_py(python: Path, code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_miss_builds_a_relocated_venv_then_hits_without_uv(
    cache: EnvironmentCache, index_url: str, uv_env: dict[str, str]
) -> None:
    s = spec(index_url, "dep-user")
    assert cache.lookup(s) is None
    logs: list[str] = []
    env = asyncio.run(cache.ensure(s, logs.append))
    assert cache.builds == 1
    assert env.venv == cache.envs_dir / s.key(cache.interpreter_for(""))
    assert env.python == env.venv / "bin" / "python" and env.python.is_absolute()
    assert any("+ tinypkg==1.0" in line for line in logs), logs  # uv's own output is streamed
    assert any("ready in" in line for line in logs)
    assert list(cache.tmp_dir.iterdir()) == []
    # Built in tmp/ and renamed: the venv's python and its console scripts still work from here.
    prefix, who = run_py(
        env.python, "import sys, depuser, tinypkg; print(sys.prefix); print(tinypkg.WHO)"
    ).split("\n")
    assert (Path(prefix), who) == (env.venv, "tinypkg 1.0")
    job_env = env.apply(os.environ)
    hello = subprocess.run(["dep-user-hello"], capture_output=True, text=True, env=job_env, timeout=60)
    assert hello.stdout.strip() == "hello from tinypkg 1.0", hello.stderr

    # A hit: same environment, no uv (a second cache on the same root with a uv that does not exist).
    again = EnvironmentCache(cache.root, uv="/nonexistent/uv", env=uv_env)
    assert asyncio.run(again.ensure(s)) == env
    assert again.lookup(s) == env and again.builds == 0
    t0 = time.perf_counter()
    for _ in range(200):
        again.lookup(s)
    assert (time.perf_counter() - t0) / 200 < 0.002


def test_requirement_order_and_spelling_share_one_environment(index_url: str) -> None:
    a = EnvSpec.create("", ["Tiny_Pkg>=1.0", "dep-user"], index_url=index_url)
    b = EnvSpec.create("", ["dep_user", "tiny-pkg >= 1.0", "dep-user"], index_url=index_url)
    assert a == b and a.requirements == ("dep-user", "tiny-pkg>=1.0")
    interp = Path(sys.executable)
    assert a.key(interp) == b.key(interp)
    assert a.key(interp) != EnvSpec.create("", ["dep-user"], index_url=index_url, no_deps=True).key(interp)
    assert a.key(interp) != a.key(Path("/usr/bin/python3.99"))


def test_concurrent_identical_misses_build_once(cache: EnvironmentCache, index_url: str) -> None:
    s = spec(index_url, "tinypkg")
    logs: list[list[str]] = [[], [], []]

    async def main() -> list[object]:
        return list(await asyncio.gather(*(cache.ensure(s, log.append) for log in logs)))

    envs = asyncio.run(main())
    assert cache.builds == 1
    assert envs[0] == envs[1] == envs[2]
    assert any("already being built" in line for line in logs[1])
    assert all(any("ready in" in line for line in log) for log in logs)  # every waiter sees progress


def test_two_caches_racing_on_one_root_publish_one_venv(
    tmp_path: Path, index_url: str, uv_env: dict[str, str]
) -> None:
    a = EnvironmentCache(tmp_path / "shared", env=uv_env)
    b = EnvironmentCache(tmp_path / "shared", env=uv_env)
    s = spec(index_url, "tinypkg")

    async def main() -> tuple[object, object]:
        ea, eb = await asyncio.gather(a.ensure(s), b.ensure(s))
        return ea, eb

    ea, eb = asyncio.run(main())
    assert ea == eb
    assert list(a.tmp_dir.iterdir()) == [] and len(list(a.envs_dir.iterdir())) == 1
    assert run_py(a.lookup(s).python, "import tinypkg; print(tinypkg.WHO)") == "tinypkg 1.0"  # type: ignore[union-attr]


def test_failed_build_raises_with_uv_message_and_leaves_nothing(
    cache: EnvironmentCache, index_url: str
) -> None:
    s = spec(index_url, "needs-missing")
    logs: list[str] = []
    with pytest.raises(EnvironmentBuildError) as info:
        asyncio.run(cache.ensure(s, logs.append))
    err = info.value
    assert isinstance(err, FailedPrecondition)
    assert "no-such-dependency" in str(err) and "no-such-dependency" in err.stderr
    assert err.returncode not in (0, None)
    assert any("no-such-dependency" in line for line in logs)
    assert list(cache.tmp_dir.iterdir()) == [] and list(cache.envs_dir.iterdir()) == []
    assert cache.lookup(s) is None
    with pytest.raises(EnvironmentBuildError):  # failures are not cached: tried again
        asyncio.run(cache.ensure(s))
    assert cache.builds == 2


def test_missing_python_version_is_failed_precondition_listing_available(
    cache: EnvironmentCache, index_url: str
) -> None:
    available = cache.available_pythons()
    assert OWN in available and all(p.is_absolute() and "shims" not in p.parts for p in available.values())
    with pytest.raises(FailedPrecondition, match=rf"python 3\.99 is not installed here; available: .*{OWN}"):
        cache.interpreter_for("3.99")
    with pytest.raises(FailedPrecondition, match=r"3\.99"):
        asyncio.run(cache.ensure(spec(index_url, "tinypkg", python_version="3.99")))
    assert cache.builds == 0


def test_another_installed_python_version(cache: EnvironmentCache, index_url: str) -> None:
    others = [v for v in cache.available_pythons() if v != OWN and tuple(map(int, v.split("."))) >= (3, 8)]
    if not others:
        pytest.skip("only one python version installed here")
    version = others[-1]
    env = asyncio.run(cache.ensure(spec(index_url, "tinypkg", python_version=version)))
    out = run_py(env.python, "import sys, tinypkg; print('%d.%d' % sys.version_info[:2], tinypkg.WHO)")
    assert out == f"{version} tinypkg 1.0"
    bare = asyncio.run(cache.ensure(EnvSpec.create(version, [])))
    assert bare.venv is None and bare.python == cache.available_pythons()[version]


def test_no_requirements_on_own_python_needs_no_venv_and_no_uv(cache: EnvironmentCache) -> None:
    env = asyncio.run(cache.ensure(EnvSpec.create("", [])))
    assert env.python == Path(sys.executable).absolute() and env.venv is None and env.bin_dir is None
    assert cache.builds == 0
    job_env = env.apply({"PATH": "/usr/bin", "VIRTUAL_ENV": "/elsewhere"})
    assert job_env["PATH"] == f"{env.python.parent}{os.pathsep}/usr/bin"
    assert "VIRTUAL_ENV" not in job_env and job_env["PYTHONUNBUFFERED"] == "1"


def test_apply_puts_venv_bin_first(cache: EnvironmentCache, index_url: str) -> None:
    env = asyncio.run(cache.ensure(spec(index_url, "tinypkg")))
    job_env = env.apply({"PATH": "/usr/bin:/bin", "PYTHONHOME": "/x"})
    assert job_env["PATH"].split(os.pathsep) == [str(env.bin_dir), "/usr/bin", "/bin"]
    assert job_env["VIRTUAL_ENV"] == str(env.venv) and job_env["PYTHONUNBUFFERED"] == "1"
    assert "PYTHONHOME" not in job_env
    # `python` on the job's PATH is the venv's.
    out = subprocess.run(
        ["python", "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        env=job_env,
        timeout=60,
    )
    assert out.stdout.strip() == str(env.venv), out.stderr


def test_local_modules_shadow_installed_package(
    cache: EnvironmentCache, index_url: str, tmp_path: Path
) -> None:
    env = asyncio.run(cache.ensure(spec(index_url, "shadowme")))
    code = "import shadowme; print(shadowme.WHO)"
    assert run_py(env.python, code, env.apply(os.environ)) == "installed"
    local = tmp_path / "local_modules"
    local.mkdir()
    (local / "shadowme.py").write_text("WHO = 'local'\n")
    job_env = env.apply(os.environ)
    job_env["PYTHONPATH"] = str(local)
    assert run_py(env.python, code, job_env) == "local"


def test_bad_requirement_string_is_invalid_argument_naming_it() -> None:
    with pytest.raises(InvalidArgument) as info:
        EnvSpec.from_proto(jobs_pb2.PythonEnv(requirements=["tinypkg", "numpy=>1.0"]))
    assert info.value.field == "env.python_env.requirements"
    assert "'numpy=>1.0'" in str(info.value)
    # pypa packaging's grammar, as pip and uv read it: "pkg~=1" and a local version in a range are
    # refused here, not later in uv
    for bad in [
        "foo==",
        "-e .",
        "foo bar",
        "foo[x",
        "foo; bogus == '1'",
        "foo @ not-a-url",
        "",
        "pkg~=1",
        "pkg>=1.0+local",
    ]:
        with pytest.raises(ValueError):
            normalize_requirement(bad)
    with pytest.raises(InvalidArgument, match="python_version"):
        EnvSpec.from_proto(jobs_pb2.PythonEnv(python_version="three"))


def test_from_proto_reads_pip_options() -> None:
    pe = jobs_pb2.PythonEnv(
        python_version="3.11.4",
        requirements=["B-Pkg[X]>=1; python_version >= '3.8'", "a"],
        pip_options=jobs_pb2.PipOptions(
            index_url="https://mirror/simple",
            extra_index_urls=["https://extra/simple"],
            trusted_hosts=["mirror"],
            no_deps=True,
        ),
    )
    s = EnvSpec.from_proto(pe)
    assert s.python_version == "3.11"
    assert s.requirements == ("a", 'b-pkg[x]>=1; python_version >= "3.8"')
    assert s.uv_install_args() == [
        "--index-url",
        "https://mirror/simple",
        "--extra-index-url",
        "https://extra/simple",
        "--allow-insecure-host",
        "mirror",
        "--no-deps",
    ]


def test_conda_yaml_python_and_pip_section(cache: EnvironmentCache, index_url: str) -> None:
    conda = f"""
name: job
channels: [defaults]
dependencies:
  - python={OWN}
  - pip
  - pip:
    - --index-url {index_url}
    - tinypkg==1.0
"""
    s = EnvSpec.from_proto(jobs_pb2.PythonEnv(conda_yaml=conda))
    assert s.python_version == OWN and s.requirements == ("tinypkg==1.0",) and s.index_url == index_url
    env = asyncio.run(cache.ensure(s))
    assert run_py(env.python, "import tinypkg; print(tinypkg.WHO)") == "tinypkg 1.0"

    conda_only = (
        "dependencies:\n  - python=3.11\n  - numpy=1.26\n  - conda-forge::cudatoolkit\n  - pip:\n    - a\n"
    )
    with pytest.raises(FailedPrecondition, match=r"numpy=1\.26, conda-forge::cudatoolkit"):
        EnvSpec.from_proto(jobs_pb2.PythonEnv(conda_yaml=conda_only))
    with pytest.raises(InvalidArgument, match=r"conda_yaml.*'bad=='"):
        EnvSpec.from_proto(jobs_pb2.PythonEnv(conda_yaml="dependencies:\n  - pip:\n    - bad==\n"))
    with pytest.raises(InvalidArgument, match="disagrees"):
        EnvSpec.from_proto(
            jobs_pb2.PythonEnv(python_version="3.10", conda_yaml="dependencies: [python=3.12]")
        )


def test_eviction_removes_least_recently_used_never_in_use(cache: EnvironmentCache, index_url: str) -> None:
    sa, sb, sc = spec(index_url, "tinypkg"), spec(index_url, "bigpkg"), spec(index_url, "shadowme")
    ea = asyncio.run(cache.ensure(sa))
    eb = asyncio.run(cache.ensure(sb))
    assert ea.venv is not None and eb.venv is not None
    sizes = {p: size for p, _, size in cache.entries()}
    assert set(sizes) == {ea.venv, eb.venv}
    time.sleep(0.01)
    assert cache.lookup(sa) == ea  # a hit refreshes A: B is now least recently used
    assert sizes[eb.venv] > sizes[ea.venv] + 250_000
    # The cap fits A and the new C (both small) but not the big B as well: building C evicts B, not A.
    cache.size_cap_bytes = 2 * sizes[ea.venv] + 50_000
    ec = asyncio.run(cache.ensure(sc))
    assert {p for p, _, _ in cache.entries()} == {ea.venv, ec.venv}
    assert cache.lookup(sb) is None and not eb.venv.exists()  # type: ignore[union-attr]
    assert list(cache.tmp_dir.iterdir()) == []
    # In use: never evicted, even past the cap.
    cache.acquire(ec)
    cache.size_cap_bytes = 1
    assert cache.evict() == [ea.venv]
    assert cache.lookup(sc) == ec and cache.lookup(sa) is None
    cache.release(ec)
    assert cache.evict() == [ec.venv]


def test_use_holds_the_environment(cache: EnvironmentCache, index_url: str) -> None:
    cache.size_cap_bytes = 1

    async def main() -> None:
        async with cache.use(spec(index_url, "tinypkg")) as env:
            assert cache.evict() == [] and env.python.exists()
        assert cache.evict() == [env.venv]

    asyncio.run(main())


class _NoCacheHandler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Cache-Control", "max-age=0, must-revalidate")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_index(index_dir: Path) -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_NoCacheHandler, directory=str(index_dir))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_index_retries_offline_from_uv_cache(
    tmp_path: Path, http_index: tuple[str, http.server.ThreadingHTTPServer]
) -> None:
    url, server = http_index
    env = dict(os.environ, UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_HTTP_RETRIES="0")
    cache = EnvironmentCache(tmp_path / "envcache", env=env)
    asyncio.run(cache.ensure(spec(url, "tinypkg")))  # online: uv caches the index pages and wheel
    server.shutdown()
    server.server_close()
    logs: list[str] = []
    t0 = time.monotonic()
    offline_env = asyncio.run(cache.ensure(spec(url, "tinypkg", no_deps=True), logs.append))
    assert any("retrying offline" in line for line in logs), logs
    assert run_py(offline_env.python, "import tinypkg; print(tinypkg.WHO)") == "tinypkg 1.0"
    # Never seen online: fails (no hang) with both uv messages.
    with pytest.raises(EnvironmentBuildError) as info:
        asyncio.run(cache.ensure(spec(url, "shadowme")))
    assert "offline retry" in str(info.value) and "shadowme" in str(info.value)
    assert time.monotonic() - t0 < 30
    assert list(cache.tmp_dir.iterdir()) == []


def test_find_links_from_the_server_option(tmp_path: Path, wheelhouse: Path, uv_env: dict[str, str]) -> None:
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    (empty_index / "index.html").write_text("<html><body></body></html>")
    cache = EnvironmentCache(tmp_path / "envcache", env=uv_env, find_links=[str(wheelhouse)])
    s = spec(empty_index.as_uri(), "shadowme")
    env = asyncio.run(cache.ensure(s))
    assert run_py(env.python, "import shadowme; print(shadowme.WHO)") == "installed"
    other = EnvironmentCache(tmp_path / "envcache", env=uv_env)  # no find-links: a different key
    assert other.lookup(s) is None


def test_stale_build_dirs_of_dead_processes_are_removed(tmp_path: Path, uv_env: dict[str, str]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp = tmp_path / "envcache" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / f"abc.{dead.pid}.0000").mkdir()
    (tmp / f"abc.{os.getpid()}.0000").mkdir()  # a live process's build stays
    EnvironmentCache(tmp_path / "envcache", env=uv_env)
    assert sorted(p.name for p in tmp.iterdir()) == [f"abc.{os.getpid()}.0000"]


def test_build_past_its_time_limit_fails_and_leaves_nothing(
    tmp_path: Path, index_url: str, uv_env: dict[str, str]
) -> None:
    cache = EnvironmentCache(tmp_path / "envcache", env=uv_env, build_timeout_s=0.001)
    with pytest.raises(EnvironmentBuildError, match="timed out"):
        asyncio.run(cache.ensure(spec(index_url, "tinypkg")))
    assert list(cache.tmp_dir.iterdir()) == [] and list(cache.envs_dir.iterdir()) == []


def _fake_python(path: Path) -> None:
    """An executable file where an interpreter would be (discovery never runs it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)


def test_discovery_picks_the_newest_release_and_skips_names_that_are_not_releases(tmp_path: Path) -> None:
    # Versions no real interpreter here has (3.9x), so only these fakes can answer for them.
    pyenv = tmp_path / "pyenv" / "versions"
    for name in [
        "3.97.9",
        "3.97.10",
        "3.96.0rc1",
        "3.95.1",
        "3.95.2rc1",
        "3.94-dev",
        "3.93.0t",
        "miniconda3-latest",
    ]:
        v = ".".join(name.split(".")[:2]).removesuffix("-dev")
        _fake_python(pyenv / name / "bin" / f"python{v}")
    uv = tmp_path / "uv-pythons"
    for name in [
        "cpython-3.92.9-linux-x86_64-gnu",
        "cpython-3.92.10-linux-x86_64-gnu",
        "cpython-3.91.0+freethreaded-linux-x86_64-gnu",
        "pypy-3.90.1-linux-x86_64-gnu",
    ]:
        v = ".".join(name.split("-")[1].split(".")[:2])
        _fake_python(uv / name / "bin" / f"python{v}")
    on_path = tmp_path / "bin"
    _fake_python(on_path / "python3.89")
    _fake_python(tmp_path / "pyenv" / "shims" / "python3.88")  # a shim: skipped
    _fake_python(tmp_path / "venv" / "bin" / "python3.87")  # a venv's bin: skipped
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    path = os.pathsep.join([str(on_path), str(tmp_path / "pyenv" / "shims"), str(tmp_path / "venv" / "bin")])
    env = {"PATH": path, "PYENV_ROOT": str(tmp_path / "pyenv"), "UV_PYTHON_INSTALL_DIR": str(uv)}
    found = EnvironmentCache(tmp_path / "cache", env=env).available_pythons()

    assert found[OWN] == Path(getattr(sys, "_base_executable", sys.executable)).absolute()
    assert found["3.97"] == pyenv / "3.97.10" / "bin" / "python3.97"  # 10 > 9, not as strings
    assert found["3.96"] == pyenv / "3.96.0rc1" / "bin" / "python3.96"  # a candidate, when alone
    assert found["3.95"] == pyenv / "3.95.1" / "bin" / "python3.95"  # a final release over a newer rc
    assert found["3.92"] == uv / "cpython-3.92.10-linux-x86_64-gnu" / "bin" / "python3.92"
    assert found["3.89"] == on_path / "python3.89"
    for absent in ["3.94", "3.93", "3.91", "3.90", "3.88", "3.87"]:
        assert absent not in found
    versions = list(found)
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))))


def test_only_exact_pins_installed_here_need_no_venv(tmp_path: Path) -> None:
    from importlib.metadata import version

    cache = EnvironmentCache(tmp_path / "envcache", uv="/nonexistent/uv")
    cp = version("cloudpickle")
    here = Path(sys.executable).absolute()
    for reqs in ([f"cloudpickle=={cp}"], [f"CloudPickle == {cp}.0", f"pyyaml=={version('PyYAML')}"]):
        env = cache.lookup(EnvSpec.create("", reqs))
        assert env is not None and env.python == here and env.venv is None, reqs
    for req in [
        f"cloudpickle>={cp}",  # a range, even one the server satisfies
        f"cloudpickle=={cp.split('.')[0]}.*",  # a wildcard
        f"cloudpickle[extra]=={cp}",  # extras may need more packages
        f"cloudpickle=={cp}; python_version > '3'",  # a marker
        "cloudpickle==0.0.1",  # another version
        "no-such-distribution-here==1.0",
    ]:
        assert cache.lookup(EnvSpec.create("", [req])) is None, req
    assert (
        EnvironmentCache(tmp_path / "envcache", reuse_server_packages=False).lookup(
            EnvSpec.create("", [f"cloudpickle=={cp}"])
        )
        is None
    )


def test_from_proto_parses_a_python_env_once_and_refuses_a_bad_one_every_time() -> None:
    pe = jobs_pb2.PythonEnv(requirements=["TinyPkg==1.0"], python_version="3.11.2")
    pe.pip_options.index_url = "file:///x"
    first = EnvSpec.from_proto(pe)
    pe.local_modules.add(sha256="ab" * 32)  # local modules are no part of the environment
    assert EnvSpec.from_proto(pe) is first
    assert first == EnvSpec.create("3.11", ["tinypkg==1.0"], index_url="file:///x")
    pe.requirements.append("x==")
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="'x=='"):
            EnvSpec.from_proto(pe)
