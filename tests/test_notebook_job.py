"""A whole notebook as a job: parameters, the runner against nbclient on a real kernel, the CLI's
``run-notebook`` and ``convert`` as subprocesses, and ``run_notebook`` from Python, against a real
job server (the ``server`` fixture, and once the embedded one started on demand)."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jupyter_ds_jobs
from jupyter_ds_jobs._proto import jobs_pb2, pjs_pb2
from jupyter_ds_jobs.common.errors import InvalidArgument, JobFailed
from jupyter_ds_jobs.common.origin import parse_origin
from jupyter_ds_jobs.core.client import JobsClient
from jupyter_ds_jobs.notebooks import NotebookRun
from jupyter_ds_jobs.packaging import nbrunner
from jupyter_ds_jobs.packaging.nbparams import (
    check_parameters,
    inject_parameters,
    load_parameters_file,
    parse_value,
    render_literal,
)
from jupyter_ds_jobs.packaging.notebook import NotebookJobOptions, build_notebook_job
from jupyter_ds_jobs.server.executors import base as executor_base
from tests.notebookhelpers import (
    EXAMPLES,
    cli_env,
    copy_examples,
    nbclient_run,
    normalized,
    run_cli,
    write_notebook,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def client(server: Any) -> Iterator[JobsClient]:
    with JobsClient(server.info.endpoint, server.info.token, project_id="proj") as c:
        yield c


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    return copy_examples(tmp_path)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


# --------------------------------------------------------------------------- the runner's copies


def test_runner_is_self_contained_and_its_copies_are_pinned() -> None:
    tree = ast.parse(Path(nbrunner.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__", "IPython", "traitlets"} <= set(sys.stdlib_module_names)
    assert nbrunner.PROGRESS_FILE == executor_base.PROGRESS_FILE  # the server reads the cells' progress there


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.25", 0.25),
        ("1e3", 1000.0),
        ("True", True),
        ("false", False),
        ("None", None),
        ("null", None),
        ("'3'", "3"),
        ("hello world", "hello world"),
        ("data/x.csv", "data/x.csv"),
        ("2024-01-01", "2024-01-01"),
        ("NO", "NO"),  # not YAML 1.1's False
        ("yes", "yes"),
        ("[1, 'two', 3.0]", [1, "two", 3.0]),
        ("[a, b]", ["a", "b"]),
        ("{'depth': 2}", {"depth": 2}),
        ("{k: v, n: 1}", {"k": "v", "n": 1}),
        ("(1, 2)", (1, 2)),
        ("__import__('os')", "__import__('os')"),
        ("1j", "1j"),  # a complex literal is no parameter type: the text itself
        ("", ""),
    ],
)
def test_parse_value(text: str, value: Any) -> None:
    got = parse_value(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 2**70, 0.1, -0.0, 1e300, "it's \"quoted\"\n", [], [1, [2, [3]]], (1,), (), {"a": {1: None}},
     {True: 1.5, None: "x"}, float("inf"), -float("inf")],
)  # fmt: skip
def test_rendered_literal_round_trips_exactly(value: Any) -> None:
    back = eval(render_literal(value), {})  # what the injected cell does
    assert back == value and type(back) is type(value) and repr(back) == repr(value)
    ast.parse(render_literal(value))


def test_nan_renders_as_nan() -> None:
    assert math.isnan(eval(render_literal(float("nan")), {}))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"1x": 1}, "not a valid Python variable name"),
        ({"class": 1}, "not a valid Python variable name"),
        ({"when": object()}, "parameter 'when': a value of type object"),
        ({"d": {"k": {1, 2}}}, "parameter 'd'['k']: a value of type set"),
        ({"d": {(1, 2): 1}}, "a key of type tuple"),
    ],
)
def test_parameters_that_cannot_be_literals_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_parameters(params)


def test_parameters_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("count: 3\nitems: [a, 2]\nlimit: null\nlabel: 'NO'\n")
    assert load_parameters_file(f) == {"count": 3, "items": ["a", 2], "limit": None, "label": "NO"}
    f.write_text("when: 2024-01-01\n")
    with pytest.raises(InvalidArgument, match=r"p.yaml: .*parameter 'when': a value of type date"):
        load_parameters_file(f)
    f.write_text("- a\n")
    with pytest.raises(InvalidArgument, match="expected a mapping"):
        load_parameters_file(f)


def test_injection_after_the_parameters_cell_replacing_a_previous_one(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "p.ipynb",
        [("markdown", "# t"), ("code", "a = 1\nb: int = 2", ["parameters"]), ("code", "print(a)")],
    )
    nb = nbrunner.read_notebook(str(path))
    assert inject_parameters(nb, {"a": 5, "c": "x"}) == [
        "parameter(s) 'c' not assigned in the parameters cell; injected anyway"
    ]
    assert inject_parameters(nb, {"a": 6, "b": [1]}) == []  # a second injection replaces the first
    injected = nb["cells"][2]
    assert injected["metadata"]["tags"] == ["injected-parameters"] and len(injected["id"]) == 8
    assert injected["source"] == "# Parameters\na = 6\nb = [1]\n"
    assert [c["source"] for c in nb["cells"] if c is not injected] == ["# t", "a = 1\nb: int = 2", "print(a)"]
    assert nbrunner.cell_labels(nb["cells"]) == ["cell 1", "cell 2", "parameters", "cell 3"]


def test_injection_without_a_parameters_cell_goes_first_with_a_warning(tmp_path: Path) -> None:
    nb = nbrunner.read_notebook(str(write_notebook(tmp_path / "p.ipynb", [("code", "print(1)")])))
    (warning,) = inject_parameters(nb, {"n": 1})
    assert "no cell tagged 'parameters'" in warning
    assert nb["cells"][0]["source"] == "# Parameters\nn = 1\n"


# --------------------------------------------------------------------------- refused before submitting


def test_missing_file_and_syntax_error_refused_naming_the_cell(
    server: Any, client: JobsClient, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, server)
    (tmp_path / "present.csv").write_text("x\n")
    write_notebook(
        tmp_path / "missing.ipynb",
        [
            ("markdown", "# reads"),
            ("code", "import pandas_not_needed_here as _ if False else None", ["ds-skip"]),
            ("code", "text = open('present.csv').read()"),
            ("code", "with open('out.csv', 'w') as f:\n    f.write(text)\nback = open('out.csv').read()"),
            ("code", "x = 1\nrows = open('data/absent.csv').read()"),
        ],
    )
    p = run_cli(env, tmp_path, "run-notebook", "missing.ipynb")
    assert p.returncode == 1
    assert p.stderr.startswith(
        "error: cell 5: reads 'data/absent.csv', which is not in the notebook's directory"
    )
    write_notebook(tmp_path / "syntax.ipynb", [("code", "!echo fine\n%time x = 1"), ("code", "y = 1\nz = )")])
    p = run_cli(env, tmp_path, "run-notebook", "syntax.ipynb")
    assert p.returncode == 1 and p.stderr.startswith("error: syntax error on cell 2, line 2"), p.stderr
    write_notebook(tmp_path / "dsjob.ipynb", [("code", "%%ds_job --name x\n!ls")])
    p = run_cli(env, tmp_path, "convert", "dsjob.ipynb", "-o", "out")
    assert p.returncode == 1 and "syntax error on cell 1, line 2" in p.stderr and "%%ds_job body" in p.stderr
    assert list(client.list_jobs()) == []  # nothing was submitted


# --------------------------------------------------------------------------- run-notebook end to end


def test_report_example_end_to_end(server: Any, client: JobsClient, examples: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path, server)
    p = run_cli(env, examples, "run-notebook", "report.ipynb", "-p", "region", "eu", "-p", "top", "2")
    assert p.returncode == 0, p.stderr
    # each cell's output streamed with its cell number; stdout and stderr apart
    assert "[cell 3] 3 rows, total 21.25\n" in p.stdout and "[cell 7] bash sees 8 lines\n" in p.stdout
    assert "[cell 7] to stderr\n" in p.stderr and "[cell 6] shell: sales.csv\n" in p.stdout
    executed = examples / "report.executed.ipynb"
    assert f"executed notebook: {executed}" in p.stderr
    assert (examples / "summary.txt").read_text() == "region=eu rows=3 total=21.25\n"
    assert (examples / "notes.txt").read_text() == "written by a cell magic\n"
    assert f"file: {examples / 'summary.txt'}" in p.stderr
    assert not (examples / "_ds_files").exists() and not list(examples.glob(".ds-notebook-*"))
    nb = read(executed)
    cells = code_cells(nb)
    assert [c["execution_count"] for c in cells] == [1, 2, 3, 4, 5, 6, 7, 8, 9, None]
    assert cells[1]["source"] == ["# Parameters\n", "region = 'eu'\n", "top = 2\n"]
    assert cells[1]["metadata"]["tags"] == ["injected-parameters"]
    kinds = [[o["output_type"] for o in c["outputs"]] for c in cells]
    assert kinds[3] == ["execute_result"] and set(cells[3]["outputs"][0]["data"]) == {
        "text/html",
        "text/plain",
    }
    assert kinds[4] == ["display_data", "display_data"] and "image/png" in cells[4]["outputs"][1]["data"]
    assert cells[5]["outputs"][-1]["data"]["text/plain"] == ["7.083"]  # %precision 3
    skipped = cells[-1]
    assert skipped["metadata"]["tags"] == ["ds-skip"] and skipped["outputs"] == []
    assert nb["metadata"]["ds_jobs"]["status"] == "completed"
    assert nb["metadata"]["ds_jobs"]["parameters"] == {"region": "eu", "top": 2}
    assert nb["metadata"]["language_info"]["name"] == "python"
    (job,) = client.list_jobs()
    assert job.status == jobs_pb2.SUCCESS and job.name == "report"
    assert parse_origin(job.desc).notebook == str(examples / "report.ipynb")  # type: ignore[union-attr]
    assert job.job_parameters.cloud_instance_types[0].name == "c1.4"  # from the notebook's metadata
    assert [m.desc.path for m in job.job_parameters.env.python_env.local_modules] == ["nbhelpers.py.zip"]
    assert {f.desc.path for f in job.job_parameters.input_files} == {
        "report.ipynb",
        "_ds_nbrunner.py",
        "data/sales.csv",
    }


def test_outputs_match_nbclient_on_a_real_kernel(server: Any, examples: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path, server)
    for name, args in [
        ("report", ["-p", "region", "us"]),
        ("parameters", ["-p", "count", "4"]),
        ("failing", []),
    ]:
        p = run_cli(env, examples, "run-notebook", f"{name}.ipynb", *args)
        assert p.returncode == (1 if name == "failing" else 0), p.stderr
        ours = read(examples / f"{name}.executed.ipynb")
        sent = build_notebook_job(
            examples / f"{name}.ipynb", NotebookJobOptions(parameters={"region": "us"} if name == "report" else
                                                          {"count": 4} if name == "parameters" else {})
        )  # fmt: skip
        sent.cleanup()
        reference = tmp_path / f"ref-{name}"
        copy_examples(reference)
        theirs = nbclient_run(sent.notebook, reference / "notebooks")
        assert normalized(ours) == normalized(theirs), name
        assert ours["metadata"]["language_info"] == theirs["metadata"]["language_info"]


def test_parameters_round_trip_exactly(server: Any, examples: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path, server)
    (tmp_path / "more.yaml").write_text("options: {depth: 3, path: [a, b]}\nlimit: 7\n")
    p = run_cli(
        env, examples, "run-notebook", "parameters.ipynb", "-f", str(tmp_path / "more.yaml"),
        "-p", "count", "5", "-p", "ratio", "0.1", "-p", "label", "hello world", "-p", "items", "[1, 'two', 3.0, None]",
        "-p", "enabled", "False", "-p", "limit", "None",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    expected = {
        "count": 5,
        "ratio": 0.1,
        "label": "hello world",
        "items": [1, "two", 3.0, None],
        "options": {"depth": 3, "path": ["a", "b"]},
        "enabled": False,
        "limit": None,
    }
    seen = ast.literal_eval((examples / "parameters_seen.txt").read_text())
    assert seen == expected and [type(v) for v in seen.values()] == [type(v) for v in expected.values()]
    assert "[cell 3] ratio = 0.1 (float)\n" in p.stdout and "[cell 3] limit = None (NoneType)\n" in p.stdout
    assert read(examples / "parameters.executed.ipynb")["metadata"]["ds_jobs"]["parameters"] == expected


def test_failing_notebook_exit_code_and_error_cell(
    server: Any, client: JobsClient, examples: Path, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, server)
    p = run_cli(env, examples, "run-notebook", "failing.ipynb", "-o", "out/failed.ipynb")
    assert p.returncode == 1
    assert p.stderr.rstrip().endswith(
        "error: the notebook failed at cell 3: ZeroDivisionError: division by zero"
    )
    assert "ds_nbrunner: stopped at cell 3: ZeroDivisionError: division by zero" in p.stderr
    assert "[cell 3] ZeroDivisionError: division by zero" in p.stderr
    nb = read(examples / "out" / "failed.ipynb")
    banner, *rest = nb["cells"]
    assert banner["metadata"]["tags"] == ["ds-error"] and "cell 3 (In [2])" in "".join(banner["source"])
    anchor = rest[2]
    assert anchor["metadata"]["tags"] == ["ds-error"] and 'id="ds-error-cell"' in "".join(anchor["source"])
    failed, never = rest[3], rest[4]
    assert failed["execution_count"] == 2 and [o["output_type"] for o in failed["outputs"]] == ["error"]
    assert failed["outputs"][0]["ename"] == "ZeroDivisionError"
    assert never["execution_count"] is None and never["outputs"] == []
    assert nb["metadata"]["ds_jobs"]["error"] == {"cell": "cell 3", "ename": "ZeroDivisionError", "evalue": "division by zero"}  # fmt: skip
    (job,) = client.list_jobs()
    assert job.status == jobs_pb2.ERROR


def test_ds_job_cells_run_in_the_job(server: Any, examples: Path, tmp_path: Path) -> None:
    p = run_cli(cli_env(tmp_path, server), examples, "run-notebook", "ds_job_cells.ipynb")
    assert p.returncode == 0, p.stderr
    assert "[cell 3] in the job: [0, 1, 4, 9, 16]\n" in p.stdout
    last = code_cells(read(examples / "ds_job_cells.executed.ipynb"))[-1]
    assert last["outputs"][0]["data"]["text/plain"] == ["30"]


def test_written_files_limit_and_opt_out(server: Any, tmp_path: Path) -> None:
    env = cli_env(tmp_path, server)
    write_notebook(
        tmp_path / "w.ipynb",
        [("code", "import os\nos.makedirs('res', exist_ok=True)\n"
                  "for name, size in [('res/small.txt', 5), ('big.bin', 5000), ('named.bin', 6000)]:\n"
                  "    with open(name, 'wb') as f:\n        f.write(b'x' * size)")],
    )  # fmt: skip
    p = run_cli(
        env, tmp_path, "run-notebook", "w.ipynb", "--max-output-file-size", "1K", "--output-file", "named.bin"
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "res" / "small.txt").read_bytes() == b"x" * 5
    assert (tmp_path / "named.bin").stat().st_size == 6000  # named: whatever its size
    assert not (tmp_path / "big.bin").exists()
    assert "1 file(s) the notebook wrote are over the size limit and did not come back" in p.stderr
    assert "big.bin" in p.stderr
    for f in ("res/small.txt", "named.bin", "w.executed.ipynb"):
        (tmp_path / f).unlink()
    p = run_cli(env, tmp_path, "run-notebook", "w.ipynb", "--no-output-files")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "w.executed.ipynb").exists() and not (tmp_path / "res" / "small.txt").exists()


def test_async_then_attach_from_python(
    server: Any, client: JobsClient, examples: Path, tmp_path: Path
) -> None:
    p = run_cli(
        cli_env(tmp_path, server), examples, "run-notebook", "report.ipynb", "--async", "-p", "top", "1"
    )
    assert p.returncode == 0, p.stderr
    job_id = p.stdout.strip()
    assert job_id.startswith("dsj") and not (examples / "report.executed.ipynb").exists()
    run = NotebookRun.attach(job_id, client=client)
    assert run.path == examples / "report.ipynb"  # from the job's origin line
    assert run.wait(60) == "SUCCESS" and run.ok
    assert run.outputs is not None and run.outputs.output == examples / "report.executed.ipynb"
    assert (examples / "summary.txt").read_text() == "region=all rows=7 total=58.50\n"


def test_embedded_server_started_on_demand(examples: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path, None)
    try:
        p = run_cli(env, examples, "run-notebook", "parameters.ipynb", "-p", "label", "embedded")
        assert p.returncode == 0, p.stderr
        assert "[cell 3] label = 'embedded' (str)\n" in p.stdout
    finally:
        run_cli(env, tmp_path, "server", "stop")


# --------------------------------------------------------------------------- convert


def test_converted_folder_runs_through_our_cli(server: Any, examples: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path, server)
    out = tmp_path / "job"
    p = run_cli(env, examples, "convert", "report.ipynb", "-o", str(out), "-p", "region", "asia")
    assert p.returncode == 0, p.stderr
    assert sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()) == [
        "_ds_nbrunner.py", "config.yaml", "data/sales.csv", "nbhelpers.py", "report.ipynb", "requirements.txt",
    ]  # fmt: skip
    config = (out / "config.yaml").read_text()
    assert "cmd: python _ds_nbrunner.py report.ipynb report.executed.ipynb\n" in config
    assert "- summary.txt\n" in config and "- notes.txt\n" not in config  # literal writes declared
    assert "local-paths:\n    - nbhelpers.py\n" in config.replace("\n    -", "\n    -")
    assert (out / "requirements.txt").read_text().startswith("ipython==")
    assert (
        nbrunner.read_notebook(str(out / "report.ipynb"))["cells"][2]["source"]
        == "# Parameters\nregion = 'asia'\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    p = run_cli(env, work, "execute", "-c", str(out / "config.yaml"))
    assert p.returncode == 0, p.stderr
    assert "[cell 3] 2 rows, total 13.75\n" in p.stdout
    assert (work / "summary.txt").read_text() == "region=asia rows=2 total=13.75\n"
    assert read(work / "report.executed.ipynb")["metadata"]["ds_jobs"]["status"] == "completed"


def test_convert_refuses_the_notebooks_own_directory(tmp_path: Path) -> None:
    write_notebook(tmp_path / "n.ipynb", [("code", "1")])
    p = run_cli(cli_env(tmp_path, None), tmp_path, "convert", "n.ipynb", "-o", ".")
    assert p.returncode == 1 and "must not be the notebook's own directory" in p.stderr


# --------------------------------------------------------------------------- from Python


def test_run_notebook_api_progress_and_handle(client: JobsClient, examples: Path, tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "slow.ipynb",
        [("code", "n = 1", ["parameters"]), ("markdown", "x"), ("code", "import time\ntime.sleep(1.2)\nprint(n)"),
         ("code", "n * 2")],
    )  # fmt: skip
    progress: list[str] = []
    logs: list[bytes] = []

    def on_progress(job: jobs_pb2.Job, p: jobs_pb2.JobProgress | None) -> None:
        if p is not None and p.message not in progress:
            progress.append(p.message)

    run = jupyter_ds_jobs.run_notebook(
        path,
        {"n": 21},
        client=client,
        on_log=lambda m: m.WhichOneof("source") != "file_path" and logs.append(m.content),
        on_progress=on_progress,
    )
    assert run.ok and run.status == "SUCCESS" and run.error is None
    assert "cell 3 of 4" in progress  # the sleeping cell, counted among all 4 cells
    assert b"".join(logs) == b"[cell 3] 21\n"
    assert run.output_path == tmp_path / "slow.executed.ipynb" and run.output_path.exists()
    nb = run.notebook
    assert nb.cells[-1].outputs[0]["data"]["text/plain"] == "42"
    assert type(nb).__name__ == "NotebookNode"


def test_run_notebook_api_failure_and_attach(client: JobsClient, examples: Path) -> None:
    with pytest.raises(
        JobFailed, match=r"failed at cell 3: ZeroDivisionError: division by zero \(the executed notebook: "
    ):
        jupyter_ds_jobs.run_notebook(examples / "failing.ipynb", client=client, quiet=True)
    run = jupyter_ds_jobs.run_notebook(
        examples / "failing.ipynb",
        client=client,
        quiet=True,
        raise_on_error=False,
        output=examples / "f2.ipynb",
    )
    assert not run.ok and run.error == {
        "cell": "cell 3",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
    }
    again = NotebookRun.attach(run.job_id, client=client, output=examples / "f3.ipynb")
    again.fetch()
    assert again.status == "ERROR" and again.error == run.error and (examples / "f3.ipynb").exists()
    with pytest.raises(JobFailed, match="failed at cell 3"):
        again.result()


def test_first_cell_output_streams_while_the_notebook_runs(client: JobsClient, tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "live.ipynb",
        [("code", "print('started', flush=True)"), ("code", "import time\ntime.sleep(60)")],
    )
    got = threading.Event()
    lines: list[bytes] = []

    def on_log(m: pjs_pb2.LogMessage) -> None:
        lines.append(m.content)
        if b"[cell 1] started" in b"".join(lines):
            got.set()

    t0 = time.monotonic()
    run = jupyter_ds_jobs.run_notebook(path, client=client, wait=False, on_log=on_log)
    try:
        assert got.wait(30), lines
        assert time.monotonic() - t0 < 30 and client.get(run.job_id).status == jobs_pb2.EXECUTING
    finally:
        run.cancel()
        run.close()


def test_every_notebook_command_has_help() -> None:
    for command in ("run-notebook", "convert"):
        p = subprocess.run(
            [sys.executable, "-m", "jupyter_ds_jobs", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0 and f"usage: jupyter ds-jobs {command}" in p.stdout


def test_examples_folder_is_what_the_tests_run() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
    assert names == ["ds_job_cells.ipynb", "failing.ipynb", "parameters.ipynb", "report.ipynb"]


def test_matplotlib_inline_png_matches_nbclient(server: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # the font cache, built here (the job's sandbox may not write the home directory; a kernel's would)
    import matplotlib.font_manager  # noqa: F401

    write_notebook(
        tmp_path / "plot.ipynb",
        [("code", "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('three')"),
         ("code", "fig, ax = plt.subplots()\nax.bar([1, 2], [3, 4]);")],
    )  # fmt: skip
    p = run_cli(cli_env(tmp_path, server), tmp_path, "run-notebook", "plot.ipynb")
    assert p.returncode == 0, p.stderr
    ours = read(tmp_path / "plot.executed.ipynb")
    assert [[o["output_type"] for o in c["outputs"]] for c in code_cells(ours)] == [
        ["execute_result", "display_data"],
        ["display_data"],
    ]
    assert "image/png" in code_cells(ours)[1]["outputs"][0]["data"]
    theirs = nbclient_run(nbrunner.read_notebook(str(tmp_path / "plot.ipynb")), tmp_path)
    assert normalized(ours) == normalized(theirs)
