"""Which student and teacher taps a feature distiller pairs, and how big each level is.

Levels run shallow to deep and end with the pooled vector as a 1x1 map. When the two models
have different numbers of stages, the last N stages of each are paired, N being the smaller
stage count. Every channel count and size comes from the models' `feature_info`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch.nn.functional as F
from torch import Tensor

from famkd.models.features import FeatureInfo, Features


@dataclass(frozen=True)
class Level:
    """One paired level: the student's map (channels, side) and the teacher's target."""

    student_channels: int
    student_size: int
    teacher_channels: int
    teacher_size: int


def paired_levels(student: FeatureInfo, teacher: FeatureInfo, image_size: int) -> list[Level]:
    """The paired levels, shallow to deep, the last one being the pooled vector (side 1)."""
    count = min(len(student.stages), len(teacher.stages))
    levels = [
        Level(s.channels, s.spatial_size(image_size), t.channels, t.spatial_size(image_size))
        for s, t in zip(student.stages[-count:], teacher.stages[-count:])
    ]
    levels.append(Level(student.pooled_channels, 1, teacher.pooled_channels, 1))
    return levels


def level_features(features: Features, count: int, preact: bool) -> list[Tensor]:
    """The last `count - 1` stage maps (pre-activation if `preact`) plus the pooled map (B, C, 1, 1)."""
    stages = features.preact if preact else features.stages
    return list(stages[len(stages) - (count - 1) :]) + [features.pooled[:, :, None, None]]


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min(epoch / warmup_epochs, 1), epochs counted from 1; no warm-up when warmup_epochs <= 0."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


def feature_mse(outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Sum over levels of the mean squared error."""
    return cast(Tensor, sum(F.mse_loss(out, target) for out, target in zip(outputs, targets)))  # >= 1 level


def review_chain(heads, student_maps: list[Tensor], residual: Tensor | None = None) -> list[Tensor]:
    """Run review-form heads (deepest first) down the levels, each fusing the previous level's
    residual (the deepest head gets `residual`); returns their outputs shallow to deep."""
    outputs = []
    for head, x in zip(heads, reversed(student_maps)):
        out, residual = head(x, residual)
        outputs.append(out)
    return outputs[::-1]
