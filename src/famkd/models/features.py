"""What a model exposes to distillers: its feature taps and one-pass feature extraction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn


@dataclass(frozen=True)
class StageInfo:
    """One feature tap: a stage output of `channels` channels, `stride` pixels per cell."""

    name: str
    channels: int
    stride: int

    def spatial_size(self, image_size: int) -> int:
        """Side of this stage's square map for a square input of side `image_size`."""
        return math.ceil(image_size / self.stride)


@dataclass(frozen=True)
class FeatureInfo:
    """The taps a distiller can use: the stages (shallow to deep, stem excluded) and the pooled vector."""

    stages: tuple[StageInfo, ...]
    pooled_channels: int

    @property
    def channels(self) -> list[int]:
        return [stage.channels for stage in self.stages]


class Features(NamedTuple):
    """Everything a distiller reads from one forward pass.

    stages: stage outputs, shallow to deep (the stem is not a stage), as the community zoo's
        `feats` (post-activation for ReLU-ended stages; see each model's docstring).
    preact: the same stages before their final activation (the zoo's `preact_feats`).
    pooled: the globally pooled vector fed to the classifier, shape (B, C).
    logits: classifier output, shape (B, num_classes).
    """

    stages: list[Tensor]
    preact: list[Tensor]
    pooled: Tensor
    logits: Tensor


def classifier_path(model: nn.Module) -> str | None:
    """The module path of a classifier's head, its last nn.Linear (None where it has none)."""
    linears = [path for path, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


class FeatureModel(nn.Module):
    """Base class of every zoo model: `forward` gives logits, `forward_features` gives all taps."""

    feature_info: FeatureInfo

    def forward_features(self, x: Tensor) -> Features:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits
