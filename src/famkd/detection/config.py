"""The config of a detection run (`famkd detect train`): famkd.config's shared sections, detection's defaults.

A file states what differs from the defaults below (the paper's COCO schedule: 180k iterations at batch 8,
SGD lr 0.01, x0.1 at 120k and 160k, after a linear warm-up) and may name a parent file with `base:`, as
the classification config does; the machinery (famkd.settings) checks every key and value at load. The
`data:` section is COCO's options (famkd.detection.coco.CocoOptions), and the `distill:` section holds the
method's options (famkd.detection.distill), filled with every option at its effective value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from famkd.config import AMP_MODES, DEVICES, RunConfig, TeacherConfig, TrainConfig
from famkd.data import DataOptions
from famkd.detection import distill  # noqa: F401  (registers the detection methods)
from famkd.detection.coco import CocoOptions
from famkd.detection.models import BACKBONES, DETECTRON2_SMOOTH_L1_BETA
from famkd.distill import needs_teacher, resolve_method_options
from famkd.errors import ConfigError
from famkd.settings import load_settings, setting, settings_with_overrides

TASK = "detection"


def default_lr_milestones() -> list[int]:
    return [120000, 160000]


@dataclass
class DetectionTrainConfig(TrainConfig):
    """The shared train section with Detectron2's COCO schedule and recipe as defaults, and where the student's
    backbone starts: "imagenet" (torchvision's weights), "none", or a local file of them.

    The recipe (docs/detection.md gives each source): `frozen_bn`, the student backbone's batch norms frozen
    (Detectron2's RESNETS.NORM and mdistiller's MOBILENETV2.NORM "FrozenBN"); `rpn_smooth_l1_beta` and
    `box_smooth_l1_beta`, the smooth-L1 beta of the RPN's and the box head's box-regression losses (Detectron2's
    0.0, L1; torchvision's is 1/9); `norm_weight_decay` false, no weight decay on normalisation layers
    (Detectron2's SOLVER.WEIGHT_DECAY_NORM 0.0)."""

    epochs: int = setting(0, minimum=0)
    iterations: int = setting(180000, minimum=0)
    batch_size: int = setting(8, minimum=1)
    lr: float = setting(0.01, minimum=0.0)
    weight_decay: float = setting(1e-4, minimum=0.0)
    norm_weight_decay: bool = False
    frozen_bn: bool = True
    rpn_smooth_l1_beta: float = setting(DETECTRON2_SMOOTH_L1_BETA, minimum=0.0)
    box_smooth_l1_beta: float = setting(DETECTRON2_SMOOTH_L1_BETA, minimum=0.0)
    lr_milestones: list[int] = setting(factory=default_lr_milestones)
    warmup_iters: int = setting(1000, minimum=0)
    eval_every: int = setting(0, minimum=0)
    checkpoint_every: int = setting(5000, minimum=0)
    eval_batch_size: int = setting(8, minimum=1)
    student_init: str = setting("imagenet", path=("imagenet", "none"))


def default_teacher() -> TeacherConfig:
    return TeacherConfig(name="resnet101")


@dataclass
class DetectionConfig:
    """One detection run: method, student backbone, teacher (a backbone and its Faster R-CNN weights), data,
    schedule."""

    task: ClassVar[str] = TASK

    method: str = "vanilla"
    student: str = setting("resnet18", choices=BACKBONES)
    teacher: TeacherConfig = field(default_factory=default_teacher)
    distill: dict = field(default_factory=dict)
    data: DataOptions = field(default_factory=CocoOptions)
    train: DetectionTrainConfig = field(default_factory=DetectionTrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    device: str = setting("auto", choices=DEVICES)
    amp: str = setting("off", choices=AMP_MODES)

    def __post_init__(self) -> None:
        """Fill `distill` with the method's effective options and check what the sections say together."""
        self.distill = resolve_method_options(self.method, self.distill, TASK)
        if self.teacher.name not in BACKBONES:
            raise ConfigError(f"teacher.name={self.teacher.name!r} is not a detection backbone: {', '.join(BACKBONES)}")
        if needs_teacher(self.method, TASK) and not self.teacher.checkpoint:
            raise ConfigError(f"method {self.method} needs teacher.checkpoint (a Detectron2 .pkl or a state dict)")


def load_detection_config(path: str | Path | None, overrides: Iterable[str] = ()) -> DetectionConfig:
    """Defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    return load_settings(DetectionConfig, path, overrides)


def detection_config_with_overrides(values: dict, overrides: Iterable[str] = ()) -> DetectionConfig:
    """The config of nested `values` (e.g. a run's saved config) with `key.sub=value` overrides applied."""
    return settings_with_overrides(DetectionConfig, values, overrides)
