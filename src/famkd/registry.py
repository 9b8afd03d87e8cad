"""Name -> builder registries with helpful errors, shared by models and distillers."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


# Words that mean a choice without looking like it; used only when the meant choice is offered.
SYNONYMS = {
    "gpu": "cuda",
    "gpus": "cuda",
    "nvidia": "cuda",
    "half": "fp16",
    "float16": "fp16",
    "bfloat16": "bf16",
    "fp32": "off",
    "float32": "off",
    "none": "off",
}
_TRAILING_NUMBER = re.compile(r"(.*?)(\d+)")


def closest(name: str, choices) -> str | None:
    """The valid choice nearest to a mistyped `name`, or None when nothing is close.

    By meaning first: a synonym of a choice ("gpu" -> "cuda"); then, for a name ending in a number, the
    choice of the same stem with the nearest number ("resnet21" -> "resnet20", ties to the smaller);
    else the nearest spelling (difflib)."""
    choices = list(choices)
    meant = SYNONYMS.get(name.lower())
    if meant in choices:
        return meant
    numbered = _TRAILING_NUMBER.fullmatch(name)
    if numbered and numbered.group(1):
        stem, number = numbered.group(1), int(numbered.group(2))
        family = []
        for choice in choices:
            other = _TRAILING_NUMBER.fullmatch(choice)
            if other and other.group(1) == stem:
                family.append((abs(int(other.group(2)) - number), int(other.group(2)), choice))
        if family:
            return min(family)[2]
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
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

    def names(self, sort: bool = True) -> list[str]:
        """The registered names, sorted, or in the order they were registered."""
        return sorted(self._builders) if sort else list(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
