"""FAM-KD, review form (docs/method.md): cross-attention fusion down the levels, then FAM heads.

The pooled level (the pooled vector as a 1x1 map, the deepest level) plays one of two roles, chosen by
the option `pooled_level`:
  "loss"      (default) it has a FAM head of its own and a loss term, as the published CIFAR-100 model;
  "residual"  it only makes the residual fused into the last stage's level: no FAM, no BN, no loss term,
              as the published ImageNet resnet34 -> resnet18 model (configs/imagenet/r34_r18/fam_kd.yaml
              of github.com/cuong-pv/FAM-KD: GUIDE_LAYERS [1, 2, 3, 4], the four stage outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import FamFilterOptions, FeatureDistiller, FeatureOptions, TrainingData
from famkd.distill.levels import Level, feature_mse, paired_levels, review_chain
from famkd.distill.registry import register_distiller
from famkd.fam import FrequencyAttention
from famkd.models.taps import feature_info
from famkd.nn.blocks import projection
from famkd.nn.cross_attention import CrossAttention
from famkd.settings import setting


@dataclass
class FamOptions(FamFilterOptions, FeatureOptions):
    """Options of the FAM-KD forms: the feature-distiller options (loss_weight, formerly alpha, is the
    paper's alpha) and the FAM high-pass filter."""

    ALIASES: ClassVar[dict[str, str]] = {"alpha": "loss_weight"}


POOLED_LEVEL_ROLES = ("loss", "residual")


@dataclass
class FamKDOptions(FamOptions):
    """fam_kd adds max_mid_channels, a cap on the head width C_mid (0 = the student's channels), and
    pooled_level, the pooled level's role: "loss" or "residual" (see the module docstring)."""

    max_mid_channels: int = setting(0, minimum=0)
    pooled_level: str = setting("loss", choices=POOLED_LEVEL_ROLES)


class FamReviewHead(nn.Module):
    """One level of the review form.

    x -> [1x1 projection to C_mid] -> [cross-attention with the projected, upsampled deeper
    residual] -> [nearest resize to the teacher's side] -> FAM -> BN -> ReLU.
    Returns (output matched against the teacher, the map passed on as the next residual).
    The deepest level has no residual, so it builds no residual projection or attention.
    """

    def __init__(self, level: Level, mid_channels: int, residual_channels: int | None, fam_options: dict[str, Any]):
        super().__init__()
        self.student_size = level.student_size
        self.teacher_size = level.teacher_size
        self.input_proj = (
            projection(level.student_channels, mid_channels, relu=True)
            if level.student_channels != mid_channels
            else None
        )
        fuse = residual_channels is not None
        self.residual_proj = (
            projection(residual_channels, mid_channels, relu=True)
            if residual_channels is not None and residual_channels != mid_channels
            else None
        )
        self.attention = CrossAttention(mid_channels) if fuse else None
        self.fam = FrequencyAttention(mid_channels, level.teacher_channels, level.teacher_size, **fam_options)
        self.bn = nn.BatchNorm2d(level.teacher_channels)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.input_proj is not None:
            x = self.input_proj(x)
        if self.attention is not None:
            if self.residual_proj is not None:
                residual = self.residual_proj(residual)
            # The attention upsamples the residual (nearest) to the level's size itself, after its
            # 1x1 query projection, which commutes with the upsampling.
            x = self.attention(x, residual)
        if self.student_size != self.teacher_size:
            x = F.interpolate(x, size=(self.teacher_size, self.teacher_size), mode="nearest")
        return F.relu(self.bn(self.fam(x))), x


class PooledResidual(nn.Module):
    """The pooled level when it only makes the residual (pooled_level "residual").

    x -> [1x1 projection to C_mid, as FamReviewHead's input projection, when the channels differ];
    the result is the residual of the last stage's level. There is no output to match.
    """

    def __init__(self, level: Level, mid_channels: int):
        super().__init__()
        self.input_proj = (
            projection(level.student_channels, mid_channels, relu=True)
            if level.student_channels != mid_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return x if self.input_proj is None else self.input_proj(x)


def mid_channel_counts(levels: list[Level], max_mid_channels: int) -> list[int]:
    """C_mid per level: the student's channels, capped at `max_mid_channels` when it is > 0."""
    return [
        min(lv.student_channels, max_mid_channels) if max_mid_channels > 0 else lv.student_channels for lv in levels
    ]


@register_distiller("fam_kd")
class FamKD(FeatureDistiller):
    """loss = ce_weight * CE + loss_weight * min(epoch / warmup_epochs, 1) * sum_levels MSE(head(student), teacher).

    The sum runs over the stage levels and, with pooled_level "loss", the pooled level. Options: FamKDOptions.
    `data.image_size` (the side of the training images) fixes every level's size.
    """

    Options = FamKDOptions
    loss_name = "fam_kd"
    teacher_preact = False

    def __init__(self, student: nn.Module, teacher: nn.Module, options: FamKDOptions, data: TrainingData):
        super().__init__(student, teacher, options)
        levels = paired_levels(feature_info(student), feature_info(teacher), data.image_size)
        mids = mid_channel_counts(levels, options.max_mid_channels)
        fam_options = options.fam_options()
        self.pooled_is_residual = options.pooled_level == "residual"
        pooled = len(levels) - 1  # the last and deepest level
        fam_levels = pooled if self.pooled_is_residual else len(levels)
        # Deepest level first, as the fusion runs from deep to shallow.
        if self.pooled_is_residual:
            self.heads.append(PooledResidual(levels[pooled], mids[pooled]))
        self.heads.extend(
            FamReviewHead(levels[i], mids[i], mids[i + 1] if i < pooled else None, fam_options)
            for i in reversed(range(fam_levels))
        )

    def head_outputs(self, student_maps: list[Tensor]) -> list[Tensor]:
        """Outputs shallow to deep: one per level, or one per stage level when the pooled level is a residual."""
        if self.pooled_is_residual:
            pooled_head, *stage_heads = self.heads
            return review_chain(stage_heads, student_maps[:-1], residual=pooled_head(student_maps[-1]))
        return review_chain(self.heads, student_maps)

    def feature_loss(self, outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
        """Sum of the levels' MSEs; a residual-only pooled level has no output, so its target is left out."""
        return feature_mse(outputs, targets[:-1] if self.pooled_is_residual else targets)
