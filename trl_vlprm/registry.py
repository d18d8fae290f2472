"""One registry for every "pick it by name" place: strategies, aggregations, benchmarks, converters, grader kinds...

Modelled on lm-evaluation-harness' `Registry`: entries are registered by a decorator at their definition site (or
lazily as `"module:attribute"` strings, so naming an entry does not import its heavy dependencies), and an unknown
name fails with the list of what is available. The failure is an `UnknownNameError`, both a `KeyError` (a failed
lookup) and a `ValueError` (a bad setting, which is how a config's `__post_init__` reports it).

    >>> AGGREGATIONS = Registry("aggregation")
    >>> @AGGREGATIONS.register("min")
    ... def min_score(scores): return min(scores)
    >>> AGGREGATIONS.get("min")([0.3, 0.9])
    0.3
    >>> AGGREGATIONS.get("mni")
    Traceback (most recent call last):
    ...
    trl_vlprm.registry.UnknownNameError: unknown aggregation 'mni'; available: min
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import import_module
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Names -> objects of one kind, filled by `@registry.register(name)` or `registry.register_lazy(name, path)`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, *aliases: str, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator: registers the decorated object under `name` (and `aliases`) and returns it unchanged.

        A name already taken by another object is an error unless `overwrite` is set (to replace a built-in entry).
        """

        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                self._add(key, obj, overwrite)
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Registers `"package.module:attribute"`, imported on the first `get(name)`."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} {name!r} must be 'module:attribute', got {target!r}")
        self._add(name, target)

    def _add(self, name: str, obj: T | str, overwrite: bool = False) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not obj and not overwrite:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({existing!r}); pass overwrite=True to replace it"
            )
        self._entries[name] = obj

    def unregister(self, name: str) -> T | str:
        """Removes `name` and returns what it held (for a test or a plugin that registers an entry for a while)."""
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries.pop(name)

    pop = unregister  # the dict spelling, for code written when a registry was a plain dict

    def unknown(self, name: object, context: str | None = None) -> UnknownNameError:
        """The error for a name nothing is registered under, listing the available names (after `context: `)."""
        message = f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
        return UnknownNameError(f"{context}: {message}" if context else message)

    def check(self, name: str, setting: str) -> str:
        """`name` when it is registered, else `UnknownNameError` naming the setting that holds it: a config's
        `__post_init__` calls `RULES.check(self.rule, "LabelConfig.rule")`."""
        if name not in self:
            raise self.unknown(name, f"{setting}={name!r}")
        return name

    def get(self, name: str, context: str | None = None) -> T:
        """The object registered as `name`; an unknown name raises `UnknownNameError` listing the available ones,
        its message prefixed with `context` (e.g. the spec the name was read from) when given."""
        try:
            entry = self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name (a list from a YAML file) is unknown too
            raise self.unknown(name, context) from None
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(import_module(module), attribute)
        return entry

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
