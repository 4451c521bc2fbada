"""config.yaml -> JobSpec: every key into JobParameters, every error naming its key.

Real files in tmp dirs; ``analyze`` is a small real analyzer of our own (ast + installed
distributions), and one test runs the package's default analyzer.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_ds_jobs._proto import jobs_pb2
from jupyter_ds_jobs.common.errors import ConfigError, InvalidArgument
from jupyter_ds_jobs.packaging.jobspec import (
    KNOWN_INSTANCE_TYPES,
    JobSpec,
    LocalFile,
    fork_overrides,
    load_config,
    parse_config,
    parse_duration,
    parse_size_gb,
)

DATA = Path(__file__).parent / "data" / "jobspec"
LOCAL_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def tree(root: Path, files: dict[str, str]) -> Path:
    """Create files (a name ending in '/' is an empty directory) under root."""
    for name, text in files.items():
        p = root / name
        if name.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def small_analyze(entry: Path, root: Path) -> tuple[list[Path], list[str]]:
    """A real, small analyzer: local modules imported by the entry; pins of installed distributions."""
    dists = importlib.metadata.packages_distributions()
    modules: list[Path] = []
    pins: list[str] = []
    for node in ast.walk(ast.parse(entry.read_text(encoding="utf-8"))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            else []
        )
        for name in names:
            top = name.split(".")[0]
            if (root / top).is_dir():
                modules.append(root / top)
            elif (root / f"{top}.py").is_file():
                modules.append(root / f"{top}.py")
            elif top in dists and top not in sys.stdlib_module_names:
                dist = dists[top][0]
                pins.append(f"{dist}=={importlib.metadata.version(dist)}")
    return modules, pins


def parse(text: str, base: Path, **kw: object) -> JobSpec:
    kw.setdefault("env", {})
    return parse_config(text, base, **kw)  # type: ignore[arg-type]


def err(text: str, base: Path, **kw: object) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(text, base, **kw)
    return str(exc.value)


# --------------------------------------------------------------------------- the reference's example


def official_tree(tmp_path: Path) -> Path:
    shutil.copy(DATA / "official_example.yaml", tmp_path / "config.yaml")
    return tree(
        tmp_path,
        {
            "main.py": "import helper\nimport yaml\n\nprint(helper.X, yaml.__name__)\n",
            "helper.py": "X = 1\n",
            "data.csv": "a,b\n1,2\n",
            "src/mod.py": "",
            "plain.txt": "plain\n",
        },
    )


def test_official_example_verbatim_fails_only_on_its_placeholder_var(tmp_path: Path) -> None:
    # The README's example uses the placeholder var VAR for both s3-mounts and datasets.
    base = official_tree(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_config(base / "config.yaml", analyze=small_analyze, env={"FOO": "local-foo"})
    assert str(exc.value) == "datasets[0]: variable 'VAR' is already declared by s3-mounts[0]"
    assert exc.value.field == "datasets[0]"
    assert isinstance(exc.value, InvalidArgument)


def test_official_example_with_placeholders_filled_round_trips(tmp_path: Path) -> None:
    base = official_tree(tmp_path)
    text = (base / "config.yaml").read_text()
    for old, new in [
        ("s3-mounts: [<id>: VAR]", "s3-mounts: [bt1s3: S3VAR]"),
        ("datasets: [<id>: VAR]", "datasets: [bt1ds: DSVAR]"),
        (
            "output-datasets: [{name, description, labels, var, size}]",
            "output-datasets: [{name: out-ds, description: d, labels: {k: v}, var: ODS, size: 10Gb}]",
        ),
    ]:
        assert old in text
        text = text.replace(old, new)
    (base / "config.yaml").write_text(text)

    spec = load_config(base / "config.yaml", analyze=small_analyze, env={"FOO": "local-foo"})
    p = spec.params
    assert (spec.name, spec.desc, spec.base_dir) == ("my-job", "what it does", base.resolve())
    assert spec.config_text == text
    assert p.cmd == "python main.py --data ${DATA} --out ${OUT} -n ${N}"
    assert [(a.name, a.value) for a in p.arguments] == [("N", "10")]
    assert len(p.input_files) == 0  # the client fills them
    assert spec.inputs == [
        LocalFile(base / "main.py", "main.py", "", False),  # the entry script, as the official client
        LocalFile(base / "data.csv", "data.csv", "DATA", False),
        LocalFile(base / "src", "src/", "SRC", True),
        LocalFile(base / "plain.txt", "plain.txt", "", False),
    ]
    assert {f.var for f in spec.inputs if f.var} == {"DATA", "SRC"}
    assert [(f.path, f.var) for f in p.output_files] == [("result.txt", "OUT")]
    assert list(p.s3_mount_ids) == ["bt1s3"]
    assert list(p.dataset_ids) == ["bt1ds"]
    assert dict(p.env.vars) == {"FOO": "local-foo", "BAR": "baz"}
    assert p.env.WhichOneof("docker_image") == "docker_image_resource_id"
    assert p.env.docker_image_resource_id == "<image-resource-id>"
    py = p.env.python_env
    assert py.python_version == LOCAL_PY
    assert list(py.requirements) == [f"PyYAML=={importlib.metadata.version('PyYAML')}"]
    assert len(py.local_modules) == 0  # the client fills them
    assert not py.HasField("pip_options")
    assert spec.local_modules == [
        LocalFile(base / "main.py", "main.py.zip", "_LOCAL_MODULE_0", True),
        LocalFile(base / "helper.py", "helper.py.zip", "_LOCAL_MODULE_1", True),
    ]
    assert p.attach_project_disk is True
    assert [t.name for t in p.cloud_instance_types] == ["g1.1", "c1.4"]
    assert p.extended_working_storage.type == jobs_pb2.ExtendedWorkingStorage.SSD
    assert p.extended_working_storage.size_gb == 150
    assert p.graceful_shutdown_parameters.signal == 15
    assert p.graceful_shutdown_parameters.timeout.ToTimedelta() == timedelta(seconds=15)
    assert p.spark_parameters.connector_id == "<id>"
    [ds] = p.output_datasets
    assert (ds.name, ds.description, dict(ds.labels), ds.var, ds.size_gb) == (
        "out-ds",
        "d",
        {"k": "v"},
        "ODS",
        10,
    )


# --------------------------------------------------------------------------- every key, full fixture


def full_tree(tmp_path: Path) -> Path:
    for name in ("full.yaml", "requirements.txt", "base.txt"):
        shutil.copy(DATA / name, tmp_path / name)
    return tree(
        tmp_path,
        {
            "train.py": "import mylib\n",
            "mylib/__init__.py": "",
            "data/train.csv": "x\n",
            "configs/a.json": "{}",
            "configs/b/c.json": "{}",
            "extra.txt": "e",
        },
    )


def test_full_fixture_every_key(tmp_path: Path) -> None:
    base = full_tree(tmp_path)
    spec = load_config(base / "full.yaml", env={"TOKEN_FROM_HERE": "t0k", "OTHER": "x"})
    p = spec.params
    assert (spec.name, spec.desc) == ("full-job", "every key")
    assert p.cmd == (
        "python -u train.py --data ${DATA} --cfg ${CFG} --out ${OUT} --logs ${LOGS}"
        " --epochs ${EPOCHS} --lr ${LR} --s3 ${bt1s3mount} --ds ${bt1dataset} --new ${NEWDS}"
        " --home ${DS_PROJECT_HOME}"
    )
    assert [(a.name, a.value) for a in p.arguments] == [("EPOCHS", "5"), ("LR", "0.01")]
    assert spec.inputs == [
        LocalFile(base / "train.py", "train.py", "", False),
        LocalFile(base / "data/train.csv", "data/train.csv", "DATA", False),
        LocalFile(base / "configs", "configs/", "CFG", True),
        LocalFile(base / "extra.txt", "extra.txt", "", False),
    ]
    assert [(f.path, f.var) for f in p.output_files] == [
        ("model.bin", "OUT"),
        ("logs/", "LOGS"),
        ("summary.txt", ""),
    ]
    assert list(p.s3_mount_ids) == ["bt1s3mount"]
    assert list(p.dataset_ids) == ["bt1dataset", "bt1dataset2"]
    assert dict(p.env.vars) == {"TOKEN_FROM_HERE": "t0k", "MODE": "fast"}
    assert p.env.WhichOneof("docker_image") == "docker_image_spec"
    d = p.env.docker_image_spec
    assert (d.image_url, d.username, d.WhichOneof("password"), d.password_ds_secret_name) == (
        "cr.yandex/crp123/image:1.0",
        "json_key",
        "password_ds_secret_name",
        "REGISTRY_PASSWORD",
    )
    py = p.env.python_env
    assert py.python_version == "3.10"
    assert list(py.requirements) == ["numpy==1.26.4", "requests==2.31.0", "pandas>=2"]
    assert py.pip_options.index_url == "https://pypi.example/simple"
    assert list(py.pip_options.extra_index_urls) == [
        "https://a.example/simple",
        "https://b.example/simple",
        "https://c.example/simple",  # from the requirements file
    ]
    assert list(py.pip_options.trusted_hosts) == ["a.example"]
    assert py.pip_options.no_deps is True
    assert spec.local_modules == [
        LocalFile(base / "train.py", "train.py.zip", "_LOCAL_MODULE_0", True),
        LocalFile(base / "mylib", "mylib.zip", "_LOCAL_MODULE_1", True),
    ]
    assert p.attach_project_disk is True
    assert [t.name for t in p.cloud_instance_types] == ["g1.1"]
    assert (p.extended_working_storage.type, p.extended_working_storage.size_gb) == (1, 1024)
    assert p.graceful_shutdown_parameters.signal == 2
    assert p.graceful_shutdown_parameters.timeout.ToTimedelta() == timedelta(seconds=90)
    assert p.spark_parameters.connector_id == "bt1spark"
    [ds] = p.output_datasets
    assert (ds.name, ds.description, dict(ds.labels), ds.var, ds.size_gb) == (
        "my-ds",
        "results of the run",
        {"team": "ml", "stage": "dev"},
        "NEWDS",
        20,
    )
    # it survives the wire
    again = jobs_pb2.JobParameters.FromString(p.SerializeToString())
    assert again == p


def test_minimal_config_defaults(tmp_path: Path) -> None:
    spec = parse("cmd: echo hi\n", tmp_path)
    p = spec.params
    assert (spec.name, spec.desc, p.cmd) == ("", "", "echo hi")
    assert [t.name for t in p.cloud_instance_types] == ["c1.4"]
    assert not p.HasField("env")
    assert not p.HasField("extended_working_storage")
    assert not p.HasField("graceful_shutdown_parameters")
    assert not p.HasField("spark_parameters")
    assert p.attach_project_disk is False
    assert spec.inputs == [] and spec.local_modules == [] and {f.var for f in spec.inputs if f.var} == set()


# --------------------------------------------------------------------------- pieces


def test_input_forms_and_outputs(tmp_path: Path) -> None:
    tree(tmp_path, {"a.txt": "a", "b.txt": "b", "d/x": "x", "sub/c.txt": "c"})
    spec = parse(
        "cmd: run ${A} ${B} ${D} ${O}\n"
        "inputs:\n  - a.txt: A\n  - b.txt:\n      var: B\n  - d/: D\n  - sub/c.txt\n"
        "outputs:\n  - out/: O\n  - plain.log\n",
        tmp_path,
    )
    assert [(f.desc_path, f.var, f.zip) for f in spec.inputs] == [
        ("a.txt", "A", False),
        ("b.txt", "B", False),
        ("d/", "D", True),
        ("sub/c.txt", "", False),
    ]
    assert all(f.local_path.is_absolute() for f in spec.inputs)
    assert {f.var for f in spec.inputs if f.var} == {"A", "B", "D"}
    assert [(f.path, f.var) for f in spec.params.output_files] == [("out/", "O"), ("plain.log", "")]


def test_input_with_var_may_be_absolute_or_outside(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", {"f.bin": "1"})
    proj = tree(tmp_path / "proj", {"x": ""})
    spec = parse(
        f"cmd: run ${{ABS}} ${{UP}}\ninputs:\n  - {outside / 'f.bin'}: ABS\n  - ../outside: UP\n", proj
    )
    assert [(f.local_path, f.desc_path, f.zip) for f in spec.inputs] == [
        (outside / "f.bin", str(outside / "f.bin"), False),
        (outside, "../outside", True),
    ]


def test_s3_mounts_and_datasets_replace_vars_in_cmd(tmp_path: Path) -> None:
    spec = parse(
        "cmd: python -c 'x' ${S3} ${DS} ${S3}/sub ${PLAIN}\n"
        "s3-mounts: [bt1mount: S3, bt1other]\ndatasets: [bt1data: DS]\nargs: {PLAIN: v}\n",
        tmp_path,
    )
    assert spec.params.cmd == "python -c 'x' ${bt1mount} ${bt1data} ${bt1mount}/sub ${PLAIN}"
    assert list(spec.params.s3_mount_ids) == ["bt1mount", "bt1other"]
    assert list(spec.params.dataset_ids) == ["bt1data"]


def test_ds_project_home_with_flag(tmp_path: Path) -> None:
    spec = parse("cmd: ls ${DS_PROJECT_HOME}\nflags: [attach-project-disk]\n", tmp_path)
    assert spec.params.attach_project_disk
    assert spec.params.cmd == "ls ${DS_PROJECT_HOME}"


def test_other_dollar_forms_pass_through(tmp_path: Path) -> None:
    spec = parse("cmd: echo $HOME ${HOME:-x} $$\n", tmp_path)
    assert spec.params.cmd == "echo $HOME ${HOME:-x} $$"


def test_cmd_variable_too_long_to_declare_is_undeclared(tmp_path: Path) -> None:
    long = "V" * 51  # the characters of a variable name, one more than VAR_RE allows
    with pytest.raises(ConfigError, match=rf"cmd: variable \$\{{{long}\}} is not declared"):
        parse(f"cmd: run ${{{long}}}\n", tmp_path)
    with pytest.raises(ConfigError, match=r"must match \[0-9a-zA-Z_-\]\{1,50\}"):
        parse(f"cmd: run ${{{long}}}\nargs: {{{long}: 1}}\n", tmp_path)


def test_deprecated_core_jobspec_alias_warns_and_re_exports() -> None:
    from jupyter_ds_jobs.packaging import jobspec

    sys.modules.pop("jupyter_ds_jobs.core.jobspec", None)
    with pytest.warns(DeprecationWarning, match="moved to jupyter_ds_jobs.packaging.jobspec"):
        from jupyter_ds_jobs.core import jobspec as alias
    for name in alias.__all__:
        assert getattr(alias, name) is getattr(jobspec, name)


@pytest.mark.parametrize(
    ("docker", "check"),
    [
        ("docker: b1gimage", lambda e: e.docker_image_resource_id == "b1gimage"),
        (
            "docker: {image: cr.yandex/x:1, username: u, password: plain-pw}",
            lambda e: (
                (e.docker_image_spec.image_url, e.docker_image_spec.password_plain_text)
                == ("cr.yandex/x:1", "plain-pw")
            ),
        ),
        (
            "docker: {image: ubuntu:22.04}",
            lambda e: (
                e.docker_image_spec.image_url == "ubuntu:22.04"
                and e.docker_image_spec.WhichOneof("password") is None
            ),
        ),
    ],
)
def test_docker_forms(tmp_path: Path, docker: str, check: object) -> None:
    spec = parse(f"cmd: x\nenv:\n  {docker}\n", tmp_path)
    assert callable(check) and check(spec.params.env)


def test_env_vars_forms(tmp_path: Path) -> None:
    spec = parse(
        "cmd: x\nenv:\n  vars:\n    - A\n    - B: ''\n    - C: 'x y'\n", tmp_path, env={"A": "from-local"}
    )
    assert dict(spec.params.env.vars) == {"A": "from-local", "B": "", "C": "x y"}
    spec = parse("cmd: x\nenv:\n  vars: {D: d}\n", tmp_path)
    assert dict(spec.params.env.vars) == {"D": "d"}


def test_env_vars_default_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JDSJ_TEST_VAR", "here")
    spec = parse_config("cmd: x\nenv: {vars: [JDSJ_TEST_VAR]}\n", tmp_path)
    assert dict(spec.params.env.vars) == {"JDSJ_TEST_VAR": "here"}


def test_python_auto_module_entry(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/__main__.py": "from pkg import tool\nimport util\n",
            "pkg/tool.py": "",
            "util.py": "",
        },
    )
    seen: list[tuple[Path, Path]] = []

    def analyze(entry: Path, root: Path) -> tuple[list[Path], list[str]]:
        seen.append((entry, root))
        return small_analyze(entry, root)

    spec = parse("cmd: python3 -m pkg --x 1\nenv: {python: auto}\n", tmp_path, analyze=analyze)
    assert seen == [(tmp_path / "pkg" / "__main__.py", tmp_path)]
    assert [(m.local_path, m.desc_path, m.var) for m in spec.local_modules] == [
        (tmp_path / "pkg", "pkg.zip", "_LOCAL_MODULE_0"),
        (tmp_path / "util.py", "util.py.zip", "_LOCAL_MODULE_1"),
    ]
    assert spec.inputs == []  # no script file to send for -m


@pytest.mark.parametrize(
    ("cmd", "entry"),
    [
        ("python main.py", "main.py"),
        ("python3 -u main.py --flag", "main.py"),
        ("python -W ignore -X dev -OO main.py", "main.py"),
        ("python --check-hash-based-pycs never main.py", "main.py"),
        ("FOO=1 /usr/bin/python3.11 ./main.py", "main.py"),
        ("cd . && python main.py", "main.py"),
        ("python -m pkg", "pkg/__main__.py"),
        ("python -um pkg.sub", "pkg/sub.py"),
        ("python -mpkg", "pkg/__main__.py"),
    ],
)
def test_python_auto_entry_from_cmd(tmp_path: Path, cmd: str, entry: str) -> None:
    tree(tmp_path, {"main.py": "", "pkg/__init__.py": "", "pkg/__main__.py": "", "pkg/sub.py": ""})
    seen: list[Path] = []

    def analyze(script: Path, root: Path) -> tuple[list[Path], list[str]]:
        seen.append(script)
        return [], []

    spec = parse(f"cmd: {cmd}\nenv: {{python: auto}}\n", tmp_path, analyze=analyze)
    assert seen == [tmp_path / entry]
    top = entry.split("/")[0]
    assert [m.local_path for m in spec.local_modules] == [tmp_path / top]


@pytest.mark.parametrize("cmd", ["python -c 'print(1)'", "python ${SCRIPT}", "bash -c main.py", "python"])
def test_python_auto_without_entry_script(tmp_path: Path, cmd: str) -> None:
    msg = err(f"cmd: {cmd}\nargs: {{SCRIPT: x}}\nenv: {{python: auto}}\n", tmp_path, analyze=small_analyze)
    assert msg.startswith(
        "env.python: python: auto needs the entry script of cmd: cmd runs no local python script"
    )


def test_python_analyzer_failure_names_the_key(tmp_path: Path) -> None:
    tree(tmp_path, {"main.py": "import (\n"})
    msg = err("cmd: python main.py\nenv: {python: auto}\n", tmp_path, analyze=small_analyze)
    assert msg.startswith("env.python: cannot analyze main.py: SyntaxError")


def test_python_auto_options_and_root_paths(tmp_path: Path) -> None:
    tree(tmp_path, {"run.py": "import a\n", "other.py": "import b\n", "a.py": "", "b/__init__.py": ""})
    spec = parse(
        "cmd: python3.11 -u -W ignore run.py\n"
        "env:\n  python:\n    type: auto\n    version: '3.12'\n    root-paths: [other.py]\n"
        "    pip: {index-url: https://i.example/simple, no-deps: 'false'}\n",
        tmp_path,
        analyze=small_analyze,
    )
    assert [m.local_path.name for m in spec.local_modules] == ["run.py", "other.py", "a.py", "b"]
    py = spec.params.env.python_env
    assert py.python_version == "3.12"
    assert py.pip_options.index_url == "https://i.example/simple"
    assert py.pip_options.no_deps is False
    assert [f.desc_path for f in spec.inputs] == ["run.py"]


def test_python_auto_default_analyzer(tmp_path: Path) -> None:
    # No analyze argument: jupyter_ds_jobs.packaging.analysis.analyze_script is used.
    tree(tmp_path, {"main.py": "import json\nimport helper\nimport yaml\n", "helper.py": "X = 1\n"})
    spec = parse("cmd: python main.py\nenv:\n  python: auto\n", tmp_path)
    assert [m.local_path for m in spec.local_modules] == [tmp_path / "main.py", tmp_path / "helper.py"]
    assert [f.desc_path for f in spec.inputs] == ["main.py"]
    reqs = list(spec.params.env.python_env.requirements)
    assert reqs == [f"PyYAML=={importlib.metadata.version('PyYAML')}"] or reqs == [
        f"pyyaml=={importlib.metadata.version('PyYAML')}"
    ]
    # its errors become ConfigErrors naming the key
    (tmp_path / "main.py").write_text("import helper\n")
    (tmp_path / "helper.py").write_text("def (\n")
    msg = err("cmd: python main.py\nenv:\n  python: auto\n", tmp_path)
    assert msg.startswith("env.python: cannot analyze main.py: InvalidArgument"), msg


def test_python_manual_type_inferred_and_local_module_name_clash(tmp_path: Path) -> None:
    tree(tmp_path, {"a/utils/__init__.py": "", "b/utils/__init__.py": "", "req.txt": "x==1\n"})
    spec = parse(
        "cmd: bash run.sh\nenv:\n  python:\n    requirements-file: req.txt\n    local-paths: [a/utils, b/utils]\n",
        tmp_path,
    )
    assert list(spec.params.env.python_env.requirements) == ["x==1"]
    assert spec.params.env.python_env.python_version == LOCAL_PY
    assert [(m.desc_path, m.var) for m in spec.local_modules] == [
        ("utils.zip", "_LOCAL_MODULE_0"),
        ("utils-1.zip", "_LOCAL_MODULE_1"),
    ]
    assert spec.inputs == []


def test_requirements_continuations_options_and_errors(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "r.txt": "--index-url=https://x.example/simple\n--trusted-host x.example\n--no-deps\n"
            "pkg \\\n  >=1.0\n--requirement=more/r2.txt\n",
            "more/r2.txt": "-r ../r3.txt\n",
            "r3.txt": "last==3 # c\n",
            "loop.txt": "-r loop.txt\n",
            "editable.txt": "ok==1\n-e .\n",
        },
    )
    spec = parse("cmd: x\nenv: {python: {type: manual, requirements-file: r.txt}}\n", tmp_path)
    py = spec.params.env.python_env
    assert list(py.requirements) == ["pkg   >=1.0", "last==3"]
    assert (py.pip_options.index_url, list(py.pip_options.trusted_hosts), py.pip_options.no_deps) == (
        "https://x.example/simple",
        ["x.example"],
        True,
    )
    msg = err("cmd: x\nenv: {python: {type: manual, requirements-file: loop.txt}}\n", tmp_path)
    assert msg.startswith("env.python.requirements-file: ") and "includes itself" in msg
    msg = err("cmd: x\nenv: {python: {type: manual, requirements-file: editable.txt}}\n", tmp_path)
    assert (
        msg == "env.python.requirements-file: editable.txt:2: pip option '-e' is not supported in a job "
        "(only --index-url, --extra-index-url, --trusted-host, --no-deps)"
    )
    msg = err("cmd: x\nenv: {python: {type: manual, requirements-file: nope.txt}}\n", tmp_path)
    assert msg.startswith("env.python.requirements-file: cannot read requirements file")


def test_load_config_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    msg = err("cmd: [unclosed\n", tmp_path)
    assert msg.startswith("invalid YAML at line ")
    assert err("- a\n- b\n", tmp_path) == "the config must be a mapping of keys, got a list"
    assert err("cmd: a\ncmd: b\n", tmp_path) == "cmd: duplicate key (line 2)"


# --------------------------------------------------------------------------- errors, each naming its key

ERRORS: list[tuple[str, str, str]] = [
    ("missing cmd", "name: x\n", "cmd: cmd is required"),
    ("empty file", "", "cmd: cmd is required"),
    ("empty cmd", "cmd: ''\n", "cmd: must not be empty"),
    ("cmd not a string", "cmd: [a]\n", "cmd: expected a string, got a list"),
    (
        "undeclared var",
        "cmd: run ${NOPE}\n",
        "cmd: variable ${NOPE} is not declared (declare it in inputs, outputs, args, s3-mounts, datasets or output-datasets)",
    ),
    (
        "project home without flag",
        "cmd: ls ${DS_PROJECT_HOME}\n",
        "cmd: ${DS_PROJECT_HOME} needs flags: [attach-project-disk]",
    ),
    ("unknown key", "cmd: x\ninput: [a.txt]\n", "input: unknown key 'input'; did you mean 'inputs'?"),
    (
        "unknown key no suggestion",
        "cmd: x\nzzz: 1\n",
        "zzz: unknown key 'zzz'; known keys: name, desc, cmd, args, inputs, outputs, s3-mounts, datasets, env, "
        "flags, cloud-instance-types, cloud-instance-type, working-storage, graceful-shutdown, spark, output-datasets",
    ),
    (
        "unknown env key",
        "cmd: x\nenv: {docker_image: x}\n",
        "env.docker_image: unknown key 'docker_image'; did you mean 'docker'?",
    ),
    (
        "unknown pip key",
        "cmd: x\nenv: {python: {type: manual, pip: {index_url: u}}}\n",
        "env.python.pip.index_url: unknown key 'index_url'; did you mean 'index-url'?",
    ),
    (
        "bad path parent",
        "cmd: x\ninputs: [a.txt, b.txt, ../x]\n",
        "inputs[2]: path '../x' must be relative and must not contain '..'",
    ),
    (
        "bad path absolute",
        "cmd: x\ninputs: [/etc/passwd]\n",
        "inputs[0]: path '/etc/passwd' must be relative and must not contain '..'",
    ),
    (
        "bad output path",
        "cmd: x\noutputs: [a/../../b]\n",
        "outputs[0]: path 'a/../../b' must be relative and must not contain '..'",
    ),
    (
        "nonexistent input",
        "cmd: x ${M}\ninputs: [missing.csv: M]\n",
        "inputs[0]: no such file or directory: 'missing.csv'",
    ),
    (
        "duplicate input path",
        "cmd: x\ninputs: [a.txt, a.txt]\n",
        "inputs[1]: path 'a.txt' is already listed at inputs[0]",
    ),
    (
        "input bad form",
        "cmd: x\ninputs: [[a]]\n",
        "inputs[0]: expected 'path', 'path: VAR' or 'path: {var: VAR}', got a list",
    ),
    (
        "input two keys",
        "cmd: x\ninputs: [{a.txt: A, b.txt: B}]\n",
        "inputs[0]: expected one 'name: value' pair, got 2 keys",
    ),
    (
        "input unknown sub key",
        "cmd: x\ninputs: [{a.txt: {vr: A}}]\n",
        "inputs[0].a.txt.vr: unknown key 'vr'; did you mean 'var'?",
    ),
    ("inputs not a list", "cmd: x\ninputs: a.txt\n", "inputs: expected a list, got the string 'a.txt'"),
    (
        "duplicate var",
        "cmd: x\ninputs: [a.txt: A]\noutputs: [o: A]\n",
        "outputs[0]: variable 'A' is already declared by inputs[0]",
    ),
    (
        "duplicate var arg",
        "cmd: x\nargs: {A: 1}\ns3-mounts: [m1: A]\n",
        "s3-mounts[0]: variable 'A' is already declared by args.A",
    ),
    (
        "bad var name",
        "cmd: x\noutputs: [o: 'a b']\n",
        "outputs[0]: bad variable name 'a b': it must match [0-9a-zA-Z_-]{1,50}",
    ),
    (
        "var name too long",
        f"cmd: x\nargs: {{{'V' * 51}: 1}}\n",
        f"args.{'V' * 51}: bad variable name '{'V' * 51}'",
    ),
    (
        "reserved var",
        "cmd: x\nargs: {DS_PROJECT_HOME: 1}\n",
        "args.DS_PROJECT_HOME: variable name DS_PROJECT_HOME is reserved",
    ),
    (
        "reserved module var",
        "cmd: x\nargs: {_LOCAL_MODULE_0: 1}\n",
        "args._LOCAL_MODULE_0: variable name '_LOCAL_MODULE_0' is reserved",
    ),
    ("args not a mapping", "cmd: x\nargs: [a]\n", "args: expected a mapping, got a list"),
    ("arg value not string", "cmd: x\nargs: {A: [1]}\n", "args.A: expected a string, got a list"),
    ("duplicate mount id", "cmd: x\ns3-mounts: [m1: A, m1: B]\n", "s3-mounts[1]: id 'm1' is listed twice"),
    ("dataset bad form", "cmd: x\ndatasets: [[a]]\n", "datasets[0]: expected '<id>: VAR', got a list"),
    (
        "both instance keys",
        "cmd: x\ncloud-instance-type: c1.4\ncloud-instance-types: [c1.8]\n",
        "cloud-instance-types: give either cloud-instance-type or cloud-instance-types, not both",
    ),
    (
        "bad instance type",
        "cmd: x\ncloud-instance-types: [c1.4, x9.1]\n",
        "cloud-instance-types[1]: unknown instance type 'x9.1'; known types: "
        + ", ".join(KNOWN_INSTANCE_TYPES),
    ),
    (
        "bad single instance type",
        "cmd: x\ncloud-instance-type: big\n",
        "cloud-instance-type: unknown instance type 'big'",
    ),
    (
        "duplicate instance type",
        "cmd: x\ncloud-instance-types: [c1.4, c1.4]\n",
        "cloud-instance-types[1]: instance type 'c1.4' is listed twice",
    ),
    (
        "empty instance types",
        "cmd: x\ncloud-instance-types: []\n",
        "cloud-instance-types: must list at least one instance type",
    ),
    (
        "bad duration",
        "cmd: x\ngraceful-shutdown: {timeout: soon}\n",
        "graceful-shutdown.timeout: bad duration 'soon'",
    ),
    (
        "bad signal",
        "cmd: x\ngraceful-shutdown: {signal: SIGNOPE}\n",
        "graceful-shutdown.signal: bad signal 'SIGNOPE'",
    ),
    (
        "bad signal number",
        "cmd: x\ngraceful-shutdown: {signal: '99'}\n",
        "graceful-shutdown.signal: bad signal '99'",
    ),
    (
        "graceful unknown",
        "cmd: x\ngraceful-shutdown: {sig: TERM}\n",
        "graceful-shutdown.sig: unknown key 'sig'; did you mean 'signal'?",
    ),
    ("bad size", "cmd: x\nworking-storage: {size: lots}\n", "working-storage.size: bad size 'lots'"),
    ("size without unit", "cmd: x\nworking-storage: {size: '150'}\n", "working-storage.size: bad size '150'"),
    ("missing size", "cmd: x\nworking-storage: {type: SSD}\n", "working-storage.size: size is required"),
    (
        "bad storage type",
        "cmd: x\nworking-storage: {type: HDD, size: 200Gb}\n",
        "working-storage.type: unknown storage type 'HDD'; known: SSD",
    ),
    ("spark without connector", "cmd: x\nspark: {}\n", "spark.connector: connector is required"),
    ("spark not a mapping", "cmd: x\nspark: b1g\n", "spark: expected a mapping, got the string 'b1g'"),
    (
        "unknown flag",
        "cmd: x\nflags: [attach-disk]\n",
        "flags[0]: unknown flag 'attach-disk'; known flags: attach-project-disk",
    ),
    (
        "output dataset missing var",
        "cmd: x\noutput-datasets: [{name: n, size: 1Gb}]\n",
        "output-datasets[0].var: var is required",
    ),
    (
        "output dataset bad size",
        "cmd: x\noutput-datasets: [{name: n, var: V, size: big}]\n",
        "output-datasets[0].size: bad size 'big'",
    ),
    (
        "output dataset labels",
        "cmd: x\noutput-datasets: [{name: n, var: V, size: 1Gb, labels: [a]}]\n",
        "output-datasets[0].labels: expected a mapping, got a list",
    ),
    (
        "output dataset unknown",
        "cmd: x\noutput-datasets: [{name: n, var: V, size: 1Gb, label: {}}]\n",
        "output-datasets[0].label: unknown key 'label'; did you mean 'labels'?",
    ),
    (
        "env var not set",
        "cmd: x\nenv: {vars: [NOT_SET_HERE]}\n",
        "env.vars[0]: environment variable 'NOT_SET_HERE' is not set locally",
    ),
    (
        "env var bad name",
        "cmd: x\nenv: {vars: [{'1A': x}]}\n",
        "env.vars[0]: bad environment variable name '1A'",
    ),
    (
        "env var twice",
        "cmd: x\nenv: {vars: [{A: x}, {A: y}]}\n",
        "env.vars[1]: environment variable 'A' is listed twice",
    ),
    ("docker without image", "cmd: x\nenv: {docker: {username: u}}\n", "env.docker.image: image is required"),
    (
        "docker bad password",
        "cmd: x\nenv: {docker: {image: i, password: {secret: s}}}\n",
        "env.docker.password.secret: unknown key 'secret'; did you mean 'secret-id'?",
    ),
    (
        "python bad string",
        "cmd: x\nenv: {python: manual}\n",
        "env.python: expected 'auto' or a mapping with type: auto|manual, got 'manual'",
    ),
    (
        "python bad type",
        "cmd: x\nenv: {python: {type: conda}}\n",
        "env.python.type: expected auto or manual, got 'conda'",
    ),
    (
        "python bad version",
        "cmd: x\nenv: {python: {type: manual, version: three}}\n",
        "env.python.version: bad python version 'three'",
    ),
    (
        "python auto no script",
        "cmd: bash run.sh\nenv: {python: auto}\n",
        "env.python: python: auto needs the entry script of cmd: cmd runs no local python script",
    ),
    (
        "python auto missing script",
        "cmd: python nope.py\nenv: {python: auto}\n",
        "env.python: python: auto needs the entry script of cmd: entry script",
    ),
    (
        "python auto with local-paths",
        "cmd: python main.py\nenv: {python: {type: auto, local-paths: [a]}}\n",
        "env.python.local-paths: local-paths is for type: manual",
    ),
    (
        "python manual with root-paths",
        "cmd: x\nenv: {python: {type: manual, root-paths: [a]}}\n",
        "env.python.root-paths: root-paths is for type: auto",
    ),
    (
        "python missing local path",
        "cmd: x\nenv: {python: {type: manual, local-paths: [nope]}}\n",
        "env.python.local-paths[0]: no such file or directory: 'nope'",
    ),
    (
        "pip bad no-deps",
        "cmd: x\nenv: {python: {type: manual, pip: {no-deps: maybe}}}\n",
        "env.python.pip.no-deps: expected true or false, got 'maybe'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_errors_name_their_key(tmp_path: Path, text: str, expected: str) -> None:
    tree(tmp_path, {"a.txt": "a", "b.txt": "b", "main.py": ""})
    msg = err(text, tmp_path)
    assert msg.startswith(expected), msg


@pytest.mark.parametrize("key", ["inputs", "outputs", "s3-mounts", "datasets"])
def test_at_most_100_entries(tmp_path: Path, key: str) -> None:
    for i in range(101):
        (tmp_path / f"f{i}").write_text("")
    ok = "".join(f"  - f{i}: V{i}\n" for i in range(100))
    parse(f"cmd: x\n{key}:\n{ok}", tmp_path)
    too_many = ok + "  - f100: V100\n"
    assert err(f"cmd: x\n{key}:\n{too_many}", tmp_path) == f"{key}: at most 100 entries are allowed, got 101"


def test_any_instance_type_when_check_disabled(tmp_path: Path) -> None:
    spec = parse("cmd: x\ncloud-instance-type: g2.mig\n", tmp_path, instance_types=None)
    assert [t.name for t in spec.params.cloud_instance_types] == ["g2.mig"]


# --------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15),
        ("1m", 60),
        ("2h", 7200),
        ("1d", 86400),
        ("500ms", 0.5),
        ("1h30m", 5400),
        ("10", 10),
        ("1.5s", 1.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "k") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "s", "15x", "-1s", "1m 2", "15s1"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_duration(text, "graceful-shutdown.timeout")
    assert str(exc.value).startswith(f"graceful-shutdown.timeout: bad duration {text!r}")


@pytest.mark.parametrize(
    ("text", "gb"),
    [
        ("150Gb", 150),
        ("150GB", 150),
        ("150gb", 150),
        ("150G", 150),
        ("150GiB", 150),
        ("1Tb", 1024),
        ("2048Mb", 2),
        ("0.5Tb", 512),
    ],
)
def test_parse_size_gb(text: str, gb: int) -> None:
    assert parse_size_gb(text, "k") == gb


@pytest.mark.parametrize("text", ["150", "Gb", "0Gb", "1.5Gb", "100Mb", "ten Gb", "-5Gb"])
def test_parse_size_gb_bad(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_size_gb(text, "working-storage.size")
    assert str(exc.value).startswith(f"working-storage.size: bad size {text!r}")


# --------------------------------------------------------------------------- fork


def base_params() -> jobs_pb2.JobParameters:
    p = jobs_pb2.JobParameters(cmd="python main.py ${DATA} ${N}")
    p.arguments.add(name="N", value="10")
    p.input_files.add(desc=jobs_pb2.FileDesc(path="data.csv", var="DATA"), sha256="ab", size_bytes=3)
    p.input_files.add(desc=jobs_pb2.FileDesc(path="main.py"), sha256="cd", size_bytes=1)
    p.env.vars["A"] = "a"
    p.cloud_instance_types.add(name="c1.4")
    return p


def test_fork_overrides(tmp_path: Path) -> None:
    tree(tmp_path, {"new.csv": "x", "newdir/f": "y"})
    base = base_params()
    before = base.SerializeToString()
    out, files = fork_overrides(
        args={"N": "20"},
        vars={"DATA": tmp_path / "newdir"},
        env_vars={"A": "b", "NEW": "c"},
        instance_type="g1.1",
        base=base,
    )
    assert [(a.name, a.value) for a in out.arguments] == [("N", "20")]
    assert dict(out.env.vars) == {"A": "b", "NEW": "c"}
    assert not out.env.HasField("python_env")
    assert [t.name for t in out.cloud_instance_types] == ["g1.1"]
    assert len(out.input_files) == 0  # the client fills them from `files`
    assert out.cmd == "" and len(out.output_files) == 0
    assert files == [LocalFile(tmp_path / "newdir", str(tmp_path / "newdir"), "DATA", True)]
    assert base.SerializeToString() == before  # base untouched

    out, files = fork_overrides(vars={"DATA": tmp_path / "new.csv"}, base=base)
    assert files == [LocalFile(tmp_path / "new.csv", str(tmp_path / "new.csv"), "DATA", False)]
    assert out == jobs_pb2.JobParameters()


def test_fork_overrides_nothing(tmp_path: Path) -> None:
    out, files = fork_overrides(base=base_params())
    assert out == jobs_pb2.JobParameters() and files == []


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"vars": {"NOPE": Path("x")}},
            "--var NOPE: the job has no input variable 'NOPE' (its input vars: DATA)",
        ),
        (
            {"vars": {"DATA": Path("/nonexistent/file")}},
            "--var DATA: no such file or directory: '/nonexistent/file'",
        ),
        ({"args": {"M": "1"}}, "--arg M: the job has no argument 'M' (its arguments: N)"),
        ({"env_vars": {"1X": "1"}}, "--env-var 1X: bad environment variable name '1X'"),
        ({"instance_type": "x1.1"}, "--cloud-instance-type: unknown instance type 'x1.1'"),
    ],
)
def test_fork_overrides_errors(kw: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        fork_overrides(base=base_params(), **kw)  # type: ignore[arg-type]
    assert str(exc.value).startswith(expected), str(exc.value)
