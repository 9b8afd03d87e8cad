"""The config of a detection run (`famkd detect train`): typed sections, YAML files and `key.sub=value` overrides.

A file states what differs from the defaults below (the paper's COCO schedule: 180k iterations at batch 8,
SGD lr 0.01, x0.1 at 120k and 160k, after a linear warm-up) and may name a parent file with `base:`, as
the classification config does (famkd.config). Every key and value is checked at load: an unknown key is
a ConfigError naming the nearest valid one. The `distill:` section holds the method's options
(famkd.detection.distill) and is filled with every option at its effective value.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from famkd.config import parse_override, read_yaml_chain
from famkd.detection.distill import DETECTION_METHODS, needs_teacher, resolve_detection_options
from famkd.detection.models import BACKBONES
from famkd.errors import ConfigError
from famkd.registry import closest
from famkd.settings import check_value, field_types, is_dataclass_type, setting


@dataclass
class DetectionTeacherConfig:
    """The frozen teacher: its backbone and weights (a Detectron2 .pkl, or a torchvision state dict)."""

    backbone: str = setting("resnet101", choices=BACKBONES)
    checkpoint: str = ""


@dataclass
class DetectionDataConfig:
    """COCO 2017 under `root` (train2017/, val2017/, annotations/) and the resize both models use."""

    root: str = ""
    min_size: int = setting(800, minimum=1)
    max_size: int = setting(1333, minimum=1)
    flip_prob: float = setting(0.5, minimum=0.0)
    workers: int = setting(4, minimum=0)


def default_lr_steps() -> list[int]:
    return [120000, 160000]


@dataclass
class DetectionTrainConfig:
    """An iteration-based SGD schedule (batch_size is the global batch) and the checkpoint/log/eval intervals."""

    iterations: int = setting(180000, minimum=1)
    batch_size: int = setting(8, minimum=1)
    lr: float = setting(0.01, minimum=0.0)
    momentum: float = setting(0.9, minimum=0.0)
    weight_decay: float = setting(1e-4, minimum=0.0)
    lr_steps: list[int] = setting(factory=default_lr_steps)  # iterations at which lr *= lr_decay
    lr_decay: float = setting(0.1, minimum=0.0)
    warmup_iters: int = setting(1000, minimum=0)  # linear lr warm-up from warmup_factor * lr
    warmup_factor: float = setting(0.001, minimum=0.0)
    student_init: str = setting("imagenet", choices=("imagenet", "none"))  # the student backbone's weights
    checkpoint_every: int = setting(5000, minimum=1)
    log_every: int = setting(20, minimum=1)
    eval_every: int = setting(0, minimum=0)  # 0: evaluate at the end only
    eval_batch_size: int = setting(8, minimum=1)


@dataclass
class DetectionRunConfig:
    """Where the run writes and how reproducible it is."""

    dir: str = ""  # "" -> runs/detection/<method>/<teacher>_<student>-<timestamp>
    seed: int = setting(0, minimum=0)
    deterministic: bool = False
    tensorboard: bool = True


@dataclass
class DetectionConfig:
    """One detection run: method, student backbone, teacher, data, schedule."""

    method: str = setting("vanilla", choices=tuple(DETECTION_METHODS))
    student: str = setting("resnet18", choices=BACKBONES)
    teacher: DetectionTeacherConfig = field(default_factory=DetectionTeacherConfig)
    distill: dict = field(default_factory=dict)
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    train: DetectionTrainConfig = field(default_factory=DetectionTrainConfig)
    run: DetectionRunConfig = field(default_factory=DetectionRunConfig)
    device: str = setting("auto", choices=("cpu", "cuda", "auto"))

    def __post_init__(self) -> None:
        """Fill `distill` with the method's effective options and check what the sections say together."""
        self.distill = resolve_detection_options(self.method, self.distill)
        if self.data.min_size > self.data.max_size:
            raise ConfigError(f"data.min_size={self.data.min_size} must not exceed data.max_size={self.data.max_size}")
        if needs_teacher(self.method) and not self.teacher.checkpoint:
            raise ConfigError(f"method {self.method} needs teacher.checkpoint (a Detectron2 .pkl or a state dict)")


def detection_config_from_dict(values: dict) -> DetectionConfig:
    """A checked DetectionConfig from a (possibly partial) nested dict; missing keys keep their defaults."""
    return build_section(DetectionConfig, values, prefix="")


def load_detection_config(path: str | Path | None, overrides: Iterable[str] = ()) -> DetectionConfig:
    """Defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    values = read_yaml_chain(Path(path), seen=()) if path is not None else {}
    return detection_config_with_overrides(values, overrides)


def detection_config_with_overrides(values: dict, overrides: Iterable[str] = ()) -> DetectionConfig:
    """The config of nested `values` (e.g. a run's saved config) with `key.sub=value` overrides applied."""
    values = copy.deepcopy(values)
    for override in overrides:
        key, value = parse_override(override)
        *sections, leaf = key.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"unknown key {key!r}: {section!r} is a single value, not a section")
        node[leaf] = value
    return detection_config_from_dict(values)


def build_section(cls: Any, values: Any, prefix: str) -> Any:
    """Dataclass `cls` from a partial mapping: unknown keys (with the nearest valid one) and values checked."""
    where = prefix or "the top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {values!r}")
    types = field_types(cls)
    for key in values:
        if key not in types:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            near = closest(str(key), types)
            suggestion = f"{prefix}.{near}" if prefix else near
            hint = f" (did you mean {suggestion!r}?)" if near else ""
            raise ConfigError(f"unknown key {dotted!r}{hint}; valid keys in {where}: {', '.join(types)}")
    kwargs = {}
    for item in dataclasses.fields(cls):
        if item.name not in values or values[item.name] is None and is_dataclass_type(types[item.name]):
            continue
        dotted = f"{prefix}.{item.name}" if prefix else item.name
        value = values[item.name]
        if is_dataclass_type(types[item.name]):
            kwargs[item.name] = build_section(types[item.name], value, dotted)
        else:
            kwargs[item.name] = check_value(dotted, value, types[item.name], item.metadata)
    return cls(**kwargs)


def detection_config_to_dict(cfg: DetectionConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_detection_config(cfg: DetectionConfig) -> str:
    """`cfg` as YAML, in declaration order."""
    return yaml.safe_dump(detection_config_to_dict(cfg), sort_keys=False)
