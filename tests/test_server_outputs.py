"""What a job hands back carries nothing from outside its directory, and what it is given cannot
reach the server: symlinks in output dirs, hard-linked outputs, ZIP inputs whose symlinks climb
out, and ``${VAR}`` values that a shell would run (issue 9, items 6, 7, 8 and 10)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.common.bundle import extract_as
from jupyter_ds_jobs.common.errors import FailedPrecondition
from jupyter_ds_jobs.server.executors.local import SHELL, direct_argv
from jupyter_ds_jobs.server.substitute import substitute
from tests.conftest import RunningServer
from tests.jobhelpers import Api, execute_response, file_msg, http

S = jobs_pb2
LNK = stat.S_IFLNK | 0o777
REG = stat.S_IFREG | 0o644


@pytest.fixture
def api(server: RunningServer) -> Api:
    return Api(server.channel(), server.info.token)


def _outputs(op) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """The Execute response's outputs by path, downloaded; each checked against its sha256."""
    got = {}
    for f in execute_response(op).output_files:
        status, body = http("GET", f.url)
        assert status == 200, body
        assert hashlib.sha256(body).hexdigest() == f.file.sha256, f"blob of {f.file.desc.path} changed"
        got[f.file.desc.path] = body
    return got


def _zip_tree(data: bytes) -> dict[str, tuple[str, bytes]]:
    """A ZIP's entries: name -> (kind, content or link target)."""
    tree = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            kind = "link" if stat.S_ISLNK(mode) else "dir" if info.is_dir() else "file"
            tree[info.filename] = (kind, zf.read(info))
    return tree


# -- item 6: symlinks inside an output directory --------------------------------------------------
def test_symlinks_in_an_output_dir_are_stored_as_links_or_left_out(api: Api, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("server secret")
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "x.txt").write_text("file of a dir outside")
    cmd = (
        "mkdir -p od/sub && echo A > od/a.txt && echo T > top.txt && echo S > od/sub/s.txt"
        f" && ln -s {secret} od/secret && ln -s /proc/self/environ od/env && ln -s {outside_dir} od/outdir"
        " && ln -s ../../../.. od/sub/high && ln -s loop od/loop"
        " && ln -s a.txt od/rel && ln -s $PWD/od/a.txt od/abs && ln -s ../top.txt od/up"
        " && ln -s sub od/subl && ln -s missing od/dangling"
    )
    job, op = api.run(api.create(cmd, outputs=[("od", "")]))
    assert job.status == S.SUCCESS, job.status_details
    zipped = _outputs(op)["od"]
    for leaked in (b"server secret", b"file of a dir outside", os.environ["DS_JOBS_STATE_DIR"].encode()):
        assert leaked not in zipped
    assert _zip_tree(zipped) == {
        "od/": ("dir", b""),
        "od/a.txt": ("file", b"A\n"),
        "od/abs": ("link", b"a.txt"),  # absolute inside the job dir: made relative
        "od/dangling": ("link", b"missing"),
        "od/rel": ("link", b"a.txt"),
        "od/sub/": ("dir", b""),
        "od/sub/s.txt": ("file", b"S\n"),
        "od/subl": ("link", b"sub"),  # a link to a directory is not descended
        "od/up": ("link", b"../top.txt"),
    }
    errors = {e.description.split(": ")[1]: e for e in job.file_errors}
    assert sorted(errors) == ["od/env", "od/loop", "od/outdir", "od/secret", "od/sub/high"]
    assert all(
        e.output_file_desc.path == "od" and e.type == S.FileUploadError.UPLOAD_FAILED for e in errors.values()
    )
    assert "leads outside the job directory" in errors["od/secret"].description
    assert [e.description for e in execute_response(op).output_files_errors] == [
        e.description for e in job.file_errors
    ]
    # the client unpacks it as it is: links inside, nothing through them
    zpath = tmp_path / "od.zip"
    zpath.write_bytes(zipped)
    extract_as(zpath, tmp_path / "dl" / "od")
    assert (tmp_path / "dl" / "od" / "rel").read_text() == "A\n"
    assert os.readlink(tmp_path / "dl" / "od" / "up") == "../top.txt"


# -- item 7: hard-linked and symlinked output files ------------------------------------------------
def test_a_hard_linked_output_is_stored_as_a_copy(server: RunningServer, api: Api, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"original\n")
    # The job waits for o4, which this test hard-links to a file outside (a sandboxed job could
    # not reach it itself; an unsandboxed one would simply run `ln`).
    cmd = (
        "for i in $(seq 600); do [ -e o4 ] && break; sleep 0.05; done"
        f" && echo inside > inside.txt && ln -s inside.txt lin && ln -s {outside} lout"
        " && mkdir od && ln inside.txt od/hard"
    )
    job_id = api.create(cmd, outputs=[("o4", ""), ("lin", ""), ("lout", ""), ("od", "")])
    op = api.execute(job_id)
    api.wait_status(job_id, {S.EXECUTING})
    assert server.thread.server is not None
    os.link(outside, server.thread.server.manager.workdir(job_id) / "o4")
    op = api.wait(op)
    job = api.get(job_id)
    assert job.status == S.SUCCESS, job.status_details
    with open(outside, "ab") as f:  # the job is over: the file outside changes
        f.write(b"written later\n")
    got = _outputs(op)  # served bytes still match their sha256
    assert got["o4"] == b"original\n"
    assert got["lin"] == b"inside\n"  # a symlink to a file inside: its content
    assert _zip_tree(got["od"])["od/hard"] == ("file", b"inside\n")
    [err] = job.file_errors  # a symlink to a file outside: refused, as before
    assert err.output_file_desc.path == "lout" and "escapes the job directory" in err.description


# -- item 8: ZIP inputs whose symlinks climb out ------------------------------------------------------
# each link alone looks inside; together l1 is four levels above where the ZIP is unpacked
CHAIN = [("l1", b"l2/..", LNK), ("l2", b"l3/..", LNK), ("l3", b"l4/..", LNK), ("l4", b"l5/..", LNK)]
CHAIN += [("l5", b".", LNK), ("ok.txt", b"fine", REG)]


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("write_through", [False, True], ids=["links", "links+entry-through-l1"])
@pytest.mark.parametrize("as_module", [False, True], ids=["zip-input", "local-module"])
def test_a_zip_whose_symlink_chain_climbs_out_never_reaches_the_state_dir(
    server: RunningServer, api: Api, as_module: bool, write_through: bool
) -> None:
    data = _zip(CHAIN + ([("l1/evil.txt", b"pwned", REG)] if write_through else []))
    p = jobs_pb2.JobParameters(cmd="cat l1/secret.key in/l1/secret.key > leak.txt; ls -R l1 in/l1 > ls.txt")
    p.output_files.add(path="leak.txt")
    p.output_files.add(path="ls.txt")
    if as_module:
        p.env.python_env.local_modules.append(
            file_msg("/tmp/m/mods.zip", data, "_LOCAL_MODULE_0", zipped=True)
        )
    else:
        p.input_files.append(file_msg("in", data, zipped=True))
    op = api.jobs.Create(
        pjs_pb2.CreateProjectJobRequest(project_id="proj", job_parameters=p), metadata=api.md
    )
    resp = pjs_pb2.CreateProjectJobResponse()
    assert op.response.Unpack(resp)
    [upload] = resp.upload_files
    status, body = http("PUT", upload.url, data)
    if status == 201:
        job, _ = api.run(resp.job_id)
        assert job.status == S.ERROR
        assert "zip entry 'l1" in job.status_details, job.status_details
        assert not job.output_files  # the command never ran
    else:  # refused at upload: it says which entry
        assert status == 400 and b"l1" in body, body
    state = Path(server.info.state_dir)
    for top in (state.parent, state):  # nothing written above the job dir
        assert not list(top.glob("evil.txt")) and not list(top.glob("*/evil.txt"))
    assert not [p for p in state.rglob("*") if p.name in ("evil.txt", "l1")]


# -- item 10: ${VAR} values quoted for the shell ---------------------------------------------------
HOSTILE = [
    "with  two spaces.txt",
    'it\'s "quoted".txt',
    "$(touch PWNED).txt",
    "`touch PWNED`.txt",
    "a;touch PWNED;.txt",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_substituted_paths_and_arguments_reach_the_command_as_one_word(api: Api, name: str) -> None:
    content = b"content of " + name.encode()
    cmd = (
        'cat ${IN} > ${OUT} && cat "${IN}" >> ${OUT}'
        " && printf '%s|' ${ARG} \"${ARG}\" '${ARG}' \"$(printf %s ${ARG})\" > arg.txt && ls -A > listing.txt"
    )
    job_id = api.create(
        cmd,
        inputs={name: (content, "IN")},
        outputs=[("res " + name, "OUT"), ("arg.txt", ""), ("listing.txt", "")],
        arguments=[jobs_pb2.Argument(name="ARG", value=name)],
    )
    job, op = api.run(job_id)
    assert job.status == S.SUCCESS, job.status_details
    got = _outputs(op)
    assert "PWNED" not in got["listing.txt"].decode().splitlines()
    assert got["res " + name] == content * 2
    assert got["arg.txt"].decode() == f"{name}|" * 4


CONTEXTS = [  # (cmd, what it prints for the value)
    ("printf '<%s>' ${V}", "<{}>"),
    ("echo ${V}", "{}\n"),  # plain: executed without a shell when the value needs no quoting
    ('printf "<%s>" "${V}"', "<{}>"),
    ("printf '<%s>' '${V}'", "<{}>"),
    ("printf '<%s>' $'${V}'", "<{}>"),
    ("printf '<%s>' \"$(printf %s ${V})\"", "<{}>"),
    ('printf \'<%s>\' "`printf %s \\"${V}\\"`"', "<{}>"),
    ("printf '<%s>' \"$(case a in a) printf %s ${V};; esac)\"", "<{}>"),
    ("cat <<EOF\n<${V}>\nEOF\n", "<{}>\n"),
    ("cat <<'EOF'\n<${V}>\nEOF\n", "<{}>\n"),
    ("printf '<%s>' ${V} # ${V}", "<{}>"),
]
VALUES = [*HOSTILE, "plain.txt", "", "a\nb", "back\\slash $HOME ~ *", "'; touch PWNED; '", '\\"`touch PWNED`']


@pytest.mark.parametrize(("template", "prints"), CONTEXTS)
def test_substitute_quotes_for_where_the_value_lands(template: str, prints: str, tmp_path: Path) -> None:
    path = os.environ["PATH"]
    for value in VALUES:
        try:
            cmd = substitute(template, {"V": value})
        except FailedPrecondition as e:  # a newline would end the here-document: refused
            assert "<<" in template and "\n" in value and "${V}" in str(e)
            continue
        argv = direct_argv(cmd, path)
        # a plain command stays plain (no shell) only with a value that needs no quoting
        assert (argv is not None) == (template == "echo ${V}" and value == "plain.txt"), cmd
        run = subprocess.run(argv or [SHELL, "-c", cmd], cwd=tmp_path, capture_output=True, timeout=10)
        assert run.stdout.decode() == prints.format(value), (cmd, run.stderr)
        assert not (tmp_path / "PWNED").exists(), cmd


def test_direct_argv_splits_words_as_bash_does() -> None:
    path = str(Path(shutil.which("printf") or "/usr/bin/printf").parent)
    assert direct_argv("printf\tx  y", path) == [shutil.which("printf", path=path), "x", "y"]
    assert direct_argv("printf\xa0x", path) is None  # one word for bash: no such command
