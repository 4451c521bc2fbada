"""The settings file: typed, checked defaults; unknown keys refused; a hand-edited bad value named."""

from __future__ import annotations

import json
import math
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_ds_jobs.common.contract import INSTANCE_TYPES
from jupyter_ds_jobs.common.errors import InvalidArgument
from jupyter_ds_jobs.core.config import Defaults, Settings


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cfg" / "ds_jobs.json"


def test_values_are_converted_when_set_and_stored_typed(path: Path) -> None:
    Settings.update_file(
        {
            "project": "p1",
            "defaults.instance_type": "g1.1",
            "defaults.requirements": "NONE",
            "defaults.python": "3.12",
            "defaults.graceful_timeout": "30",
            "defaults.data_ttl_days": "14",
        },
        path,
    )
    d = Settings.load_file(path).defaults
    assert d == Defaults("g1.1", "none", "3.12", 30.0, 14.0)
    assert isinstance(d.graceful_timeout, float)
    assert d.data_ttl == timedelta(days=14) and not d.keep_data_forever
    on_disk = json.loads(path.read_text())
    assert on_disk["defaults"]["graceful_timeout"] == 30.0  # a number, not "30"
    assert on_disk["project"] == "p1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_data_ttl_forever(path: Path) -> None:
    Settings.update_file({"defaults.data_ttl_days": "Infinity"}, path)
    d = Settings.load_file(path).defaults
    assert d.data_ttl_days == math.inf and d.keep_data_forever and d.data_ttl is None
    assert json.loads(path.read_text())["defaults"]["data_ttl_days"] == "infinity"  # valid JSON
    assert Defaults().data_ttl is None and not Defaults().keep_data_forever


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("defaults.graceful_timeout", "soon", "a number of seconds >= 0, got 'soon'"),
        ("defaults.graceful_timeout", "-1", "a number of seconds >= 0"),
        ("defaults.graceful_timeout", "nan", "a number of seconds >= 0"),
        ("defaults.data_ttl_days", "-2", r"a number of days >= 0 or 'infinity'"),
        ("defaults.instance_type", "z9.9", "expected one of c1.4, c1.8"),
        ("defaults.python", "3", "MAJOR.MINOR"),
        ("defaults.python", "three.twelve", "MAJOR.MINOR"),
    ],
)
def test_bad_values_are_refused_naming_the_key_and_nothing_is_saved(
    path: Path, key: str, value: str, message: str
) -> None:
    Settings.update_file({"defaults.graceful_timeout": "5"}, path)
    before = path.read_text()
    with pytest.raises(InvalidArgument, match=rf"^{key}: .*{message}") as info:
        Settings.update_file({"project": "changed", key: value}, path)
    assert info.value.field == key
    assert path.read_text() == before  # all or nothing


@pytest.mark.parametrize("key", ["defaults.colour", "colour", "default.instance_type"])
def test_unknown_keys_are_refused_with_the_known_ones(path: Path, key: str) -> None:
    with pytest.raises(InvalidArgument, match=f"unknown setting '{key}'") as info:
        Settings.update_file({key: "x"}, path)
    known = str(info.value).split("known: ")[1]
    assert known.split(", ") == [
        "endpoint", "project", "token", "operation_endpoint", "auth", "yc_profile", "iam_endpoint", "ca_file",
        *(f"defaults.{n}" for n in ("instance_type", "requirements", "python", "graceful_timeout", "data_ttl_days")),
    ]  # fmt: skip
    assert not path.exists()


def test_an_empty_value_unsets(path: Path) -> None:
    Settings.update_file({"project": "p", "token": "t", "defaults.graceful_timeout": "3"}, path)
    Settings.update_file({"project": "", "token": "", "defaults.graceful_timeout": ""}, path)
    s = Settings.load_file(path)
    assert (s.project, s.token, s.defaults) == ("", None, Defaults())
    assert json.loads(path.read_text())["defaults"] == {}


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"defaults": {"graceful_timeout": "soon"}}, "defaults.graceful_timeout", "got 'soon'"),
        ({"defaults": {"graceful_timeout": True}}, "defaults.graceful_timeout", "got True"),
        ({"defaults": {"python": 3.1}}, "defaults.python", "MAJOR.MINOR as a string"),
        ({"defaults": {"cloud_instance_type": "big"}}, "defaults.cloud_instance_type", "expected one of"),
        ({"project": 5}, "project", "expected a string"),
    ],
)
def test_a_hand_edited_bad_value_names_the_key_and_the_file(
    path: Path, data: object, field: str, message: str
) -> None:
    _write(path, data)
    with pytest.raises(InvalidArgument, match=f"^{field}: .*{message}") as info:
        Settings.load_file(path)
    assert str(path) in str(info.value) and info.value.field == field


def test_unknown_keys_in_the_file_are_refused_with_the_known_ones(path: Path) -> None:
    _write(path, {"defaults": {"colour": "red"}})
    with pytest.raises(InvalidArgument, match=r"unknown key\(s\) defaults.colour; known: .*defaults.python"):
        Settings.load_file(path)
    _write(path, {"colour": "red"})
    with pytest.raises(InvalidArgument, match=r"unknown key\(s\) colour; known: endpoint"):
        Settings.load_file(path)


def test_setting_a_bad_key_repairs_the_file(path: Path) -> None:
    _write(path, {"defaults": {"graceful_timeout": "soon", "python": "3.11"}})
    Settings.update_file({"defaults.graceful_timeout": "7"}, path)
    assert Settings.load_file(path).defaults == Defaults(python="3.11", graceful_timeout=7.0)


def test_the_old_instance_type_name_is_read_and_migrated(path: Path) -> None:
    _write(path, {"defaults": {"cloud_instance_type": "c1.8", "data_ttl_days": 14}})
    assert Settings.load_file(path).defaults == Defaults(instance_type="c1.8", data_ttl_days=14.0)
    _write(path, {"defaults": {"cloud_instance_type": "c1.8", "instance_type": "g1.1"}})
    assert Settings.load_file(path).defaults.instance_type == "g1.1"  # the new name wins
    Settings.update_file({"defaults.instance_type": ""}, path)  # unsetting removes the old name too
    assert Settings.load_file(path).defaults.instance_type is None
    _write(path, {"defaults": {"cloud_instance_type": "c1.8"}})
    Settings.update_file({"project": "p"}, path)
    assert json.loads(path.read_text())["defaults"] == {"instance_type": "c1.8"}


def test_known_defaults_cover_the_contract_and_are_shown_typed(path: Path) -> None:
    assert list(Defaults.known()) == [
        "instance_type",
        "requirements",
        "python",
        "graceful_timeout",
        "data_ttl_days",
    ]
    for name in INSTANCE_TYPES:
        assert Defaults.check("instance_type", name) == name
    Settings.update_file({"token": "secret", "defaults.graceful_timeout": "30"}, path)
    shown = dict(Settings.load(path, env={}).shown())
    assert shown["token"] == "***" and shown["defaults.graceful_timeout"] == "30.0"
    assert shown["defaults.python"] == "(not set)" and shown["endpoint"] == "(not set)"
