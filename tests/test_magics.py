"""``%%ds_job`` and the ``%ds_*`` magics on a real InteractiveShell against a real job server."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.common.errors import InvalidArgument, JobFailed
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.core.transfer import LocalFile
from jupyter_ds_jobs.magics import DsJob, DsJobsMagics
from jupyter_ds_jobs.packaging import celljob
from jupyter_ds_jobs.packaging.cellio import UnpicklableInput
from jupyter_ds_jobs.packaging.celljob import CellJobOptions, IPythonSyntaxError, build_cell_job
from jupyter_ds_jobs.widgets import JobWidget, Summary, TextView

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "jupyter_ds_jobs")
    return sh


@pytest.fixture
def client(server: Any) -> Iterator[JobsClient]:
    c = JobsClient(server.info.endpoint, server.info.token)
    yield c
    c.close()


@pytest.fixture
def magics(shell: InteractiveShell, client: JobsClient, monkeypatch: pytest.MonkeyPatch) -> DsJobsMagics:
    monkeypatch.setenv("DS_JOBS_DISPLAY", "text")
    monkeypatch.setenv("DS_JOBS_CONFIG", str(Path(os.environ["JUPYTER_DATA_DIR"]) / "ds_jobs_test.json"))
    m = DsJobsMagics(shell)
    m.client = client
    shell.register_magics(m)
    for name in [k for k in shell.user_ns if not k.startswith("_") and k not in shell.user_ns_hidden]:
        del shell.user_ns[name]
    return m


def run(shell: InteractiveShell, args: str, cell: str) -> Any:
    return shell.run_cell_magic("ds_job", args, cell)


# --------------------------------------------------------------------------- round trips


def test_round_trip_of_variables_functions_and_classes(
    shell: InteractiveShell, magics: DsJobsMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell(
        "class Frame:\n"
        "    def __init__(self, rows): self.rows = rows\n"
        "    def total(self): return sum(self.rows)\n"
        "def scale(v, k=2):\n"
        "    return v * k\n"
        "df = Frame([1, 2, 3])\n"
        "untouched = 'not read by the cell'\n"
    )
    run(
        shell,
        "--name t1",
        "import os\nscore = scale(df.total())\nframe2 = Frame([score])\nprint('score is', score)\n",
    )
    ns = shell.user_ns
    assert ns["score"] == 12
    assert type(ns["frame2"]).__name__ == "Frame" and ns["frame2"].total() == 12
    assert ns["os"] is os  # a module bound by the cell comes back by reference
    out = capsys.readouterr()
    assert "score is 12" in out.out
    assert "SUCCESS, return code 0" in out.out
    assert "variables loaded: os, score, frame2" in out.out


def test_inputs_outputs_overrides_no_outputs_and_del(shell: InteractiveShell, magics: DsJobsMagics) -> None:
    shell.user_ns.update(a=1, b=2, gone=3)
    run(shell, "--outputs c", "c = a + b\nd = 10\n")
    assert shell.user_ns["c"] == 3 and "d" not in shell.user_ns
    run(shell, "--no-outputs", "e = 5\n")
    assert "e" not in shell.user_ns
    run(shell, "--inputs a,gone", "f = a * 7\ndel gone\n")
    assert shell.user_ns["f"] == 7 and "gone" not in shell.user_ns


def test_local_modules_are_shipped_with_what_they_import(
    shell: InteractiveShell, magics: DsJobsMagics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = tmp_path / "nb"
    (nb / "mypkg_dsj").mkdir(parents=True)
    (nb / "mypkg_dsj" / "__init__.py").write_text("from .core import triple\n")
    (nb / "mypkg_dsj" / "core.py").write_text(
        "import helper_dsj\ndef triple(x):\n    return helper_dsj.add(x, 2 * x)\n"
    )
    (nb / "helper_dsj.py").write_text("def add(a, b):\n    return a + b\n")
    monkeypatch.chdir(nb)
    monkeypatch.syspath_prepend(str(nb))
    cj = build_cell_job("from mypkg_dsj import triple\nr = triple(5)\n", {}, CellJobOptions(search_path=[nb]))
    try:
        assert sorted(p.name for p in cj.local_modules) == ["helper_dsj.py", "mypkg_dsj"]
        assert [f.var for f in cj.files if f.zip] == ["_LOCAL_MODULE_0", "_LOCAL_MODULE_1"]
    finally:
        cj.cleanup()
    run(shell, "", "from mypkg_dsj import triple\nr = triple(5)\n")
    assert shell.user_ns["r"] == 15


def test_requirements_are_pinned_from_the_cell_modules_and_objects(tmp_path: Path) -> None:
    import grpc
    import yaml

    from jupyter_ds_jobs.packaging.analysis import requirements_for_modules

    (tmp_path / "localmod_pins.py").write_text("import yaml\n")
    channel_opts = grpc.ChannelConnectivity.READY  # an object whose type lives in grpcio
    ns = {"state": channel_opts}
    cj = build_cell_job(
        "import localmod_pins\nout = str(state)\n",
        ns,
        CellJobOptions(search_path=[tmp_path], pip=["extra-pkg==1.0"]),
    )
    try:
        reqs = list(cj.params.env.python_env.requirements)
        pins = {r.split("==")[0].lower(): r for r in reqs}
        assert pins["pyyaml"] == f"PyYAML=={yaml.__version__}"  # through the local module
        grpc_pin, _ = requirements_for_modules(["grpc"])
        assert grpc_pin[0] in reqs  # the module of an object sent
        assert pins["cloudpickle"].startswith("cloudpickle==")  # the runner's own need
        assert "extra-pkg==1.0" in reqs
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert cj.params.env.python_env.python_version == py
        assert cj.params.cmd == "python _ds_runner.py"
        # each known output is a file of its own (no ZIP to make or open), then the manifest
        assert [d.path for d in cj.params.output_files] == [
            "_ds_outputs/localmod_pins.pkl",
            "_ds_outputs/out.pkl",
            "_ds_outputs/_manifest.json",
            "_ds_error.json",
        ]
    finally:
        cj.cleanup()
    none = build_cell_job("import yaml\n", {}, CellJobOptions(requirements="none", python="3.12"))
    try:
        assert list(none.params.env.python_env.requirements) == []
        assert none.params.env.python_env.python_version == "3.12"
    finally:
        none.cleanup()


def test_unchanged_input_is_deduplicated(shell: InteractiveShell, magics: DsJobsMagics) -> None:
    shell.user_ns["big"] = b"x" * (3 * 2**20)
    run(shell, "", "n = len(big)\n")
    first = magics.client.last_create
    run(shell, "", "n = len(big)\n")
    second = magics.client.last_create
    assert shell.user_ns["n"] == 3 * 2**20
    assert first.bytes_uploaded >= 3 * 2**20
    assert second.bytes_uploaded < 4096  # only the manifest/cell if anything: the pickle was known


# --------------------------------------------------------------------------- refusals


def test_unpicklable_input_is_refused_before_submitting(
    shell: InteractiveShell, magics: DsJobsMagics
) -> None:
    shell.user_ns["lock"] = threading.Lock()
    before = len(list(magics.client.list_jobs()))
    with pytest.raises(UnpicklableInput, match="input variable 'lock'"):
        run(shell, "", "with lock:\n    z = 1\n")
    assert len(list(magics.client.list_jobs())) == before


def test_ipython_syntax_is_refused_naming_the_line(shell: InteractiveShell, magics: DsJobsMagics) -> None:
    with pytest.raises(IPythonSyntaxError, match=r"cell line 3: '!ls -l'"):
        run(shell, "", "x = 1\n!ls -l\n")
    with pytest.raises(IPythonSyntaxError, match=r"cell line 2: '%time y = 2'"):
        run(shell, "", "%time y = 2\n")


def test_input_over_the_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="input variable 'blob'"):
        build_cell_job("n = len(blob)\n", {"blob": b"y" * 5000}, CellJobOptions(max_input_bytes=1000))


def test_unpicklable_output_is_reported(
    shell: InteractiveShell, magics: DsJobsMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    h = run(shell, "-o h0", "import threading\nlk = threading.Lock()\nok = 1\n")
    assert h is None
    job: DsJob = shell.user_ns["h0"]
    assert "lk" in job.unpicklable and shell.user_ns["ok"] == 1
    assert "variable 'lk' did not come back" in capsys.readouterr().err


# --------------------------------------------------------------------------- failures


def test_remote_exception_with_cell_line_numbers(shell: InteractiveShell, magics: DsJobsMagics) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        run(shell, "", "a = 1\n\nb = a / 0\n")
    exc = info.value
    text = "\n".join(exc._render_traceback_())  # type: ignore[attr-defined]
    assert 'File "<ds_job cell>", line 4' in text  # line 1 is the %%ds_job line
    assert "b = a / 0" in text
    assert shell.user_ns["a"] == 1  # what the cell bound before raising is kept, as locally


def test_exit_without_exception_raises_with_code_and_last_lines(
    shell: InteractiveShell, magics: DsJobsMagics
) -> None:
    with pytest.raises(JobFailed, match=r"exit code 3(.|\n)*about to leave") as info:
        run(shell, "", "print('about to leave')\nimport sys\nsys.exit(3)\n")
    assert info.value.return_code == 3


def system_log(client: JobsClient, job_id: str) -> str:
    """The server's system log lines of a finished job (what it says about the job's files)."""
    lines: list[str] = []

    def on(m: pjs_pb2.LogMessage) -> None:
        if m.WhichOneof("source") == "file_path":
            lines.append(m.content.decode("utf-8", "replace"))

    client.follow_logs(job_id, on)
    return "".join(lines)


def test_the_runners_files_leave_no_file_error_whether_the_cell_succeeds_or_raises(
    shell: InteractiveShell, magics: DsJobsMagics, client: JobsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # a success, with a variable the cell may not bind and one it cannot send back: every file the
    # job declares for the runner is there (_ds_error.json says "no error")
    run(shell, "-o h", "x = 1\nif x > 1:\n    never = 2\nimport threading\nlk = threading.Lock()\n")
    job: DsJob = shell.user_ns["h"]
    assert job.status == "SUCCESS" and job.error is None and job.runner_file_errors == {}
    assert shell.user_ns["x"] == 1 and "never" not in shell.user_ns and "lk" in job.unpicklable
    got = client.get(job.job_id)
    assert list(got.file_errors) == []
    assert "_ds_error.json" in {f.desc.path for f in got.output_files}
    system = system_log(client, job.job_id)
    assert "process exited with code 0" in system and "was not created" not in system
    assert "was not created" not in capsys.readouterr().err

    # a failure brings its exception back (type, message, cell line), and no file error either
    with pytest.raises(ValueError, match=r"^bad value 7$") as info:
        run(shell, "-o h", "a = 1\nraise ValueError(f'bad value {a + 6}')\nlater = 2\n")
    assert type(info.value) is ValueError
    text = "\n".join(info.value._render_traceback_())  # type: ignore[attr-defined]
    assert 'File "<ds_job cell>", line 3' in text and "ValueError: bad value 7" in text
    failed: DsJob = shell.user_ns["h"]
    assert failed.status == "ERROR" and failed.return_code == 1 and shell.user_ns["a"] == 1
    assert list(client.get(failed.job_id).file_errors) == []
    assert "was not created" not in system_log(client, failed.job_id)

    # an exception class of the cell's own comes back as that class, with its message
    with pytest.raises(Exception, match="loss is nan") as info:
        run(shell, "", "class TrainingFailed(Exception):\n    pass\nraise TrainingFailed('loss is nan')\n")
    assert type(info.value).__name__ == "TrainingFailed" and str(info.value) == "loss is nan"


def test_a_runner_file_the_job_did_not_bring_back_is_shown(
    shell: InteractiveShell, magics: DsJobsMagics, client: JobsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # the cell ends the process before the runner writes the outputs: a real problem, now shown
    run(shell, "-o h --outputs x", "import os\nx = 1\nos._exit(0)\n")
    job: DsJob = shell.user_ns["h"]
    assert job.status == "SUCCESS" and "x" not in shell.user_ns
    missing = {e.output_file_desc.path for e in client.get(job.job_id).file_errors}
    assert missing == {"_ds_outputs/x.pkl", "_ds_outputs/_manifest.json"}  # _ds_error.json is there
    assert set(job.runner_file_errors) == missing
    out = capsys.readouterr()
    why = "ds_job: output file '_ds_outputs/_manifest.json' was not created by the job"
    assert why in out.err and why[len("ds_job: ") :] in out.out  # on stderr and in the summary


OLD_RUNNER = """\
import json, os, pickle
os.makedirs("_ds_outputs", exist_ok=True)
with open("_ds_outputs/x.pkl", "wb") as f:
    pickle.dump(41, f)
with open("_ds_outputs/_manifest.json", "w") as f:
    json.dump({"outputs": ["x"], "unpicklable": {}, "missing": ["gone"]}, f)
"""


def test_a_job_of_an_older_runner_still_reads_as_a_success(
    shell: InteractiveShell,
    magics: DsJobsMagics,
    client: JobsClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # what a runner before "_ds_error.json is always written" left: no error file on success, no
    # file for a variable that did not come back
    (tmp_path / "old_runner.py").write_text(OLD_RUNNER)
    params = jobs_pb2.JobParameters(cmd="python old_runner.py")
    for path in ("_ds_outputs/x.pkl", "_ds_outputs/gone.pkl", "_ds_outputs/_manifest.json", "_ds_error.json"):
        params.output_files.add(path=path)
    job_id = client.create(params, [LocalFile(tmp_path / "old_runner.py", "old_runner.py", "", False)])
    res = client.wait(job_id, client.execute(job_id))
    assert res.ok, system_log(client, job_id)
    assert {e.output_file_desc.path for e in client.get(job_id).file_errors} == {
        "_ds_outputs/gone.pkl",
        "_ds_error.json",
    }
    capsys.readouterr()
    shell.run_line_magic("ds_job_attach", f"{job_id} -o old")
    job: DsJob = shell.user_ns["old"]
    assert shell.user_ns["x"] == 41 and job.error is None and job.runner_file_errors == {}
    assert "ds_job: output file" not in capsys.readouterr().err


def test_the_handle_shows_the_servers_lines_about_the_runners_files() -> None:
    class Notes:
        def __init__(self) -> None:
            self.notes: list[str] = []

        def note(self, text: str) -> None:
            self.notes.append(text)

    view = Notes()
    job = DsJob(None, "dsj1", shell=None, view=view)  # type: ignore[arg-type]
    for line in (
        "output file '_ds_error.json' was not created by the job",
        "output file '_ds_outputs/_manifest.json' not collected: Permission denied",
    ):
        job._on_log(pjs_pb2.LogMessage(file_path=".system.log", content=line.encode() + b"\n"))
    assert view.notes == [
        "output file '_ds_error.json' was not created by the job",
        "output file '_ds_outputs/_manifest.json' not collected: Permission denied",
    ]


def test_interrupt_cancels_the_job(shell: InteractiveShell, magics: DsJobsMagics) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    started = threading.Event()

    def interrupt() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs = [j for j in magics.client.list_jobs(limit=1) if j.status == jobs_pb2.EXECUTING]
            if jobs:
                started.set()
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        run(
            shell,
            "--graceful-timeout 5",
            "import time\nfor i in range(300):\n    time.sleep(0.1)\ndone = True\n",
        )
    t.join(5)
    assert started.is_set()
    job = next(iter(magics.client.list_jobs(limit=1)))
    assert job.status == jobs_pb2.CANCELLED
    assert "done" not in shell.user_ns


def test_a_second_interrupt_kills_a_job_that_ignores_the_graceful_signal(
    shell: InteractiveShell, magics: DsJobsMagics
) -> None:
    def interrupt_twice() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs = [j for j in magics.client.list_jobs(limit=1) if j.status == jobs_pb2.EXECUTING]
            if jobs:
                time.sleep(0.5)  # the cell has set its SIGTERM handler by now
                os.kill(os.getpid(), signal.SIGINT)  # graceful: SIGTERM, which the job ignores
                time.sleep(1.0)
                os.kill(os.getpid(), signal.SIGINT)  # kill
                return
            time.sleep(0.05)

    t = threading.Thread(target=interrupt_twice, daemon=True)
    t.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(
            shell,
            "--graceful-timeout 120",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n",
        )
    t.join(5)
    assert time.monotonic() - t0 < 60  # killed, long before the 120 s graceful timeout
    job = next(iter(magics.client.list_jobs(limit=1)))
    assert job.status == jobs_pb2.CANCELLED


# --------------------------------------------------------------------------- async, attach, line magics


def test_async_handle_result_cancel_and_attach(
    shell: InteractiveShell, magics: DsJobsMagics, client: JobsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.user_ns["k"] = 4
    run(shell, "--async -o h1 --name slow", "import time\ntime.sleep(0.5)\nprint('woke up')\nres = k ** 2\n")
    h: DsJob = shell.user_ns["h1"]
    assert "res" not in shell.user_ns  # returned at once
    assert h.result(timeout=30) == {"res": 16, "time": time}
    assert shell.user_ns["res"] == 16

    # a "new kernel": a fresh magics instance, an empty namespace; attach by id
    del shell.user_ns["res"]
    fresh = DsJobsMagics(shell)
    fresh.client = client
    shell.register_magics(fresh)
    capsys.readouterr()
    shell.run_line_magic("ds_job_attach", f"{h.job_id} -o again")
    assert shell.user_ns["res"] == 16
    out = capsys.readouterr().out
    assert "woke up" in out  # the logs, replayed

    run(shell, "--async -o h2", "import time\ntime.sleep(30)\nnever = 1\n")
    h2: DsJob = shell.user_ns["h2"]
    deadline = time.monotonic() + 15
    while h2.status != "EXECUTING" and time.monotonic() < deadline:
        time.sleep(0.05)
    shell.run_line_magic("ds_job_cancel", h2.job_id)
    assert h2.wait(20) and h2.status == "CANCELLED"
    with pytest.raises(JobFailed, match="cancelled"):
        h2.result()

    shell.run_line_magic("ds_jobs", "--limit 5")
    table = capsys.readouterr().out
    assert h.job_id in table and "CANCELLED" in table and "SUCCESS" in table
    shell.run_line_magic("ds_job_logs", h.job_id)
    assert "woke up" in capsys.readouterr().out


def test_ds_config_persists_settings(
    shell: InteractiveShell, magics: DsJobsMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("ds_config", "project=p1 defaults.instance_type=g1.1 defaults.requirements=none")
    out = capsys.readouterr().out
    assert "project = p1" in out and "defaults.instance_type = g1.1" in out
    opts = magics._options(magics._parse("ds_job", ""))
    assert list(opts.instance_types) == ["g1.1"] and opts.requirements == "none"
    shell.run_line_magic("ds_config", "project= defaults.instance_type= defaults.requirements=")
    with pytest.raises(InvalidArgument, match="unknown setting 'colour'"):
        shell.run_line_magic("ds_config", "colour=red")


def test_help_lists_every_option(magics: DsJobsMagics) -> None:
    doc = DsJobsMagics.ds_job.__doc__ or ""
    for opt in (
        "--name", "--desc", "--instance-type", "--inputs", "--outputs", "--no-outputs", "--file",
        "--output-file", "--requirements", "--pip", "--python", "--env", "--graceful-timeout",
        "--async", "-o", "--endpoint", "--project", "--quiet",
    ):  # fmt: skip
        assert opt in doc, opt


def test_files_in_and_out(
    shell: InteractiveShell, magics: DsJobsMagics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("1 2 3\n")
    run(
        shell,
        "--file data.txt:DATA --output-file report.txt --env GREETING=hi",
        "import os\nnums = open(DATA).read().split()\nopen('report.txt', 'w').write(os.environ['GREETING'] + str(len(nums)))\n",
    )
    assert shell.user_ns["nums"] == ["1", "2", "3"]
    assert (tmp_path / "report.txt").read_text() == "hi3"


# --------------------------------------------------------------------------- views


def test_widget_model_states() -> None:
    cancelled: list[bool] = []
    w = JobWidget("train", on_cancel=lambda: cancelled.append(True))
    try:
        w.started("dsj123")
        assert "train" in w.header.value and "dsj123" in w.header.value
        w.status("EXECUTING")
        assert w.bar.value == 10 and "executing" in w.header.value
        w.progress("epoch 2/5", 40)
        assert w.bar.value == 40 and w.progress_label.value == "epoch 2/5"
        w.log("line one\npartial")
        w.log(" done\n")
        w.log("<oops>\n", stderr=True)
        w.cancel_button.click()
        assert cancelled == [True] and w.cancel_button.disabled
        w.finished(Summary("SUCCESS", 0, 1.5, ["model", "score"], ["report.txt"]))
        assert "line one" in w.output.value and "partial done" in w.output.value
        assert "&lt;oops&gt;" in w.output.value and 'title="stderr"' in w.output.value
        assert w.bar.value == 100 and w.bar.bar_style == "success"
        assert "variables loaded: model, score" in w.summary_html.value
        assert "files downloaded: report.txt" in w.summary_html.value
        text = w.text()
        assert "[stderr] <oops>" in text and "SUCCESS, return code 0" in text
        bundle = w._repr_mimebundle_()
        assert bundle is not None and "application/vnd.jupyter.widget-view+json" in bundle
    finally:
        w.close()


def test_widget_log_buffer_is_bounded() -> None:
    w = JobWidget("flood", max_lines=50)
    try:
        w.log("".join(f"line {i}\n" for i in range(1000)))
        w.finished(Summary("SUCCESS", 0))
        assert "line 999" in w.output.value and "line 949" not in w.output.value
        assert "950 earlier lines not shown" in w.output.value
    finally:
        w.close()


def test_magic_drives_the_widget(
    shell: InteractiveShell, magics: DsJobsMagics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DS_JOBS_DISPLAY", "widget")
    run(
        shell,
        "-o hw --name wjob",
        "print('to the widget')\nimport sys\nprint('warn', file=sys.stderr)\nv = 1\n",
    )
    view = shell.user_ns["hw"].view
    assert isinstance(view, JobWidget)
    assert view.bar.value == 100 and view.bar.bar_style == "success"
    assert "to the widget" in view.output.value and 'title="stderr">warn' in view.output.value
    assert "variables loaded: sys, v" in view.summary_html.value and view.cancel_button.disabled


def test_text_view_writes_plain_streams() -> None:
    import io

    out, err = io.StringIO(), io.StringIO()
    v = TextView("t", stdout=out, stderr=err)
    v.started("dsj1")
    v.status("EXECUTING")
    v.log("hello\n")
    v.log("bad\n", stderr=True)
    v.finished(Summary("ERROR", 2, 0.5))
    assert "hello\n" in out.getvalue() and err.getvalue() == "bad\n"
    assert "[ds_job] t job dsj1: ERROR, return code 2" in out.getvalue()


def test_text_view_never_cuts_into_a_line_of_the_job() -> None:
    import io

    out, err = io.StringIO(), io.StringIO()
    v = TextView("t", stdout=out, stderr=err)
    v.log("job says")  # the line arrives in pieces...
    v.status("EXECUTING")  # ...and a status line comes in between
    v.log(" HELLO\n")
    v.log("partial at the end")
    v.finished(Summary("SUCCESS", 0, 0.5))
    assert out.getvalue().splitlines() == [
        "job says HELLO",
        v_line(out, "[ds_job] t executing"),
        "partial at the end",
        "[ds_job] t job : SUCCESS, return code 0, 0.50 s",
    ]


def v_line(out: object, prefix: str) -> str:
    """The one line of ``out`` that starts with ``prefix`` (its elapsed time varies)."""
    [line] = [ln for ln in out.getvalue().splitlines() if ln.startswith(prefix)]  # type: ignore[attr-defined]
    return line


def test_file_spec_and_env_parsing() -> None:
    assert celljob.parse_file_spec("a/b.csv:DATA") == (Path("a/b.csv"), "DATA")
    assert celljob.parse_file_spec("C:/x.csv") == (Path("C:/x.csv"), "")
    assert celljob.parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(InvalidArgument, match="NAME=VALUE"):
        celljob.parse_env(["novalue"])


# --------------------------------------------------------------------------- settings and the notebook's directory


def test_ds_config_values_are_typed_checked_and_used_by_the_next_job(
    shell: InteractiveShell,
    magics: DsJobsMagics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from datetime import timedelta

    cfg = tmp_path / "ds_jobs.json"
    monkeypatch.setenv("DS_JOBS_CONFIG", str(cfg))
    shell.run_line_magic("ds_config", "defaults.graceful_timeout=30 defaults.data_ttl_days=14")
    out = capsys.readouterr().out
    assert "defaults.graceful_timeout = 30.0" in out and "defaults.data_ttl_days = 14.0" in out
    assert "defaults.python = (not set)" in out  # the known defaults are listed
    run(shell, "-o hg", "v = 1\n")  # was: TypeError from the string '30'
    job = magics.client.get(shell.user_ns["hg"].job_id)  # type: ignore[union-attr]
    assert job.job_parameters.graceful_shutdown_parameters.timeout.seconds == 30
    assert magics._settings().defaults.data_ttl == timedelta(days=14)
    assert job.data_expires_at.ToSeconds() - job.created_at.ToSeconds() == 14 * 86400
    shell.run_line_magic("ds_config", "defaults.data_ttl_days=infinity")
    run(shell, "-o hk", "v = 2\n")
    kept = magics.client.get(shell.user_ns["hk"].job_id)  # type: ignore[union-attr]
    assert not kept.HasField("data_expires_at")  # kept forever
    shell.run_line_magic("ds_config", "defaults.data_ttl_days=0.5")
    run(shell, "-o hh", "v = 3\n")
    half = magics.client.get(shell.user_ns["hh"].job_id)  # type: ignore[union-attr]
    assert half.data_expires_at.ToSeconds() - half.created_at.ToSeconds() == 43200
    capsys.readouterr()

    before = cfg.read_text()
    with pytest.raises(InvalidArgument, match=r"^defaults.graceful_timeout: expected a number of seconds"):
        shell.run_line_magic("ds_config", "project=p2 defaults.graceful_timeout=soon")
    with pytest.raises(
        InvalidArgument, match=r"unknown setting 'defaults.colour'; known: .*defaults.graceful_timeout"
    ):
        shell.run_line_magic("ds_config", "defaults.colour=red")
    assert cfg.read_text() == before  # nothing saved

    cfg.write_text('{"defaults": {"graceful_timeout": "soon"}}')  # edited by hand
    with pytest.raises(
        InvalidArgument, match=rf"^defaults.graceful_timeout: .*'soon' \(in the settings file {cfg}\)"
    ):
        run(shell, "", "w = 1\n")
    shell.run_line_magic("ds_config", "defaults.graceful_timeout=")  # setting it repairs the file
    assert magics._settings().defaults.graceful_timeout is None


def test_local_paths_are_beside_the_notebook_after_cd(
    shell: InteractiveShell, magics: DsJobsMagics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb_dir, other = tmp_path / "A", tmp_path / "B"
    nb_dir.mkdir()
    other.mkdir()
    (nb_dir / "nb.ipynb").write_text("{}")
    (nb_dir / "data.csv").write_text("1,2,3")
    (nb_dir / "nbmod_beside_dsj.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.chdir(tmp_path)
    # as jupyter_server starts the kernel of a JupyterLab notebook session: the absolute path
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb_dir / "nb.ipynb"))
    shell.run_line_magic("cd", str(other))
    run(
        shell,
        "--file data.csv:DATA --output-file out.txt --outputs rows,doubled",
        "import nbmod_beside_dsj\nrows = open(DATA).read().split(',')\n"
        "doubled = nbmod_beside_dsj.double(len(rows))\nopen('out.txt', 'w').write(str(doubled))\n",
    )
    assert shell.user_ns["rows"] == ["1", "2", "3"] and shell.user_ns["doubled"] == 6
    assert (nb_dir / "out.txt").read_text() == "6" and not (other / "out.txt").exists()
    opts = magics._options(magics._parse("ds_job", "--requirements reqs.txt"))
    assert opts.requirements == str(nb_dir / "reqs.txt")

    # an API path relative to the server root: the kernel started beside the notebook, or at the root
    monkeypatch.setenv("JPY_SESSION_NAME", "A/nb.ipynb")
    for start in (nb_dir, tmp_path):
        monkeypatch.chdir(start)
        m = DsJobsMagics(shell)
        shell.run_line_magic("cd", str(other))
        assert m._notebook_dir() == nb_dir, start

    # no notebook known (terminal IPython, nbclient), or one that is not there: the working directory
    for session in (None, str(tmp_path / "gone" / "nb.ipynb")):
        if session is None:
            monkeypatch.delenv("JPY_SESSION_NAME")
        else:
            monkeypatch.setenv("JPY_SESSION_NAME", session)
        shell.run_line_magic("cd", str(other))
        assert magics._notebook_dir() == other
        assert magics._options(magics._parse("ds_job", "--file data.csv")).files == [(other / "data.csv", "")]


# --------------------------------------------------------------------------- files by literal path


@pytest.fixture
def notebook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shell: InteractiveShell) -> Path:
    """A notebook's directory as JupyterLab's kernel knows it (``JPY_SESSION_NAME``); the kernel's
    working directory elsewhere, so only the notebook's directory can hold what comes back."""
    nb_dir, other = tmp_path / "proj", tmp_path / "elsewhere"
    (nb_dir / "images").mkdir(parents=True)
    other.mkdir()
    (nb_dir / "train.ipynb").write_text("{}")
    (nb_dir / "data.csv").write_text("1,2,3")
    (nb_dir / "images" / "a.png").write_bytes(b"\x89PNG")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb_dir / "train.ipynb"))
    monkeypatch.chdir(other)
    shell.run_line_magic("cd", str(other))
    return nb_dir


FILES_CELL = (
    "import os\n"
    "rows = open('data.csv').read().split(',')\n"
    "pictures = sorted(os.listdir('images'))\n"
    "os.makedirs('results', exist_ok=True)\n"
    "with open('results/summary.txt', 'w') as f:\n"
    "    f.write(str(len(rows)))\n"
    "open(OUT, 'w').write('|'.join(rows))\n"
    "if rows == ['never']:\n"
    "    open('not_taken.txt', 'w')\n"
)


def test_a_cell_reads_and_writes_files_by_literal_path_as_if_local(
    shell: InteractiveShell, magics: DsJobsMagics, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DS_JOBS_DISPLAY", "widget")  # the view that shows the server's notes
    shell.user_ns["OUT"] = "joined.txt"  # a variable holding a literal path counts too
    run(shell, "-o h", FILES_CELL)
    assert shell.user_ns["rows"] == ["1", "2", "3"] and shell.user_ns["pictures"] == ["a.png"]
    assert (notebook_dir / "results" / "summary.txt").read_text() == "3"
    assert (notebook_dir / "joined.txt").read_text() == "1|2|3"
    assert not (notebook_dir / "not_taken.txt").exists() and not (Path.cwd() / "joined.txt").exists()
    view = shell.user_ns["h"].view
    assert "files downloaded: " in view.summary_html.value and "joined.txt" in view.summary_html.value
    assert "process exited with code 0" in view.output.value
    assert "not_taken.txt" not in view.output.value  # a write on a path not taken is not news
    cj = build_cell_job(FILES_CELL, {"OUT": "joined.txt"}, CellJobOptions(base_dir=notebook_dir))
    try:
        assert cj.read_files == ["data.csv", "images"] and cj.written_files == [
            "results",
            "joined.txt",
            "not_taken.txt",
        ]
        assert {f.desc_path: f.zip for f in cj.files if f.desc_path in ("data.csv", "images")} == {
            "data.csv": False,
            "images": True,
        }
    finally:
        cj.cleanup()


def test_no_input_files_and_no_output_files(
    shell: InteractiveShell, magics: DsJobsMagics, notebook_dir: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.csv"):  # the job really has no data.csv then
        run(shell, "--no-input-files", "text = open('data.csv').read()\n")
    run(shell, "--no-output-files", "open('out.txt', 'w').write('x')\nok = 1\n")
    assert shell.user_ns["ok"] == 1 and not (notebook_dir / "out.txt").exists()
    # --file and --output-file still work, and win over what the analysis finds at the same path
    run(
        shell,
        "--no-input-files --file data.csv --output-file out.txt",
        "open('out.txt', 'w').write(open('data.csv').read())\n",
    )
    assert (notebook_dir / "out.txt").read_text() == "1,2,3"


def test_files_over_the_cap_stay_with_the_job_with_a_clear_message(
    shell: InteractiveShell,
    magics: DsJobsMagics,
    notebook_dir: Path,
    client: JobsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cell = "open('big.bin', 'wb').write(b'x' * (3 * 2**20 // 2))\nopen('small.txt', 'w').write('s')\n"
    job = run(shell, "--max-output-file-size 1M --async", cell)
    job.result()
    assert not (notebook_dir / "big.bin").exists() and (notebook_dir / "small.txt").read_text() == "s"
    why = job.files_left["big.bin"]
    assert why == (
        f"'big.bin' (1.5 MiB) was not brought back: over the 1.0 MiB cap on files coming back; it stays "
        f"with the job (jupyter ds-jobs download {job.job_id}), or run the cell again with "
        "--output-file big.bin or --max-output-file-size 2M"
    )
    out = capsys.readouterr()
    assert f"ds_job: {why}" in out.err and why in out.out  # on stderr and in the summary
    assert [f.desc.path for f in client.get(job.job_id).output_files if f.desc.path == "big.bin"] == [
        "big.bin"
    ]
    run(shell, "--max-output-file-size 1MiB --output-file big.bin", cell)  # named: it comes back
    assert (notebook_dir / "big.bin").stat().st_size == 3 * 2**20 // 2
    for bad in ("-1", "lots"):
        with pytest.raises(InvalidArgument, match="size"):
            run(shell, f"--max-output-file-size {bad}", "x = 1\n")


def test_help_lists_the_file_options(magics: DsJobsMagics) -> None:
    doc = DsJobsMagics.ds_job.__doc__ or ""
    for opt in ("--no-input-files", "--no-output-files", "--max-output-file-size"):
        assert opt in doc, opt


# --------------------------------------------------------------------------- where a job came from


def test_the_job_desc_says_which_notebook_and_cell(
    shell: InteractiveShell, magics: DsJobsMagics, notebook_dir: Path, client: JobsClient
) -> None:
    from jupyter_ds_jobs.common.origin import Origin, parse_origin

    shell.run_cell("%%ds_job -o h1 --async\nx = 1\n", store_history=True)
    desc = client.get(shell.user_ns["h1"].job_id).desc
    count = shell.execution_count - 1
    assert desc == f"from notebook {notebook_dir / 'train.ipynb'}, cell [{count}]"
    assert parse_origin(desc) == Origin(str(notebook_dir / "train.ipynb"), count)
    shell.user_ns["h1"].result()

    run(shell, "-o h2 --async --desc nightly", "y = 2\n")
    desc = client.get(shell.user_ns["h2"].job_id).desc
    assert desc.split("\n") == ["nightly", f"from notebook {notebook_dir / 'train.ipynb'}"]
    shell.user_ns["h2"].result()


def test_origin_lines_round_trip() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from jupyter_ds_jobs.common.origin import ORIGIN_RE, Origin, parse_origin, with_origin

    assert Origin().line() == "" and with_origin("text", Origin()) == "text"
    assert Origin("a/train.ipynb", 3).line() == "from notebook a/train.ipynb, cell [3]"
    assert Origin("", 3, "6b1f").line() == "from cell [3], id 6b1f"
    assert parse_origin("from the lab") is None and parse_origin("") is None
    docs = (Path(__file__).parent.parent / "docs" / "magics.md").read_text()
    assert f"\n{ORIGIN_RE.pattern}\n" in docs  # the expression other clients copy is this one

    @given(
        st.text(min_size=1).filter(lambda p: "\n" not in p and "\r" not in p and not p.endswith("]")),
        st.none() | st.integers(min_value=0),
        st.text().map(lambda s: " ".join(s.split()).replace(", ", ",")),
        st.text(),
    )
    def round_trip(notebook: str, count: int | None, cell_id: str, desc: str) -> None:
        origin = Origin(notebook, count, cell_id)
        assert parse_origin(with_origin(desc, origin)) == origin

    round_trip()


def test_a_cell_in_a_real_kernel_records_the_cell_id_its_frontend_sent(
    server: Any, client: JobsClient, tmp_path: Path
) -> None:
    """A real ipykernel, sent an execute_request with the ``cellId`` JupyterLab puts in its metadata."""
    from jupyter_client.manager import start_new_kernel

    from jupyter_ds_jobs.common.origin import Origin, parse_origin

    nb_dir = tmp_path / "lab"
    nb_dir.mkdir()
    (nb_dir / "train.ipynb").write_text("{}")
    env = {
        **os.environ,
        "DS_JOBS_ENDPOINT": server.info.endpoint,
        "DS_JOBS_TOKEN": server.info.token,
        "DS_JOBS_CONFIG": str(tmp_path / "ds_jobs.json"),
        "DS_JOBS_DISPLAY": "text",
        "JPY_SESSION_NAME": str(nb_dir / "train.ipynb"),
    }
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(nb_dir), startup_timeout=60)

    def execute(code: str, metadata: dict[str, Any]) -> str:
        msg = kc.session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                                 "user_expressions": {}, "allow_stdin": False,
                                                 "stop_on_error": True}, metadata=metadata)  # fmt: skip
        kc.shell_channel.send(msg)
        out: list[str] = []
        while True:
            m = kc.get_iopub_msg(timeout=60)
            if m["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                continue
            if m["msg_type"] == "stream":
                out.append(m["content"]["text"])
            elif m["msg_type"] == "error":
                out.append("\n".join(m["content"]["traceback"]))
            elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                return "".join(out)

    try:
        execute("%load_ext jupyter_ds_jobs", {"cellId": "c-load"})
        execute("%%ds_job -o h\nx = 1", {"cellId": "8f0c2e6a-5b1d-4c3e-9a7f-0d1e2f3a4b5c"})
        job_id = execute("print(h.job_id, h.status)", {"cellId": "c-print"}).split()
        assert job_id[1] == "SUCCESS", job_id
        desc = client.get(job_id[0]).desc
        assert (
            desc
            == f"from notebook {nb_dir / 'train.ipynb'}, cell [2], id 8f0c2e6a-5b1d-4c3e-9a7f-0d1e2f3a4b5c"
        )
        assert parse_origin(desc) == Origin(
            str(nb_dir / "train.ipynb"), 2, "8f0c2e6a-5b1d-4c3e-9a7f-0d1e2f3a4b5c"
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# --------------------------------------------------------------------------- %ds_run_notebook


def _child_notebook(nb_dir: Path) -> Path:
    from tests.notebookhelpers import write_notebook

    (nb_dir / "sub").mkdir(exist_ok=True)
    (nb_dir / "sub" / "rows.csv").write_text("a,b\n1,2\n")
    return write_notebook(
        nb_dir / "sub" / "child.ipynb",
        [
            ("code", "alpha = 1\nlabel = 'default'\nitems = []", ["parameters"]),
            ("code", "rows = open('rows.csv').read().splitlines()\nprint('rows', len(rows))"),
            ("code", "open('report.txt', 'w').write(f'{alpha}|{label}|{items}')\nprint(label, alpha * 2)"),
            ("code", "import time\ntime.sleep(0.6)\nif alpha < 0:\n    raise ValueError('negative alpha')"),
        ],
    )


def test_ds_run_notebook_runs_a_notebook_with_parameters_in_the_cell_view(
    shell: InteractiveShell,
    magics: DsJobsMagics,
    notebook_dir: Path,
    client: JobsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jupyter_ds_jobs.common.origin import parse_origin

    child = _child_notebook(notebook_dir)
    shell.user_ns["how_many"] = 3
    # relative to the driving notebook (not the cwd); split as a shell splits; {var} expanded by IPython
    line = "sub/child.ipynb -p alpha {how_many} -p label 'two words' -p items '[1, \"x\"]' -o run"
    assert shell.run_line_magic("ds_run_notebook", line) is None
    run = shell.user_ns["run"]
    assert run.status == "SUCCESS" and run.output_path == notebook_dir / "sub" / "child.executed.ipynb"
    assert (notebook_dir / "sub" / "report.txt").read_text() == "3|two words|[1, 'x']"
    cells = json.loads(run.output_path.read_text())["cells"]  # (run.notebook imports nbformat: seconds)
    stdout = ["".join(o["text"]) for c in cells for o in c["outputs"] if o.get("name") == "stdout"]
    assert stdout == ["rows 2\n", "two words 6\n"]
    out = capsys.readouterr().out
    assert "[cell 2] rows 2\n" in out and "[cell 3] two words 6\n" in out  # live, as the job printed them
    assert "SUCCESS, return code 0" in out and f"files downloaded: {run.output_path}" in out
    origin = parse_origin(client.get(run.job_id).desc)
    assert origin is not None and origin.notebook == str(child)


def test_ds_run_notebook_async_into_the_widget_and_a_failing_cell(
    shell: InteractiveShell, magics: DsJobsMagics, notebook_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_ds_jobs.widgets import make_view

    _child_notebook(notebook_dir)
    views: list[Any] = []
    progress: list[str] = []

    def recording_view(*args: Any, **kwargs: Any) -> Any:  # the real view, its progress recorded
        view: Any = make_view(*args, **kwargs)
        shown = view.progress

        def progress_recorded(message: str, percent: int) -> None:
            progress.append(message)
            shown(message, percent)

        view.progress = progress_recorded
        views.append(view)
        return view

    monkeypatch.setattr("jupyter_ds_jobs.notebook_magic.make_view", recording_view)
    monkeypatch.setenv("DS_JOBS_DISPLAY", "widget")
    late = shell.run_line_magic("ds_run_notebook", "sub/child.ipynb --async --output again.ipynb")
    assert late.status != "SUCCESS"  # returned at once
    assert late.wait() == "SUCCESS" and late.ok
    again = json.loads((notebook_dir / "again.ipynb").read_text())["cells"]
    assert "".join(again[2]["outputs"][0]["text"]) == "default 2\n"
    view = views[0]
    deadline = time.monotonic() + 10
    while "again.ipynb" not in view.summary_html.value and time.monotonic() < deadline:
        time.sleep(0.05)  # the watching thread writes the summary once the run is in place
    assert "again.ipynb" in view.summary_html.value and "[cell 2] rows 2" in view.output.value
    assert "cell 4 of 4" in progress and view.bar.bar_style == "success"

    monkeypatch.setenv("DS_JOBS_DISPLAY", "text")
    with pytest.raises(JobFailed, match=r"failed at cell 4: ValueError: negative alpha"):
        shell.run_line_magic("ds_run_notebook", "sub/child.ipynb -p alpha -1")
    executed = json.loads((notebook_dir / "sub" / "child.executed.ipynb").read_text())["cells"]
    errors = [
        ("".join(c["source"]).splitlines()[-1], o["ename"])
        for c in executed
        for o in c.get("outputs", ())
        if o["output_type"] == "error"
    ]
    assert errors == [("    raise ValueError('negative alpha')", "ValueError")]  # where it stopped


def test_ds_run_notebook_interrupt_cancels_the_job(
    shell: InteractiveShell, magics: DsJobsMagics, notebook_dir: Path
) -> None:
    from tests.notebookhelpers import write_notebook

    write_notebook(
        notebook_dir / "slow.ipynb", [("code", "import time\nfor i in range(300):\n    time.sleep(0.1)")]
    )

    def interrupt() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(j.status == jobs_pb2.EXECUTING for j in magics.client.list_jobs(limit=1)):  # type: ignore[union-attr]
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        shell.run_line_magic("ds_run_notebook", "slow.ipynb")
    t.join(5)
    assert next(iter(magics.client.list_jobs(limit=1))).status == jobs_pb2.CANCELLED  # type: ignore[union-attr]


def test_ds_run_notebook_help_lists_its_options(magics: DsJobsMagics) -> None:
    doc = DsJobsMagics.ds_run_notebook.__doc__ or ""
    for opt in ("-p", "--parameters-file", "--output", "--name", "--desc", "--instance-type", "--requirements",
                "--pip", "--python", "--file", "--output-file", "--no-output-files", "--env", "--async", "-o",
                "--endpoint", "--project", "--quiet"):  # fmt: skip
        assert opt in doc, opt


def test_a_read_over_the_file_limit_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    from jupyter_ds_jobs.common.contract import MAX_FILE_BYTES

    (tmp_path / "big").mkdir()
    for path in (tmp_path / "huge.bin", tmp_path / "big" / "part.bin"):
        with path.open("wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing written
    cases = [("x = 1\ndata = open('huge.bin', 'rb').read()\n", "'huge.bin' (5.0 GiB)", "line 3"),
             ("names = os.listdir('big')\n", "'big' (over 5.0 GiB)", "line 2")]  # fmt: skip
    for cell, what, line in cases:
        with pytest.raises(InvalidArgument, match=re.escape(what) + ".*--no-input-files") as e:
            build_cell_job(cell, {}, CellJobOptions(base_dir=tmp_path))
        assert e.value.field == line  # the cell's line (%%ds_job is line 1)
    cj = build_cell_job(cases[0][0], {}, CellJobOptions(base_dir=tmp_path, read_files=False))
    cj.cleanup()
    assert cj.read_files == []
