"""Validated settings: dataclass fields that carry their rules, and the YAML/override machinery that loads them.

A config (famkd.config's classification `Config`, famkd.detection.config's `DetectionConfig`) is a root
dataclass of sections; each field is declared with `setting(...)` and checked by `check_value`, which
raises a ConfigError naming the key, the value and what is allowed. The same machinery loads every root:

- `load_settings(Root, path, overrides)`: the defaults, then the YAML file at `path` (which may name a
  parent file with a top-level `base: other.yaml`, relative to it), then `key.sub=value` overrides, each
  value parsed as YAML. An unknown key is a ConfigError naming the nearest valid one.
- A section whose class defines `variant_for(values) -> class` takes the class it names for its values:
  `data:` is the options class of the dataset `data.dataset` names (famkd.data.registry), so that each
  dataset declares its own fields.
- The root's `distill:` section is free-form here; the root fills it with its method's options.

Numbers that YAML 1.1 reads as strings (`5e-4`, `1.0e9`) are accepted where a number is expected, and a
string field keeps the override's text verbatim (a hex sha256 or `007` is not a number). Fields declared
with `path=True` hold file or folder paths: `absolute_paths` resolves them when a run starts, so that a run
folder's config names the same files from any working directory.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from famkd.errors import ConfigError
from famkd.registry import closest

T = TypeVar("T")

FREE_FORM_SECTIONS = ("distill",)
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    path: bool | tuple[str, ...] = False,
) -> Any:
    """A dataclass field with validation rules: allowed `choices`, an inclusive `minimum`, a lower bound it
    must lie strictly `above`; `path`: the value is a file or folder path (see `absolute_paths`), or one of the
    words `path` lists."""
    metadata = {"choices": choices, "minimum": minimum, "above": above, "path": path}
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
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 5e-4 and 1.0e9 as strings
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
    if typing.get_origin(expected) is list and typing.get_args(expected) == (str,):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong('a list of strings, e.g. ["layer1", "layer2"]')
        return list(value)
    raise TypeError(f"setting {key} has an unsupported type {expected!r}")


def section_class(cls: Any, values: dict | None) -> Any:
    """The class of a section holding `values`: `cls`, or the variant `cls.variant_for(values)` names."""
    pick = getattr(cls, "variant_for", None)
    return pick(values if isinstance(values, dict) else {}) if pick is not None else cls


# ---- loading ------------------------------------------------------------------------------------------


def settings_to_dict(settings: Any) -> dict:
    """A plain nested dict of `settings` (a deep copy), the inverse of `settings_from_dict`."""
    return dataclasses.asdict(settings)


def declared_defaults(cls: Any) -> dict:
    """A plain nested dict of the defaults dataclass `cls` declares: unlike `settings_to_dict(cls())`, never a value
    its `__post_init__` resolves (e.g. a size whose default 0 means "derived from another setting"), so that the
    setting it derives from, given in a config, still counts."""
    values = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        values[f.name] = settings_to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return values


class _SettingsDumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line: `lr_milestones: [150, 180, 210]`."""


_SettingsDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def dump_settings(settings: Any) -> str:
    """`settings` as YAML, in declaration order (for --print-config and run folders)."""
    return yaml.dump(settings_to_dict(settings), Dumper=_SettingsDumper, sort_keys=False, default_flow_style=False)


def load_settings(root: type[T], path: str | Path | None, overrides: Iterable[str] = ()) -> T:
    """`root`'s defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    values = read_yaml_chain(Path(path), seen=()) if path is not None else {}
    return settings_with_overrides(root, values, overrides)


def settings_with_overrides(root: type[T], values: dict, overrides: Iterable[str] = ()) -> T:
    """`root` from nested `values` with `key.sub=value` overrides applied."""
    values = copy.deepcopy(values)
    parsed = [(parse_override(text), _string_override(text)) for text in overrides]
    for (key, value), _ in parsed:  # first without checks, so that a section's variant follows its overrides
        _assign_dotted(values, key.split("."), value)
    defaults = settings_to_dict(root())
    for (key, value), raw_text in parsed:
        field = _check_dotted_key(root, key, defaults, values)
        if field is str and value is not None and not isinstance(value, (str, list, dict)):
            _assign_dotted(values, key.split("."), raw_text)
    return settings_from_dict(root, values)


def settings_from_dict(root: type[T], values: dict) -> T:
    """A validated `root` from a (possibly partial) nested dict; missing keys keep their defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    merged = declared_defaults(root)
    for section in FREE_FORM_SECTIONS:
        merged[section] = {}  # the defaults' options belong to the default method; the method's own apply
    _merge_into(root, merged, values, root, prefix="")
    return _build(root, merged, prefix="")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.sub=value` into the dotted key and its value parsed as YAML ("" stays "")."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.sub=value, e.g. train.epochs=2")
    if raw.strip() == "":
        return key, ""
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err})") from None


def flat_settings(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"train.epochs": 240, "distill.hpf": "ideal", ...}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_differences(wanted: dict, found: dict, ignored: Iterable[str] = ()) -> str:
    """ "key=<found> there, <wanted> here; ..." for the first keys whose values differ ("" when none do)."""
    wanted, found = flat_settings(wanted), flat_settings(found)
    keys = sorted((wanted.keys() | found.keys()) - set(ignored))
    differing = [key for key in keys if wanted.get(key) != found.get(key)]
    return "; ".join(f"{key}={found.get(key)!r} there, {wanted.get(key)!r} here" for key in differing[:5])


def valid_keys(root: type) -> list[str]:
    """Every settable dotted key of `root`, e.g. "train.epochs" (the free-form `distill` section as one key)."""
    return _leaf_keys(settings_to_dict(root()), root, prefix="")


def absolute_paths(settings: Any, base: Path | None = None) -> None:
    """Make every `path=True` field of `settings` (nested) absolute, relative to `base` (the working directory).

    Empty values and values that are not paths (`torchvision:<entry>`, or a word the field lists, such as
    `imagenet` or `none`) are kept."""
    base = Path.cwd() if base is None else base
    for f in dataclasses.fields(settings):
        value, kind = getattr(settings, f.name), f.metadata.get("path")
        if dataclasses.is_dataclass(value):
            absolute_paths(value, base)
        elif (
            kind
            and isinstance(value, str)
            and value
            and ":" not in value
            and not (isinstance(kind, tuple) and value in kind)
        ):
            setattr(settings, f.name, str((base / Path(value).expanduser()).resolve()))


def _string_override(text: str) -> str:
    """The raw text right of '=': a string field keeps it verbatim (a hex sha256 is not a number)."""
    raw = text.partition("=")[2].strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def read_yaml_chain(path: Path, seen: tuple[Path, ...]) -> dict:
    """The mapping in `path`, merged over the file its `base:` key names (relative to `path`)."""
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"config files include each other in a loop: {chain}")
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror or err}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {str(path)!r}: 'base' must be a path to another YAML file")
    merged = read_yaml_chain(path.parent / base, seen=(*seen, resolved))
    _deep_update(merged, values)
    return merged


def _deep_update(target: dict, updates: dict) -> None:
    """Merge `updates` into `target` recursively (mappings merge, everything else replaces)."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _check_dotted_key(root: type, key: str, defaults: dict, values: dict) -> Any:
    """Check that dotted `key` names a setting of `root` (or a key inside a free-form section); returns its type
    (None inside a free-form section). `defaults` and `values` pick each section's variant."""
    parts = key.split(".")
    cls: Any = root
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if not is_dataclass_type(cls):
            raise ConfigError(f"unknown key {key!r}: {prefix!r} is a single value, not a section")
        fields = field_types(cls)
        if part not in fields:
            rest = "".join(f".{p}" for p in parts[depth + 1 :])
            raise ConfigError(_unknown_key_message(root, prefix, part, cls, rest))
        if part in FREE_FORM_SECTIONS and depth == 0:
            return None
        defaults, values = defaults.get(part, {}), values.get(part, {})
        if is_dataclass_type(fields[part]) and isinstance(defaults, dict):
            cls = section_class(fields[part], {**defaults, **(values if isinstance(values, dict) else {})})
        else:
            cls = fields[part]
    return cls


def _assign_dotted(values: dict, parts: list[str], value: Any) -> None:
    """Set values[a][b]...[z] = value, creating sections."""
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _merge_into(root: type, target: dict, updates: dict, cls: Any, prefix: str) -> None:
    """Merge `updates` into the default dict `target` of dataclass `cls` (a section of `root`), rejecting
    unknown keys."""
    fields = field_types(cls)
    for key, value in updates.items():
        if not isinstance(key, str):
            raise ConfigError(f"keys must be strings, got {key!r} in section {prefix or '<top level>'!r}")
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(_unknown_key_message(root, prefix, key, cls))
        field_type = fields[key]
        if value is None and (is_dataclass_type(field_type) or key in FREE_FORM_SECTIONS):
            continue  # a section header with every key commented out changes nothing
        if is_dataclass_type(field_type):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted!r} is a section: give a mapping of its keys, got {value!r}")
            variant = section_class(field_type, {**target[key], **value})
            if variant is not section_class(field_type, target[key]):  # another variant: its own defaults
                target[key] = declared_defaults(variant)
            _merge_into(root, target[key], value, variant, dotted)
        elif key in FREE_FORM_SECTIONS and not prefix and isinstance(value, dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _build(cls: Any, values: dict, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a complete dict, checking every value's type and rules."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        field_type = field_types(cls)[f.name]
        value = values[f.name]
        if is_dataclass_type(field_type):
            kwargs[f.name] = _build(section_class(field_type, value), value, dotted)
        else:
            kwargs[f.name] = check_value(dotted, value, field_type, f.metadata)
    return cls(**kwargs)


def _unknown_key_message(root: type, prefix: str, name: str, cls: Any, rest: str = "") -> str:
    """ "unknown key 'train.epoch' (did you mean 'train.epochs'?)": the section first, then every key."""
    key = f"{prefix}.{name}{rest}" if prefix else f"{name}{rest}"
    section_fields = list(field_types(cls))
    near = closest(name, section_fields)
    hint: str | None
    if near is not None:
        hint = f"{prefix}.{near}{rest}" if prefix else f"{near}{rest}"
    else:
        keys_by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid_keys(root)}
        near = closest(name, keys_by_leaf) if not rest else None
        hint = keys_by_leaf[near] if near is not None else None
    if hint is not None:
        return f"unknown key {key!r} (did you mean {hint!r}?)"
    where = f"section {prefix!r}" if prefix else "the top level"
    return f"unknown key {key!r}; valid keys in {where}: {', '.join(section_fields)}"


def _leaf_keys(defaults: dict, cls: Any, prefix: str) -> list[str]:
    keys = []
    for name, field_type in field_types(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        if is_dataclass_type(field_type):
            variant = section_class(field_type, defaults[name])
            keys += _leaf_keys(defaults[name], variant, dotted)
        else:
            keys.append(dotted)
    return keys
