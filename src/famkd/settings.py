"""Validated settings: dataclass fields that carry their rules, and the checks that apply them.

The experiment config (famkd.config) and every distillation method's options
(famkd.distill) are dataclasses whose fields are declared with `setting(...)`. A value read
from YAML or the command line is checked against the field's type and rules by `check_value`,
which raises a ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

from famkd.errors import ConfigError
from famkd.registry import closest


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    above: float | None = None,
) -> Any:
    """A dataclass field with validation rules: allowed `choices`, an inclusive `minimum`, or a
    lower bound it must lie strictly `above`."""
    metadata = {"choices": choices, "minimum": minimum, "above": above}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_types(cls: Any) -> dict[str, Any]:
    """Field name -> resolved type annotation of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_dataclass_type(obj: Any) -> bool:
    return isinstance(obj, type) and dataclasses.is_dataclass(obj)


def check_value(key: str, value: Any, expected: Any, rules: Any) -> Any:
    """`value` converted to `expected` (int -> float only), or ConfigError saying what was wrong."""
    choices = rules.get("choices") if rules else None
    if value is False and choices is not None and "off" in choices:
        value = "off"  # YAML 1.1 reads an unquoted `amp: off` as false
    checked = _coerce(key, value, expected)
    if choices is not None and checked not in choices:
        hint = closest(str(checked), choices)
        suggestion = f" (did you mean {hint!r}?)" if hint else ""
        raise ConfigError(f"{key}={checked!r} is not allowed{suggestion}; choose one of: {', '.join(choices)}")
    minimum = rules.get("minimum") if rules else None
    if minimum is not None and checked < minimum:
        raise ConfigError(f"{key}={checked!r} is too small: it must be >= {minimum}")
    above = rules.get("above") if rules else None
    if above is not None and checked <= above:
        raise ConfigError(f"{key}={checked!r} is too small: it must be > {above}")
    return checked


def _coerce(key: str, value: Any, expected: Any) -> Any:
    def wrong(what: str) -> ConfigError:
        return ConfigError(f"{key} must be {what}, got {value!r} ({type(value).__name__})")

    if expected is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise wrong("a string (quote it in YAML)")
        return value
    if expected is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise wrong("a mapping with string keys")
        return copy.deepcopy(value)
    if typing.get_origin(expected) is list and typing.get_args(expected) == (int,):
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise wrong("a list of integers, e.g. [150, 180, 210]")
        return list(value)
    raise TypeError(f"setting {key} has an unsupported type {expected!r}")
