"""Static import analysis: local modules found transitively, real installed pins, stdlib skipped."""

from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path

import pytest

from jupyter_ds_jobs.common.errors import InvalidArgument, NotFound
from jupyter_ds_jobs.packaging.analysis import (
    ImportRef,
    analyze_script,
    analyze_source,
    find_imports,
    format_requirements,
    requirements_for_modules,
)


def pin(dist: str) -> str:
    meta = importlib.metadata.distribution(dist)
    return f"{meta.metadata['Name']}=={meta.version}"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A realistic project: a package with relative imports and submodules, helper modules."""
    root = tmp_path / "proj"
    write(
        root,
        {
            "main.py": """
                import json
                import os.path
                import yaml
                from mypkg import core
                import helpers

                def run():
                    import grpc  # imported inside a function
                    return grpc, core.go()

                try:
                    import definitely_missing_mod_xyz
                except ImportError:
                    definitely_missing_mod_xyz = None
            """,
            "mypkg/__init__.py": "from .core import go\n",
            "mypkg/core.py": """
                from . import util
                from .sub.deep import thing
                from ..outside import nope  # beyond the top package: ignored
                def go():
                    return util.x + thing
            """,
            "mypkg/util.py": "import collections\nx = 1\n",
            "mypkg/sub/__init__.py": "",
            "mypkg/sub/deep.py": "import other_local\nthing = other_local.VALUE\n",
            "mypkg/unused.py": "import never_imported_anywhere\n",
            "other_local.py": "import importlib\nmod = importlib.import_module('dyn_local')\nVALUE = 2\n",
            "dyn_local.py": "x = __import__('dunder_local')\n",
            "dunder_local.py": "",
            "helpers.py": "import csv\n",
            "notused.py": "import also_never_imported\n",
            "data/readme.txt": "not a module",
        },
    )
    return root


def test_script_local_modules_transitive(project: Path) -> None:
    result = analyze_script(project / "main.py")
    assert result.local_modules == sorted(
        [
            project / "dunder_local.py",
            project / "dyn_local.py",
            project / "helpers.py",
            project / "mypkg",
            project / "other_local.py",
        ]
    )
    assert project / "main.py" not in result.local_modules


def test_script_requirements_pinned_with_installed_versions(project: Path) -> None:
    result = analyze_script(project / "main.py")
    assert result.requirements == sorted([pin("PyYAML"), pin("grpcio")], key=str.lower)
    assert all("==" in r for r in result.requirements)
    assert not any(r.lower().startswith(("json", "os", "collections", "csv")) for r in result.requirements)
    # imported only by a module nobody imports: not there
    assert result.unresolved == ["definitely_missing_mod_xyz"]


def test_unreached_package_module_not_analyzed(project: Path) -> None:
    (project / "mypkg" / "unused.py").write_text("import yet_another_missing\n")
    result = analyze_script(project / "main.py")
    assert "yet_another_missing" not in result.unresolved


def test_root_differs_from_script_dir(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "scripts/run.py": "import shared\nimport nextdoor\n",
            "shared/__init__.py": "",
            "scripts/nextdoor.py": "",
        },
    )
    result = analyze_script(tmp_path / "scripts" / "run.py", root=tmp_path)
    assert result.local_modules == [tmp_path / "scripts" / "nextdoor.py", tmp_path / "shared"]


def test_local_shadows_installed_and_stdlib(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.py": "import yaml\nimport csv\nimport sys\n",
            "yaml.py": "",  # local file shadows PyYAML
            "csv/__init__.py": "",  # local package shadows the stdlib module
            "sys.py": "",  # a built-in module can never be shadowed
        },
    )
    result = analyze_script(tmp_path / "main.py")
    assert result.local_modules == [tmp_path / "csv", tmp_path / "yaml.py"]
    assert result.requirements == []
    assert result.unresolved == []


def test_namespace_dir_local_only_when_nothing_installed(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.py": "import nsdir.mod\nimport grpc\n",
            "nsdir/mod.py": "import nsdir.other\n",
            "nsdir/other.py": "import yaml\n",
            "grpc/notes.txt": "a plain folder named like an installed package",
        },
    )
    result = analyze_script(tmp_path / "main.py")
    assert result.local_modules == [tmp_path / "nsdir"]
    assert result.requirements == sorted([pin("grpcio"), pin("PyYAML")], key=str.lower)


def test_entry_imported_by_module_not_shipped(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": "import helper\n", "helper.py": "import main\n"})
    assert analyze_script(tmp_path / "main.py").local_modules == [tmp_path / "helper.py"]


def test_type_checking_imports_skipped(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    import only_for_types_xyz
                else:
                    import yaml
            """,
        },
    )
    result = analyze_script(tmp_path / "main.py")
    assert result.unresolved == []
    assert result.requirements == [pin("PyYAML")]


def test_syntax_error_in_local_module_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": "import broken\n", "broken.py": "x = 1\ndef (:\n"})
    with pytest.raises(InvalidArgument, match=r"broken\.py, line 2"):
        analyze_script(tmp_path / "main.py")


def test_missing_entry(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"nope\.py"):
        analyze_script(tmp_path / "nope.py")


def test_own_package_pinned_only_when_imported(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": "import yaml\n", "b.py": "import jupyter_ds_jobs.common.errors\n"})
    assert not any(r.startswith("jupyter") for r in analyze_script(tmp_path / "a.py").requirements)
    assert analyze_script(tmp_path / "b.py").requirements == [pin("jupyter_ds_jobs")]


def test_installed_package_living_in_search_dir_is_local() -> None:
    # jupyter_ds_jobs is installed editable from the repository: seen from the repository it is local
    repo = Path(__file__).resolve().parent.parent
    result = analyze_source("import jupyter_ds_jobs\nimport yaml\n", [repo])
    assert result.local_modules == [repo / "jupyter_ds_jobs"]
    assert pin("PyYAML") in result.requirements
    assert not any(r.lower().startswith(("jupyter_ds_jobs", "jupyter-ds-jobs")) for r in result.requirements)
    reqs, unresolved = requirements_for_modules(["jupyter_ds_jobs"], search_path=[repo])
    assert (reqs, unresolved) == ([], [])


def test_requirements_for_modules_import_name_differs() -> None:
    reqs, unresolved = requirements_for_modules(
        ["yaml", "grpc", "google.protobuf.json_format", "json", "os.path", "no_such_mod_abc", "__main__"]
    )
    assert reqs == sorted([pin("PyYAML"), pin("grpcio"), pin("protobuf")], key=str.lower)
    assert unresolved == ["no_such_mod_abc"]


def test_namespace_package_shared_by_dists_picks_owner() -> None:
    dists = importlib.metadata.packages_distributions()["google"]
    assert len(set(dists)) > 1  # protobuf and googleapis-common-protos share "google"
    reqs, _ = requirements_for_modules(["google.protobuf"])
    assert reqs == [pin("protobuf")]
    reqs, _ = requirements_for_modules(["google.rpc.status_pb2"])
    assert reqs == [pin("googleapis-common-protos")]


def test_analyze_source_cell_with_magics_and_extra_modules(tmp_path: Path) -> None:
    write(tmp_path, {"nb_helpers.py": "import yaml\n", "pickled_mod/__init__.py": "import grpc\n"})
    source = "!pip install something\n%matplotlib inline\nimport nb_helpers\nimport json\nx = nb_helpers\n"
    result = analyze_source(source, [tmp_path], extra_modules=["pickled_mod", "__main__", "builtins"])
    assert result.local_modules == [tmp_path / "nb_helpers.py", tmp_path / "pickled_mod"]
    assert result.requirements == sorted([pin("PyYAML"), pin("grpcio")], key=str.lower)
    assert result.unresolved == []


def test_analyze_source_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="line 2"):
        analyze_source("x = 1\nif x\n", [tmp_path])


def test_find_imports_forms() -> None:
    import ast

    tree = ast.parse(
        textwrap.dedent(
            """
            import a.b as ab, c
            from .rel import x, y
            from .. import z
            def f():
                from d import *
            importlib.import_module("e.f")
            import_module(".g", package="pkg")
            importlib.import_module(name_not_literal)
            __import__("h")
            """
        )
    )
    assert find_imports(tree) == [
        ImportRef("a.b", 0, (), 2),
        ImportRef("c", 0, (), 2),
        ImportRef("rel", 1, ("x", "y"), 3),
        ImportRef("", 2, ("z",), 4),
        ImportRef("d", 0, ("*",), 6),
        ImportRef("e.f", 0, (), 7),
        ImportRef("pkg.g", 0, (), 8),
        ImportRef("h", 0, (), 10),
    ]


def test_format_requirements() -> None:
    assert format_requirements(["A==1", "b==2"]) == "A==1\nb==2\n"
    assert format_requirements([]) == ""
