"""Experiment configuration: typed dataclasses, YAML files and `key.sub=value` overrides.

An experiment file states only what differs from the defaults below. It may name a
parent file with a top-level `base: other.yaml` (a path relative to the file), whose
values it then overrides. Command-line overrides come last, e.g.
`train.epochs=2 run.deterministic=true train.lr_milestones=[1,2]`; each value is
parsed as YAML. Everything is validated at load: an unknown key is a `ConfigError`
naming the key and the nearest valid one, and a value of the wrong type or outside
its allowed set is a `ConfigError` naming the key, the value and what is allowed.

The `distill:` section holds the method's options (famkd.distill). A `Config` always holds
every option of its method with its effective value: the given ones checked, the others at
their defaults. So `--print-config`, the run's config.yaml and its checkpoints show exactly
what a run used, and a bad option fails here, before any data or teacher is read.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from famkd.distill import resolve_method_options
from famkd.errors import ConfigError
from famkd.models.registry import MODELS
from famkd.registry import closest
from famkd.settings import check_value, field_types, is_dataclass_type, setting

T = TypeVar("T")

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "RunConfig",
    "TeacherConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "config_with_overrides",
    "dump_config",
    "load_config",
    "load_settings",
    "parse_override",
    "settings_from_dict",
    "settings_with_overrides",
    "valid_keys",
]


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run."""

    name: str = ""  # model name in the zoo, e.g. "resnet56"
    checkpoint: str = ""  # a community {"model": ...} file, a famkd checkpoint, or torchvision:<Weights>.<entry>
    sha256: str = ""  # when set, the checkpoint file's SHA-256 must match


@dataclass
class DataConfig:
    """Where the images come from and which of them are used."""

    dataset: str = setting("cifar100", choices=("cifar100", "synthetic", "imagenet"))
    root: str = ""  # "" -> $FAMKD_DATA -> ./data (imagenet: required)
    train_per_class: int = setting(0, minimum=0)  # 0 = all; else the first N train images of each class
    classes: int = setting(0, minimum=0)  # 0 = all; else keep only labels < classes
    download: bool = False  # true: fetch cifar-100-python with torchvision when it is absent (never unasked)
    workers: int = setting(8, minimum=0)  # imagenet: DataLoader worker processes per training process
    crop_size: int = setting(224, minimum=1)  # imagenet: side of the training crop and the evaluation crop
    resize_size: int = setting(256, minimum=1)  # imagenet: evaluation images are resized to this, then cropped


@dataclass
class TrainConfig:
    """Optimisation schedule and step settings."""

    epochs: int = setting(240, minimum=1)
    batch_size: int = setting(64, minimum=1)
    lr: float = setting(0.05, minimum=0.0)
    momentum: float = setting(0.9, minimum=0.0)
    weight_decay: float = setting(5e-4, minimum=0.0)
    nesterov: bool = False
    lr_milestones: list[int] = setting(factory=lambda: [150, 180, 210])  # epochs at which lr *= lr_decay
    lr_decay: float = setting(0.1, minimum=0.0)
    max_steps_per_epoch: int = setting(0, minimum=0)  # 0 = all
    eval_batch_size: int = setting(256, minimum=1)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # several processes (torchrun): batch-norm statistics over the global batch
    log_interval: int = setting(20, minimum=1)  # steps between host syncs for the progress bar


@dataclass
class RunConfig:
    """Where a run writes and how reproducible it is."""

    dir: str = ""  # "" -> runs/<method>/<teacher>_<student>-<timestamp>
    seed: int = setting(0, minimum=0)
    deterministic: bool = False
    tensorboard: bool = True
    spectra_every: int = setting(10, minimum=0)  # epochs between FAM spectra files, 0 = never (famkd.engine.fam_log)


@dataclass
class Config:
    """One experiment: a method, a student, its teacher, the data and the schedule."""

    method: str = "vanilla"
    student: str = "resnet20"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: dict = field(default_factory=dict)  # the method's options; see the module docstring
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    device: str = setting("auto", choices=("cpu", "cuda", "auto"))
    amp: str = setting("off", choices=("off", "bf16", "fp16"))

    def __post_init__(self) -> None:
        """Check the model names and fill `distill` with the method's effective options."""
        _check_model_name("student", self.student)
        if self.teacher.name:
            _check_model_name("teacher.name", self.teacher.name)
        self.distill = resolve_method_options(self.method, self.distill)


def _check_model_name(key: str, name: str) -> None:
    """A ConfigError naming `key` when `name` is not in the model zoo."""
    try:
        MODELS.get(name)
    except KeyError as error:
        raise ConfigError(f"{key}: {error.args[0]}") from None


FREE_FORM_SECTIONS = ("distill",)


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict of `cfg` (a deep copy), the inverse of `config_from_dict`."""
    return dataclasses.asdict(cfg)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line: `lr_milestones: [150, 180, 210]`."""


_ConfigDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def dump_config(cfg: Any) -> str:
    """`cfg` (a Config, or another root of settings) as YAML, in declaration order (for --print-config and run
    folders)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False)


def config_from_dict(values: dict) -> Config:
    """A validated `Config` from a (possibly partial) nested dict; missing keys keep their defaults."""
    return settings_from_dict(Config, values)


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    return load_settings(Config, path, overrides)


def config_with_overrides(values: dict, overrides: Iterable[str] = ()) -> Config:
    """The config of nested `values` (e.g. a saved config) with `key.sub=value` overrides applied."""
    return settings_with_overrides(Config, values, overrides)


# Any root dataclass of settings loads the same way: Config here, famkd.detection.config's DetectionConfig.
# A root's `distill` section is free-form here and filled by the root's __post_init__ for its method.


def load_settings(root: type[T], path: str | Path | None, overrides: Iterable[str] = ()) -> T:
    """`root`'s defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    values = read_yaml_chain(Path(path), seen=()) if path is not None else {}
    return settings_with_overrides(root, values, overrides)


def settings_with_overrides(root: type[T], values: dict, overrides: Iterable[str] = ()) -> T:
    """`root` from nested `values` with `key.sub=value` overrides applied."""
    values = copy.deepcopy(values)
    for override in overrides:
        key, value = parse_override(override)
        _check_dotted_key(root, key)
        _assign_dotted(root, values, key.split("."), value, _string_override(override))
    return settings_from_dict(root, values)


def settings_from_dict(root: type[T], values: dict) -> T:
    """A validated `root` from a (possibly partial) nested dict; missing keys keep their defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
    merged = config_to_dict(root())
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


def valid_keys(root: type = Config) -> list[str]:
    """Every settable dotted key of `root`, e.g. "train.epochs" (the free-form `distill` section as one key)."""
    return _leaf_keys(root, prefix="")


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


def _check_dotted_key(root: type, key: str) -> None:
    """Check that dotted `key` names a setting of `root` (or a key inside a free-form section)."""
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
            return
        cls = fields[part]


def _assign_dotted(root: type, values: dict, parts: list[str], value: Any, raw_text: str) -> None:
    """Set values[a][b]...[z] = value, creating sections; string fields take the raw text."""
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    if _field_type_at(root, parts) is str and value is not None and not isinstance(value, (str, list, dict)):
        value = raw_text
    node[parts[-1]] = value


def _field_type_at(root: type, parts: list[str]) -> Any:
    """The declared type of `root`'s setting at dotted `parts`, or None inside a free-form section."""
    cls: Any = root
    for part in parts:
        if not is_dataclass_type(cls):
            return None
        cls = field_types(cls).get(part)
    return cls


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
            _merge_into(root, target[key], value, field_type, dotted)
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
            kwargs[f.name] = _build(field_type, value, dotted)
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


def _leaf_keys(cls: Any, prefix: str) -> list[str]:
    keys = []
    for name, field_type in field_types(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys += _leaf_keys(field_type, dotted) if is_dataclass_type(field_type) else [dotted]
    return keys
