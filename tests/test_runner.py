"""The cell runner in real subprocesses, with the kernel-side cellio writing and reading its files."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
import types
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.packaging import runner
from jupyter_ds_jobs.packaging.cellio import (
    InputTooLarge,
    RemoteError,
    UnpicklableInput,
    load_error,
    module_inputs,
    read_outputs,
    write_inputs,
    write_job_dir,
)
from jupyter_ds_jobs.packaging.runner import OUTPUTS_DIR, OUTPUTS_ZIP, RUNNER_FILE

TIMEOUT = 60


def notebook_namespace(source: str) -> dict[str, Any]:
    """A namespace like a notebook's: what it defines has ``__module__ == "__main__"``,
    so cloudpickle sends it by value."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(source), ns)
    return ns


def make_job(
    job: Path,
    cell: str,
    ns: Mapping[str, object] | None = None,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] | None = (),
    cell_filename: str = "<cell>",
) -> Path:
    ns = ns or {}
    modules = module_inputs(ns, inputs)
    pickled = write_inputs(ns, inputs, job / "_ds_inputs")
    write_job_dir(job, textwrap.dedent(cell), list(pickled), outputs, modules, cell_filename)
    return job


def run_job(job: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "_ds_runner.py"], cwd=job, capture_output=True, text=True, timeout=TIMEOUT
    )


def run_cell(
    tmp_path: Path,
    cell: str,
    ns: Mapping[str, object] | None = None,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] | None = (),
) -> tuple[subprocess.CompletedProcess[str], Path]:
    job = make_job(tmp_path / "job", cell, ns, inputs, outputs)
    return run_job(job), job


def error_json(job: Path) -> dict[str, Any]:
    with open(job / "_ds_error.json", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def assert_no_error(job: Path) -> None:
    """The job declares ``_ds_error.json``: the runner writes it (``null``) when the cell raised nothing."""
    assert json.loads((job / "_ds_error.json").read_text(encoding="utf-8")) is None
    assert load_error(job / "_ds_error.json") is None
    assert not list(job.glob("*.tmp"))


# --------------------------------------------------------------------------- round trips


def test_round_trip_values_function_and_class(tmp_path: Path) -> None:
    ns = notebook_namespace(
        """
        K = 10

        def scale(x):
            return x * K

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y

            def shifted(self, d):
                return Point(self.x + d, self.y + d)
        """
    )
    ns.update(n=41, d={"a": [1, 2], "b": {"c": None}})
    proc, job = run_cell(
        tmp_path,
        """
        n += 1
        d["b"]["c"] = scale(3)
        p = Point(1, 2).shifted(1)
        def twice(v):
            return 2 * v
        name_seen = __name__
        """,
        ns,
        inputs=["n", "d", "scale", "Point"],
        outputs=["n", "d", "p", "twice", "name_seen"],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert_no_error(job)
    values, unpicklable = read_outputs(job / "_ds_outputs")
    assert unpicklable == {}
    assert values["n"] == 42
    assert values["d"] == {"a": [1, 2], "b": {"c": 30}}
    p = values["p"]
    assert isinstance(p, ns["Point"])  # the class comes back as the notebook's own class
    assert (p.x, p.y) == (2, 3)
    twice = values["twice"]
    assert callable(twice) and twice(21) == 42
    assert values["name_seen"] == "__main__"
    # The ZIP (the declared output file) holds the same.
    zvalues, zunpicklable = read_outputs(job / "_ds_outputs.zip")
    assert zunpicklable == {} and zvalues["n"] == 42 and zvalues["d"] == values["d"]


def test_module_input_passed_by_reference(tmp_path: Path) -> None:
    import json as js

    ns: dict[str, object] = {"js": js, "x": 1}
    assert module_inputs(ns, ["js", "x"]) == {"js": "json"}
    paths = write_inputs(ns, ["js", "x"], tmp_path / "inputs")
    assert list(paths) == ["x"]
    assert not (tmp_path / "inputs" / "js.pkl").exists()

    proc, job = run_cell(
        tmp_path, "s = js.dumps({'a': x})\nmod = js.__name__\n", ns, ["js", "x"], ["s", "mod"]
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((job / "_ds_manifest.json").read_text())
    assert manifest["modules"] == {"js": "json"} and manifest["inputs"] == ["x"]
    values, _ = read_outputs(job / "_ds_outputs.zip")
    assert values == {"s": '{"a": 1}', "mod": "json"}


def test_unpicklable_outputs_are_reported(tmp_path: Path) -> None:
    proc, job = run_cell(
        tmp_path,
        """
        import threading
        gen = (i for i in range(3))
        lock = threading.Lock()
        ok = "fine"
        """,
        outputs=["gen", "lock", "ok"],
    )
    assert proc.returncode == 0, proc.stderr
    values, unpicklable = read_outputs(job / "_ds_outputs.zip")
    assert values == {"ok": "fine"}
    assert set(unpicklable) == {"gen", "lock"}
    assert "generator" in unpicklable["gen"]
    assert "lock" in unpicklable["lock"]
    # each listed name is a declared output file of the job: an empty one for what did not come back
    assert (job / "_ds_outputs" / "gen.pkl").read_bytes() == b""
    assert (job / "_ds_outputs" / "lock.pkl").read_bytes() == b""


def test_missing_outputs_skipped_and_recorded(tmp_path: Path) -> None:
    proc, job = run_cell(tmp_path, "if False:\n    never = 1\nalways = 2\n", outputs=["never", "always"])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((job / "_ds_outputs" / "_manifest.json").read_text())
    assert manifest == {"outputs": ["always"], "unpicklable": {}, "missing": ["never"]}
    assert read_outputs(job / "_ds_outputs")[0] == {"always": 2}
    assert (job / "_ds_outputs" / "never.pkl").read_bytes() == b""  # declared: it exists, empty
    assert_no_error(job)


def test_all_assigned_outputs_when_not_listed(tmp_path: Path) -> None:
    ns: dict[str, object] = {"same": [1, 2], "mutated": [1], "rebound": 5}
    proc, job = run_cell(
        tmp_path,
        """
        import os
        mutated.append(2)
        rebound = rebound + 1
        new = "n"
        _private = 1
        """,
        ns,
        inputs=["same", "mutated", "rebound"],
        outputs=None,
    )
    assert proc.returncode == 0, proc.stderr
    values, _ = read_outputs(job / "_ds_outputs.zip")
    assert values == {"mutated": [1, 2], "rebound": 6, "new": "n"}


def test_local_modules_importable_and_top_level_await(tmp_path: Path) -> None:
    job = make_job(
        tmp_path / "job",
        """
        import asyncio
        import helper_mod
        await asyncio.sleep(0)
        got = helper_mod.VALUE
        """,
        outputs=["got"],
    )
    (job / "helper_mod.py").write_text("VALUE = 'local'\n")
    proc = run_job(job)
    assert proc.returncode == 0, proc.stderr
    assert read_outputs(job / "_ds_outputs.zip")[0] == {"got": "local"}


# --------------------------------------------------------------------------- errors


def test_exception_has_cell_line_numbers_and_no_runner_frames(tmp_path: Path) -> None:
    cell = """\
    before = 1
    def inner(v):
        return 1 / v

    result = inner(0)
    after = 2
    """
    proc, job = run_cell(tmp_path, cell, outputs=["before", "after"])
    assert proc.returncode == 1
    err = error_json(job)
    assert err["type"] == "ZeroDivisionError" and err["module"] == "builtins"
    assert err["lineno"] == 3
    frames = [(f["filename"], f["lineno"], f["name"], f["line"]) for f in err["traceback"]]
    assert frames == [
        ("<cell>", 5, "<module>", "result = inner(0)"),
        ("<cell>", 3, "inner", "return 1 / v"),
    ]
    assert "_ds_runner" not in err["formatted"] and "runner.py" not in err["formatted"]
    assert 'File "<cell>", line 3, in inner' in err["formatted"]
    assert err["formatted"] in proc.stderr  # shown in the live log
    # What the cell bound before it raised comes back, like in a notebook.
    assert read_outputs(job / "_ds_outputs.zip")[0] == {"before": 1}

    exc = load_error(job / "_ds_error.json")
    assert isinstance(exc, ZeroDivisionError)
    assert isinstance(exc.__cause__, RemoteError)
    assert 'File "<cell>", line 5, in <module>' in str(exc.__cause__)


def test_syntax_error_reported_with_line(tmp_path: Path) -> None:
    proc, job = run_cell(tmp_path, "x = 1\nif x > 0\n    y = 2\n")
    assert proc.returncode == 1
    err = error_json(job)
    assert err["type"] == "SyntaxError"
    assert err["lineno"] == 2
    assert err["traceback"] == []
    assert 'File "<cell>", line 2' in err["formatted"] and "if x > 0" in err["formatted"]
    assert "_ds_runner" not in err["formatted"]
    exc = load_error(job / "_ds_error.json")
    assert isinstance(exc, SyntaxError) and exc.lineno == 2


def test_custom_exception_from_cell_reraised_in_kernel(tmp_path: Path) -> None:
    proc, job = run_cell(
        tmp_path,
        """
        class TrainingFailed(Exception):
            pass

        e = TrainingFailed("loss is nan")
        e.epoch = 7
        raise e
        """,
    )
    assert proc.returncode == 1
    exc = load_error(job / "_ds_error.json")
    assert type(exc).__name__ == "TrainingFailed"
    assert str(exc) == "loss is nan"
    assert exc.epoch == 7  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="loss is nan") as info:
        raise exc
    assert "line 7" in str(info.value.__cause__)


def test_exception_not_rebuildable_in_kernel_gives_remote_error(tmp_path: Path) -> None:
    proc, job = run_cell(
        tmp_path,
        """
        import threading
        class Odd(Exception):
            def __init__(self, a, b):
                super().__init__(a)
        class Locked(Exception):
            pass
        try:
            raise Odd("x", "y")
        except Odd:
            err = Locked("held")
            err.lock = threading.Lock()
            raise err
        """,
    )
    assert proc.returncode == 1
    err = error_json(job)
    assert err["pickled"] is None  # holds a lock
    assert "During handling of the above exception" in err["formatted"]
    exc = load_error(job / "_ds_error.json")
    assert isinstance(exc, RemoteError)
    assert exc.type_name == "Locked" and exc.message == "held" and exc.lineno == 13
    assert 'File "<cell>", line 13' in str(exc) and "Locked: held" in str(exc)

    # Picklable in the job, but its __init__ cannot be called again here.
    proc, job = run_cell(
        tmp_path / "2",
        """
        class Odd(Exception):
            def __init__(self, a, b):
                super().__init__(a)
        raise Odd("x", "y")
        """,
    )
    exc = load_error(job / "_ds_error.json")
    assert isinstance(exc, RemoteError) and exc.type_name == "Odd"
    assert any("could not be rebuilt" in n for n in getattr(exc, "__notes__", []))


def test_sys_exit_sets_exit_code_without_an_error_record(tmp_path: Path) -> None:
    proc, job = run_cell(tmp_path, "x = 1\nimport sys\nsys.exit(3)\n", outputs=["x"])
    assert proc.returncode == 3
    assert_no_error(job)
    assert read_outputs(job / "_ds_outputs.zip")[0] == {"x": 1}


def test_the_error_file_exists_however_the_cell_ends(tmp_path: Path) -> None:
    # os._exit: nothing after the cell runs, but the "no error" record was written before it
    proc, job = run_cell(tmp_path / "a", "import os\nx = 1\nos._exit(0)\n", outputs=["x"])
    assert proc.returncode == 0
    assert_no_error(job)
    # a stale record from an earlier run of the same job dir is replaced
    (job / "_ds_cell.py").write_text("x = 2\n")
    (job / "_ds_error.json").write_text('{"type": "Stale", "message": "old"}')
    assert run_job(job).returncode == 0
    assert_no_error(job)
    # the cell removed it (or scribbled over it): written again after the cell
    proc, job = run_cell(tmp_path / "b", "import os\nos.remove('_ds_error.json')\n")
    assert proc.returncode == 0, proc.stderr
    assert_no_error(job)
    proc, job = run_cell(tmp_path / "c", "open('_ds_error.json', 'w').write('{\"type\": \"Fake\"}')\n")
    assert proc.returncode == 0, proc.stderr
    assert_no_error(job)


def test_an_error_is_recorded_when_the_cell_broke_stderr_or_its_exception_resists(tmp_path: Path) -> None:
    # the cell closed stderr, then raised: the record is written all the same
    proc, job = run_cell(tmp_path / "a", "import sys\nsys.stderr.close()\nraise ValueError('after close')\n")
    assert proc.returncode == 1
    exc = load_error(job / "_ds_error.json")
    assert isinstance(exc, ValueError) and str(exc) == "after close"
    # an exception whose pickling raises a BaseException: recorded, not embedded
    proc, job = run_cell(
        tmp_path / "b",
        """
        class Stubborn(Exception):
            def __reduce_ex__(self, protocol):
                raise KeyboardInterrupt("no pickling")
        done = 1
        raise Stubborn("cannot pickle me")
        """,
        outputs=["done"],
    )
    assert proc.returncode == 1
    err = error_json(job)
    assert (err["type"], err["message"], err["pickled"], err["lineno"]) == (
        "Stubborn",
        "cannot pickle me",
        None,
        6,
    )
    remote = load_error(job / "_ds_error.json")
    assert isinstance(remote, RemoteError) and remote.type_name == "Stubborn"
    assert read_outputs(job / "_ds_outputs.zip")[0] == {"done": 1}  # the outputs were still written
    # an exception that breaks the traceback machinery (its __str__ raises a BaseException)
    proc, job = run_cell(
        tmp_path / "c",
        """
        class Unprintable(Exception):
            def __str__(self):
                raise KeyboardInterrupt("no str")
        raise Unprintable()
        """,
    )
    assert proc.returncode == 1
    err = error_json(job)
    assert (err["type"], err["message"]) == ("Unprintable", "<unprintable Unprintable>")
    assert "Unprintable: <unprintable Unprintable>" in proc.stderr
    remote = load_error(job / "_ds_error.json")
    assert isinstance(remote, RemoteError) and remote.type_name == "Unprintable"


def test_an_error_file_from_an_older_runner_or_none_at_all_means_no_error(tmp_path: Path) -> None:
    from jupyter_ds_jobs.packaging.celljob import load_cell_results

    proc, job = run_cell(tmp_path, "x = 1\n", outputs=["x"])
    assert proc.returncode == 0, proc.stderr
    assert load_cell_results(job / "_ds_outputs.zip", job / "_ds_error.json").error is None
    (job / "_ds_error.json").unlink()  # an older runner wrote no file when the cell raised nothing
    res = load_cell_results(job / "_ds_outputs.zip", job / "_ds_error.json")
    assert res.error is None and res.values == {"x": 1}
    assert load_cell_results(job / "_ds_outputs.zip", None).error is None


def test_input_that_cannot_load_in_job_is_reported_naming_it(tmp_path: Path) -> None:
    kdir = tmp_path / "kernel_only"
    kdir.mkdir()
    (kdir / "kernel_only_mod_7f3.py").write_text("class Thing:\n    pass\n")
    sys.path.insert(0, str(kdir))
    try:
        import kernel_only_mod_7f3  # type: ignore[import-not-found]

        ns = {"thing": kernel_only_mod_7f3.Thing()}
        proc, job = run_cell(tmp_path, "x = 1\n", ns, ["thing"], ["x"])
    finally:
        sys.path.remove(str(kdir))
        sys.modules.pop("kernel_only_mod_7f3", None)
    assert proc.returncode == 1
    err = error_json(job)
    assert err["type"] == "ModuleNotFoundError"
    assert "input variable 'thing'" in err["formatted"]
    assert read_outputs(job / "_ds_outputs.zip") == ({}, {})


# --------------------------------------------------------------------------- inputs


def test_input_over_max_bytes_refused_naming_variable(tmp_path: Path) -> None:
    dest = tmp_path / "inputs"
    with pytest.raises(InputTooLarge) as info:
        write_inputs({"small": 1, "big_blob": b"\0" * 5000}, ["small", "big_blob"], dest, max_bytes=1000)
    assert isinstance(info.value, InvalidArgument)
    msg = str(info.value)
    assert "'big_blob'" in msg and "max_bytes=1000" in msg
    assert info.value.size > 5000 and f"{info.value.size} bytes" in msg
    assert sorted(p.name for p in dest.iterdir()) == ["small.pkl"]  # nothing partial left
    assert write_inputs({"big_blob": b"\0" * 5000}, ["big_blob"], dest, max_bytes=None)


def test_unpicklable_input_refused_naming_variable(tmp_path: Path) -> None:
    dest = tmp_path / "inputs"
    with pytest.raises(UnpicklableInput) as info:
        write_inputs({"my_lock": threading.Lock()}, ["my_lock"], dest)
    assert isinstance(info.value, InvalidArgument)
    assert "'my_lock'" in str(info.value) and "lock" in str(info.value)
    assert list(dest.iterdir()) == []
    with pytest.raises(InvalidArgument, match="'nope' is not defined"):
        write_inputs({}, ["nope"], dest)
    with pytest.raises(InvalidArgument, match="valid Python variable name"):
        write_inputs({"../x": 1}, ["../x"], dest)


def test_same_input_gives_same_bytes(tmp_path: Path) -> None:
    ns = notebook_namespace("def f(x):\n    return x + 1\n")
    ns["data"] = {"k": list(range(1000)), "s": "text", "t": (1.5, None)}
    a = write_inputs(ns, ["data", "f"], tmp_path / "a")
    b = write_inputs(ns, ["data", "f"], tmp_path / "b")
    for name in ("data", "f"):
        assert a[name].read_bytes() == b[name].read_bytes()


def test_job_dir_layout(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_job_dir(job, "x = 1\n", ["a"], None, {"np": "numpy"}, cell_filename="Cell In[3]")
    assert (job / "_ds_cell.py").read_text() == "x = 1\n"
    assert (job / "_ds_runner.py").read_bytes() == Path(runner.__file__).read_bytes()
    assert (job / "_ds_inputs").is_dir()
    assert json.loads((job / "_ds_manifest.json").read_text()) == {
        "inputs": ["a"],
        "outputs": None,
        "cell_filename": "Cell In[3]",
        "modules": {"np": "numpy"},
        "zip_outputs": True,
    }
    with pytest.raises(InvalidArgument, match="both a pickled input and a module"):
        write_job_dir(job, "", ["np"], None, {"np": "numpy"})


# --------------------------------------------------------------------------- live behaviour


def test_report_progress_writes_jsonl(tmp_path: Path) -> None:
    proc, job = run_cell(
        tmp_path,
        """
        import os, _ds_runner
        os.makedirs("sub", exist_ok=True)
        os.chdir("sub")
        _ds_runner.report_progress("half way", 50)
        _ds_runner.report_progress("done", 100.4)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    lines = (job / "job_progress.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"message": "half way", "progress": 50},
        {"message": "done", "progress": 100},
    ]


def _pump(stream: Any, into: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)


def test_print_is_flushed_live(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", "print('started')\nimport time\ntime.sleep(30)\nprint('finished')\n")
    proc = subprocess.Popen(
        [sys.executable, "_ds_runner.py"], cwd=job, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        start = time.monotonic()
        first = lines.get(timeout=20)
        assert first == "started\n"
        assert proc.poll() is None  # the cell is still sleeping
        assert time.monotonic() - start < 20
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_runner_file_imports_only_stdlib_and_cloudpickle() -> None:
    import ast

    tree = ast.parse(Path(runner.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__", "cloudpickle"} <= set(sys.stdlib_module_names)
    assert isinstance(runner, types.ModuleType)


def test_bad_job_dir_exits_2(tmp_path: Path) -> None:
    write_job_dir(tmp_path, "x = 1\n", [], None, {})
    (tmp_path / "_ds_manifest.json").unlink()
    proc = run_job(tmp_path)
    assert proc.returncode == 2 and "no job manifest" in proc.stderr


def test_inputs_sent_as_separate_job_files_and_prefixed_zip(tmp_path: Path) -> None:
    # The magic may send each input as its own job input file, landing at the job dir's top.
    job = make_job(tmp_path / "job", "y = x * 2\n", {"x": 21}, ["x"], ["y"])
    (job / "_ds_inputs" / "x.pkl").rename(job / "x.pkl")
    proc = run_job(job)
    assert proc.returncode == 0, proc.stderr
    # A server that zips the declared output dir itself puts the entries under its name.
    prefixed = tmp_path / "server.zip"
    with zipfile.ZipFile(prefixed, "w") as zf:
        for f in (job / "_ds_outputs").iterdir():
            zf.write(f, f"_ds_outputs/{f.name}")
    assert read_outputs(prefixed) == ({"y": 42}, {})


def test_outputs_declared_one_by_one_need_no_zip(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_job_dir(job, "x = 1\ny = [x]\n", [], ["x", "y"], {}, zip_outputs=False)
    proc = subprocess.run([sys.executable, RUNNER_FILE], cwd=job, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (job / OUTPUTS_ZIP).exists()
    values, unpicklable = read_outputs(job / OUTPUTS_DIR)
    assert values == {"x": 1, "y": [1]} and unpicklable == {}


# --------------------------------------------------------------------------- the runner's own copies
# The runner is shipped into jobs as one file and imports nothing of the package: the names and
# code it shares with the package are copies, each pinned here to its source.


def test_runner_names_match_the_package() -> None:
    import ast
    import inspect

    from jupyter_ds_jobs.server.executors import base, zygote

    assert runner.PROGRESS_FILE == base.PROGRESS_FILE  # the server reads the cell's progress there
    assert runner.RUNNER_FILE in zygote.WARM_SCRIPTS  # cell jobs start warm
    assert runner._PyCF_ALLOW_TOP_LEVEL_AWAIT == ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    assert runner._CO_COROUTINE == inspect.CO_COROUTINE


def test_runner_sha256_matches_the_package(tmp_path: Path) -> None:
    from jupyter_ds_jobs.common.bundle import sha256_file

    for size in (0, 1, runner._COPY_CHUNK + 7):
        path = tmp_path / f"f{size}"
        path.write_bytes(bytes(i % 251 for i in range(size)))
        assert runner._sha256_file(str(path)) == sha256_file(path)


def test_zygote_preloads_what_the_runner_imports_at_its_start() -> None:
    import ast

    from jupyter_ds_jobs.server.executors import _zygote_main

    tree = ast.parse(Path(runner.__file__).read_text(encoding="utf-8"))
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top.add(node.module)
    top.discard("__future__")
    # the zygote's module run as it starts (not as __main__: no serving), then its preload
    code = (
        "import sys; p = sys.argv[1]; g = {'__name__': 'zygote', '__file__': p}; "
        "exec(compile(open(p, encoding='utf-8').read(), p, 'exec'), g); g['_preload'](); "
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, _zygote_main.__file__],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert top - set(proc.stdout.split()) == set()


def test_the_runners_job_dir_files_are_reserved_for_it() -> None:
    from jupyter_ds_jobs.packaging.celljob import RESERVED_PREFIX

    own = (
        runner.CELL_FILE,
        runner.RUNNER_FILE,
        runner.MANIFEST_FILE,
        runner.INPUTS_DIR,
        runner.OUTPUTS_DIR,
        runner.OUTPUTS_ZIP,
        runner.ERROR_FILE,
    )
    assert all(name.startswith(RESERVED_PREFIX) for name in own)
