"""Experiment configuration: typed dataclasses, YAML files and `key.sub=value` overrides.

An experiment file states only what differs from the defaults below. It may name a
parent file with a top-level `base: other.yaml` (a path relative to the file), whose
values it then overrides. Command-line overrides come last, e.g.
`train.epochs=2 run.deterministic=true train.lr_milestones=[1,2]`; each value is
parsed as YAML. Everything is validated at load: an unknown key is a `ConfigError`
naming the key and the nearest valid one, and a value of the wrong type or outside
its allowed set is a `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from famkd.registry import closest


class ConfigError(ValueError):
    """A configuration file or override that cannot be turned into a valid `Config`."""


def _option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
            choices: tuple[str, ...] | None = None, minimum: float | None = None) -> Any:
    """A dataclass field carrying its validation rules (allowed `choices`, inclusive `minimum`)."""
    metadata = {"choices": choices, "minimum": minimum}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run."""

    name: str = ""  # model name in the zoo, e.g. "resnet56"
    checkpoint: str = ""  # path to a community {"model": state_dict} file or a famkd checkpoint
    sha256: str = ""  # when set, the checkpoint file's SHA-256 must match


@dataclass
class DataConfig:
    """Where the images come from and which of them are used."""

    dataset: str = _option("cifar100", choices=("cifar100", "synthetic"))
    root: str = ""  # "" -> $FAMKD_DATA -> ./data
    train_per_class: int = _option(0, minimum=0)  # 0 = all; else the first N train images of each class
    classes: int = _option(0, minimum=0)  # 0 = all; else keep only labels < classes
    download: bool = True  # fetch cifar-100-python with torchvision when it is absent


@dataclass
class TrainConfig:
    """Optimisation schedule and step settings."""

    epochs: int = _option(240, minimum=1)
    batch_size: int = _option(64, minimum=1)
    lr: float = _option(0.05, minimum=0.0)
    momentum: float = _option(0.9, minimum=0.0)
    weight_decay: float = _option(5e-4, minimum=0.0)
    nesterov: bool = False
    lr_milestones: list[int] = _option(factory=lambda: [150, 180, 210])  # epochs at which lr *= lr_decay
    lr_decay: float = _option(0.1, minimum=0.0)
    max_steps_per_epoch: int = _option(0, minimum=0)  # 0 = all
    eval_batch_size: int = _option(256, minimum=1)
    channels_last: bool = False
    compile: bool = False
    log_interval: int = _option(20, minimum=1)  # steps between host syncs for the progress bar


@dataclass
class RunConfig:
    """Where a run writes and how reproducible it is."""

    dir: str = ""  # "" -> runs/<method>/<teacher>_<student>-<timestamp>
    seed: int = _option(0, minimum=0)
    deterministic: bool = False
    tensorboard: bool = True


@dataclass
class Config:
    """One experiment: a method, a student, its teacher, the data and the schedule."""

    method: str = "vanilla"
    student: str = "resnet20"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: dict = field(default_factory=dict)  # free-form options for create_distiller
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    device: str = _option("auto", choices=("cpu", "cuda", "auto"))
    amp: str = _option("off", choices=("off", "bf16", "fp16"))


FREE_FORM_SECTIONS = ("distill",)


def config_to_dict(cfg: Config) -> dict:
    """A plain nested dict of `cfg` (a deep copy), the inverse of `config_from_dict`."""
    return dataclasses.asdict(cfg)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line: `lr_milestones: [150, 180, 210]`."""


_ConfigDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def dump_config(cfg: Config) -> str:
    """`cfg` as YAML, in declaration order (for --print-config and for checkpoints)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)


def config_from_dict(values: dict) -> Config:
    """A validated `Config` from a (possibly partial) nested dict; missing keys keep their defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    merged = config_to_dict(Config())
    _merge_into(merged, values, Config, prefix="")
    return _build(Config, merged, prefix="")


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    values = _read_yaml_chain(Path(path), seen=()) if path is not None else {}
    for override in overrides:
        key, value = parse_override(override)
        _check_dotted_key(key)
        _assign_dotted(values, key.split("."), value, _string_override(override))
    return config_from_dict(values)


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


def valid_keys() -> list[str]:
    """Every settable dotted key, e.g. "train.epochs" (the free-form `distill` section as one key)."""
    return _leaf_keys(Config, prefix="")


def _string_override(text: str) -> str:
    """The raw text right of '=': a string field keeps it verbatim (a hex sha256 is not a number)."""
    raw = text.partition("=")[2].strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def _read_yaml_chain(path: Path, seen: tuple[Path, ...]) -> dict:
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
    merged = _read_yaml_chain(path.parent / base, seen=(*seen, resolved))
    _deep_update(merged, values)
    return merged


def _deep_update(target: dict, updates: dict) -> None:
    """Merge `updates` into `target` recursively (mappings merge, everything else replaces)."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _check_dotted_key(key: str) -> None:
    """Check that dotted `key` names a setting (or a key inside a free-form section)."""
    parts = key.split(".")
    cls: Any = Config
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if not _is_dataclass_type(cls):
            raise ConfigError(f"unknown key {key!r}: {prefix!r} is a single value, not a section")
        fields = _fields(cls)
        if part not in fields:
            rest = "".join(f".{p}" for p in parts[depth + 1:])
            raise ConfigError(_unknown_key_message(prefix, part, cls, rest))
        if part in FREE_FORM_SECTIONS and depth == 0:
            return
        cls = fields[part]


def _assign_dotted(values: dict, parts: list[str], value: Any, raw_text: str) -> None:
    """Set values[a][b]...[z] = value, creating sections; string fields take the raw text."""
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    if _field_type_at(parts) is str and value is not None and not isinstance(value, (str, list, dict)):
        value = raw_text
    node[parts[-1]] = value


def _field_type_at(parts: list[str]) -> Any:
    """The declared type of the setting at dotted `parts`, or None inside a free-form section."""
    cls: Any = Config
    for part in parts:
        if not _is_dataclass_type(cls):
            return None
        cls = _fields(cls).get(part)
    return cls


def _merge_into(target: dict, updates: dict, cls: Any, prefix: str) -> None:
    """Merge `updates` into the default dict `target` of dataclass `cls`, rejecting unknown keys."""
    fields = _fields(cls)
    for key, value in updates.items():
        if not isinstance(key, str):
            raise ConfigError(f"keys must be strings, got {key!r} in section {prefix or '<top level>'!r}")
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix, key, cls))
        field_type = fields[key]
        if value is None and (_is_dataclass_type(field_type) or key in FREE_FORM_SECTIONS):
            continue  # a section header with every key commented out changes nothing
        if _is_dataclass_type(field_type):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted!r} is a section: give a mapping of its keys, got {value!r}")
            _merge_into(target[key], value, field_type, dotted)
        elif key in FREE_FORM_SECTIONS and not prefix and isinstance(value, dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _build(cls: Any, values: dict, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a complete dict, checking every value's type and rules."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        field_type = _fields(cls)[f.name]
        value = values[f.name]
        if _is_dataclass_type(field_type):
            kwargs[f.name] = _build(field_type, value, dotted)
        else:
            kwargs[f.name] = _check_value(dotted, value, field_type, f.metadata)
    return cls(**kwargs)


def _check_value(key: str, value: Any, expected: Any, rules: Any) -> Any:
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
    raise TypeError(f"config field {key} has an unsupported type {expected!r}")


def _unknown_key_message(prefix: str, name: str, cls: Any, rest: str = "") -> str:
    """"unknown key 'train.epoch' (did you mean 'train.epochs'?)": the section first, then every key."""
    key = f"{prefix}.{name}{rest}" if prefix else f"{name}{rest}"
    section_fields = list(_fields(cls))
    near = closest(name, section_fields)
    if near is not None:
        hint = f"{prefix}.{near}{rest}" if prefix else f"{near}{rest}"
    else:
        keys_by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid_keys()}
        near = closest(name, keys_by_leaf) if not rest else None
        hint = keys_by_leaf[near] if near is not None else None
    if hint is not None:
        return f"unknown key {key!r} (did you mean {hint!r}?)"
    where = f"section {prefix!r}" if prefix else "the top level"
    return f"unknown key {key!r}; valid keys in {where}: {', '.join(section_fields)}"


def _leaf_keys(cls: Any, prefix: str) -> list[str]:
    keys = []
    for name, field_type in _fields(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys += _leaf_keys(field_type, dotted) if _is_dataclass_type(field_type) else [dotted]
    return keys


def _fields(cls: Any) -> dict[str, Any]:
    """Field name -> resolved type annotation of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(obj: Any) -> bool:
    return isinstance(obj, type) and dataclasses.is_dataclass(obj)
