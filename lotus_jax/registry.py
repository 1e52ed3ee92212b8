"""Name -> object tables for everything a config selects by name (methods, models, data sources, forget
modes, optimizers), each with one validation point and the same one-line error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lotus_jax.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered table of named entries; `get` of an unknown name raises a `ConfigError` listing the valid ones.

    Registration order is kept: it is the default order where a config means "all of them".
    """

    def __init__(self, what: str, error: type[ConfigError] = ConfigError) -> None:
        self.what = what
        self.error = error  # the ConfigError subclass raised for an unknown name (e.g. DataError)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """`registry.register("x", obj)`, or `@registry.register("x")` as a decorator."""
        if entry is not None:
            self._add(name, entry)
            return entry

        def deco(obj: T) -> T:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(f"unknown {self.what} {name!r}; valid: {', '.join(self._entries)}")
        return self._entries[name]

    def check(self, name: str) -> str:
        """`name` itself when registered, else the one-line error."""
        self.get(name)
        return name

    def parse_list(self, text: str) -> list[str]:
        """A comma-separated list of registered names (at least one), each checked."""
        items = [s.strip() for s in str(text).split(",") if s.strip()]
        bad = [s for s in items if s not in self._entries]
        if bad or not items:
            raise self.error(f"unknown {self.what} {', '.join(map(repr, bad)) or '(none given)'}; "
                              f"valid: {', '.join(self._entries)}")
        return items

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()
