"""Name -> builder registries with helpful errors, shared by models and distillers."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def closest(name: str, choices) -> str | None:
    """The valid choice nearest to a mistyped `name`, or None when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


class Registry(Generic[T]):
    """A decorator registry: `@registry.register("name")` on a builder (T: the builders' type)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(builder: T) -> T:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._builders[name]
        except KeyError:
            hint = closest(name, self._builders)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{suggestion}. Available: {', '.join(sorted(self._builders))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
