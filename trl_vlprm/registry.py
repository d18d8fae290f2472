"""`Registry`: names -> objects of one kind, for every "pick it by name" setting (strategies, aggregations, benchmarks,
converters, backends, model families...).

Modelled on lm-evaluation-harness' `Registry`: entries are registered by a decorator at their definition site (or
lazily as `"module:attribute"` strings, so naming an entry does not import its heavy dependencies), and an unknown
name fails with the list of what is available and the close names ("did you mean"). The failure is an
`UnknownNameError`, both a `KeyError` (a failed lookup) and a `ValueError` (a bad setting, which is how a config's
`__post_init__` reports it).

A registry given `base` refuses entries that are not subclasses (for classes) or instances of it. A registry given
`discover` (a package name) imports every module of that package before its first lookup, so a new entry is one
file in that package that registers itself.

    >>> AGGREGATIONS = Registry("aggregation")
    >>> @AGGREGATIONS.register("min")
    ... def min_score(scores): return min(scores)
    >>> AGGREGATIONS.get("min")([0.3, 0.9])
    0.3
    >>> AGGREGATIONS.get("mni")
    Traceback (most recent call last):
    ...
    trl_vlprm.registry.UnknownNameError: unknown aggregation 'mni'; available: min; did you mean 'min'?
"""

from __future__ import annotations

import difflib
import pkgutil
from collections.abc import Callable, Iterator
from importlib import import_module
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has; the message lists the available ones."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Names -> objects of one kind, filled by `@registry.register(name)` or `registry.register_lazy(name, path)`.

    Args:
        kind: what an entry is, for messages ("unknown aggregation 'x'").
        base: when given, every entry must be a subclass of it (entries that are classes) or an instance of it.
        discover: a package whose modules are all imported before the first lookup, so that each registers its
            entries (e.g. `"trl_vlprm.guidance.backends"`).
    """

    def __init__(self, kind: str, base: type | None = None, discover: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.discover = discover
        self._discovered = discover is None
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
        if not isinstance(obj, str):
            self._check_base(name, obj)
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

    def _check_base(self, name: str, obj: object) -> None:
        if self.base is None:
            return
        fits = issubclass(obj, self.base) if isinstance(obj, type) else isinstance(obj, self.base)
        if not fits:
            raise TypeError(f"{self.kind} {name!r}: {obj!r} is not a {self.base.__name__}")

    def discover_entries(self) -> None:
        """Import every module of the `discover` package now (the first lookup does it too), for code that reads
        what the modules register beside the registry."""
        if self._discovered:
            return
        package = import_module(self.discover)
        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            import_module(f"{self.discover}.{module.name}")
        self._discovered = True  # only once every module registered: a failed import is raised again next time

    def unknown(self, name: object, context: str | None = None) -> UnknownNameError:
        """The error for a name nothing is registered under, listing the available names and the close ones (after
        `context: `)."""
        names = self.names()
        message = f"unknown {self.kind} {name!r}; available: {', '.join(names)}"
        close = difflib.get_close_matches(str(name), names, n=3) if isinstance(name, str) else []
        if close:
            message += f"; did you mean {' or '.join(map(repr, close))}?"
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
        self.discover_entries()
        try:
            entry = self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name (a list from a YAML file) is unknown too
            raise self.unknown(name, context) from None
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(import_module(module), attribute)
            self._check_base(name, entry)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self.discover_entries()
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.discover_entries()
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover_entries()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
