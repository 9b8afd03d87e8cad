"""Method options: each distiller declares its options as a dataclass with defaults and rules.

`resolve_options(method, values)` turns a (possibly partial) mapping from a config's `distill:`
section or from keyword arguments into the method's options object: every option present, with
its default where it was not given, each value checked against its rules. An unknown name is a
ConfigError naming the closest valid one; a deprecated name (listed in the class's `ALIASES`) is
renamed, with a FamkdDeprecationWarning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from famkd.errors import ConfigError, FamkdDeprecationWarning
from famkd.registry import closest
from famkd.settings import check_value, field_types

OptionsT = TypeVar("OptionsT", bound="DistillOptions")


@dataclasses.dataclass
class DistillOptions:
    """Base of every method's options. ALIASES maps an old option name to its current one."""

    ALIASES: ClassVar[dict[str, str]] = {}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_options(options_class: type[OptionsT], values: Mapping[str, Any], method: str) -> OptionsT:
    """The `options_class` instance for `values` (names checked, aliases renamed, values checked)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"distill must be a mapping of option names to values, got {values!r}")
    types = field_types(options_class)
    rules = {f.name: f.metadata for f in dataclasses.fields(options_class)}
    renamed = _rename_aliases(options_class, dict(values), method)
    checked = {}
    for name, value in renamed.items():
        if name not in types:
            raise ConfigError(_unknown_option_message(options_class, name, method))
        checked[name] = check_value(f"distill.{name}", value, types[name], rules[name])
    return options_class(**checked)


def _rename_aliases(options_class: type[DistillOptions], values: dict[str, Any], method: str) -> dict[str, Any]:
    for old, new in options_class.ALIASES.items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(
                f"distill.{old} and distill.{new} are both set for method {method!r}: {old} is the old name of "
                f"{new}; keep only distill.{new}"
            )
        warnings.warn(
            f"distill.{old} is deprecated for method {method!r}; use distill.{new} (the same setting)",
            FamkdDeprecationWarning,
            stacklevel=4,
        )
        values[new] = values.pop(old)
    return values


def _unknown_option_message(options_class: type[DistillOptions], name: str, method: str) -> str:
    valid = [f.name for f in dataclasses.fields(options_class)]
    near = closest(name, valid + list(options_class.ALIASES))
    near = options_class.ALIASES.get(near, near) if near else None
    hint = f" (did you mean 'distill.{near}'?)" if near else ""
    listed = ", ".join(valid) if valid else "none"
    return f"unknown option 'distill.{name}' for method {method!r}{hint}; its options: {listed}"
