"""The config of a detection run (`famkd detect train`): typed sections, YAML files and `key.sub=value` overrides.

A file states what differs from the defaults below (the paper's COCO schedule: 180k iterations at batch 8,
SGD lr 0.01, x0.1 at 120k and 160k, after a linear warm-up) and may name a parent file with `base:`, as
the classification config does (famkd.config). Every key and value is checked at load: an unknown key is
a ConfigError naming the nearest valid one. The `distill:` section holds the method's options
(famkd.detection.distill) and is filled with every option at its effective value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from famkd.config import load_settings, settings_with_overrides
from famkd.detection.distill import DETECTION_METHODS, needs_teacher, resolve_detection_options
from famkd.detection.models import BACKBONES
from famkd.errors import ConfigError
from famkd.settings import setting


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
    # The student backbone's start: "imagenet" (torchvision's weights), "none", or a local file of them.
    student_init: str = "imagenet"
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


def load_detection_config(path: str | Path | None, overrides: Iterable[str] = ()) -> DetectionConfig:
    """Defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    return load_settings(DetectionConfig, path, overrides)


def detection_config_with_overrides(values: dict, overrides: Iterable[str] = ()) -> DetectionConfig:
    """The config of nested `values` (e.g. a run's saved config) with `key.sub=value` overrides applied."""
    return settings_with_overrides(DetectionConfig, values, overrides)
