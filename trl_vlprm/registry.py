"""One registry for every "pick it by name" place: strategies, aggregations, benchmarks, converters, grader kinds...

Modelled on lm-evaluation-harness' `Registry`: entries are registered by a decorator at their definition site (or
lazily as `"module:attribute"` strings, so naming an entry does not import its heavy dependencies), and an unknown
name fails with the list of what is available.

    >>> AGGREGATIONS = Registry("aggregation")
    >>> @AGGREGATIONS.register("min")
    ... def min_score(scores): return min(scores)
    >>> AGGREGATIONS.get("min")([0.3, 0.9])
    0.3
    >>> AGGREGATIONS.get("mni")
    Traceback (most recent call last):
    ...
    KeyError: "unknown aggregation 'mni'; available: min"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import import_module
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind, filled by `@registry.register(name)` or `registry.register_lazy(name, path)`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: registers the decorated object under `name` (and `aliases`) and returns it unchanged."""

        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                self._add(key, obj)
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Registers `"package.module:attribute"`, imported on the first `get(name)`."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} {name!r} must be 'module:attribute', got {target!r}")
        self._add(name, target)

    def _add(self, name: str, obj: T | str) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered ({existing!r})")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """The object registered as `name`; an unknown name raises `KeyError` listing the available ones."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}") from None
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(import_module(module), attribute)
        return entry

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
