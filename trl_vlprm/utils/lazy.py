"""Lazy package exports: `from trl_vlprm.guidance import PRMScorer` without importing torch for `trl_vlprm.data`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` that imports `exports[name]` (a submodule) on first access.

    Example, in a package `__init__`: `__getattr__ = lazy_getattr(__name__, {"PRMScorer": ".scorer"})`. A name not
    in `exports` raises the usual `AttributeError`.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name], package), name)

    return __getattr__
