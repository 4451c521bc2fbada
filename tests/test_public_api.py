"""Every module of the package declares its public names: ``__all__``, sorted, all defined."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import jupyter_ds_jobs

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(jupyter_ds_jobs.__path__, "jupyter_ds_jobs.")
    if "._proto." not in m.name
    and not m.name.endswith(("__main__", "_zygote_main", "_ray_wrapper", "._version"))
)


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_defined(name: str) -> None:
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
        assert name.endswith(("__init__",)) or module.__file__.endswith("__init__.py"), (
            f"{name} has no __all__"
        )
        return
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_key), f"{name}.__all__ is not sorted"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names undefined {missing}"
