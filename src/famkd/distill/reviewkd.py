"""ReviewKD (Chen et al., CVPR 2021) as published, and FAM + ReviewKD (docs/method.md).

Attention-based fusion (ABF) runs from the deepest level (the pooled vector) to the
shallowest; each level's output head is a 3x3 convolution + BN (ReviewKD) or FAM + BN
(FAM + ReviewKD). The loss is the hierarchical context loss against the teacher's
pre-activation maps and pooled vector.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import FamFilterOptions, FeatureDistiller, FeatureOptions, TrainingData
from famkd.distill.levels import Level, paired_levels, review_chain
from famkd.distill.registry import register_distiller
from famkd.fam import FrequencyAttention
from famkd.models.taps import feature_info
from famkd.nn.blocks import projection
from famkd.settings import setting

CONTEXT_POOL_SIZES = (4, 2, 1)


@dataclass
class ReviewKDOptions(FeatureOptions):
    """ReviewKD's options: the feature-distiller options (loss weight 5 by default) and
    max_mid_channels, the head width cap: C_mid = min(max_mid_channels, the student's pooled channels)."""

    loss_weight: float = setting(5.0, minimum=0.0)
    max_mid_channels: int = setting(512, minimum=1)


@dataclass
class FamReviewKDOptions(FamFilterOptions, ReviewKDOptions):
    """FAM + ReviewKD: ReviewKD's options plus the FAM high-pass filter."""


def hierarchical_context_loss(outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Sum over levels of a weighted mean of MSEs at full size and at 4x4, 2x2, 1x1 average pools.

    Weights are 1, 1/2, 1/4, 1/8 for the full map and each pooled size used in turn; a pooled
    size not smaller than the map is skipped; each level divides by the weights it used.
    """
    total: Tensor | float = 0.0
    for out, target in zip(outputs, targets):
        loss, weight, weight_sum = F.mse_loss(out, target), 1.0, 1.0
        for size in CONTEXT_POOL_SIZES:
            if size >= out.shape[-1]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(out, size), F.adaptive_avg_pool2d(target, size))
            weight_sum += weight
        total = total + loss / weight_sum
    return cast(Tensor, total)  # a tensor: there is at least one level


class AttentionFusion(nn.Module):
    """ABF: project x to C_mid, fuse with the deeper residual through two sigmoid maps, resize, output head."""

    def __init__(self, level: Level, mid_channels: int, fuse: bool, output_head: nn.Module):
        super().__init__()
        self.student_size = level.student_size
        self.teacher_size = level.teacher_size
        self.input_proj = projection(level.student_channels, mid_channels, relu=False)
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        self.output_head = output_head

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.input_proj(x)
        if self.attention is not None:
            assert residual is not None  # every level but the deepest fuses the deeper level's residual
            x = self.fuse(x, residual)
        if self.student_size != self.teacher_size:
            x = F.interpolate(x, size=(self.teacher_size, self.teacher_size), mode="nearest")
        return self.output_head(x), x

    def fuse(self, x: Tensor, residual: Tensor) -> Tensor:
        """x * a + up(residual) * b with (a, b) = sigmoid(conv1x1(cat(x, up(residual)))), up being the
        nearest upsampling to x's size.

        Computed without the concatenation: the 1x1 convolution of a concatenation is the sum of
        convolutions by the weight's halves, and a 1x1 convolution commutes with nearest
        upsampling, so the residual's half runs at the residual's own resolution.
        """
        assert self.attention is not None  # fuse runs only on heads built with fuse=True
        conv = cast(nn.Conv2d, self.attention[0])
        channels = x.shape[1]
        logits = F.conv2d(x, conv.weight[:, :channels])
        maps = torch.sigmoid(add_upsampled(logits, F.conv2d(residual, conv.weight[:, channels:], conv.bias)))
        return add_upsampled(x * maps[:, 0:1], residual, maps[:, 1:2])


def add_upsampled(base: Tensor, low: Tensor, scale: Tensor | None = None) -> Tensor:
    """base + up(low) (times scale, if given), up being the nearest upsampling to base's size.

    A 1x1 map (the pooled level) is broadcast instead of upsampled. Larger maps are upsampled
    with F.interpolate: on CPU its backward beats the strided reduction of a blockwise broadcast.
    """
    upsampled = low if low.shape[-2:] == (1, 1) else F.interpolate(low, size=base.shape[-2:], mode="nearest")
    return base + upsampled if scale is None else torch.addcmul(base, upsampled, scale)


def conv_output_head(mid_channels: int, level: Level) -> nn.Module:
    conv = nn.Conv2d(mid_channels, level.teacher_channels, kernel_size=3, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(level.teacher_channels))


def fam_output_head(mid_channels: int, level: Level, hpf: str, cutoff: float, order: int) -> nn.Module:
    fam = FrequencyAttention(
        mid_channels, level.teacher_channels, level.teacher_size, hpf=hpf, cutoff=cutoff, order=order
    )
    return nn.Sequential(fam, nn.BatchNorm2d(level.teacher_channels))


class ReviewDistiller(FeatureDistiller):
    """loss = ce_weight * CE + loss_weight * min(epoch / warmup_epochs, 1) * HCL(heads(student), teacher preact).

    C_mid = min(max_mid_channels, the student's pooled channels) at every level;
    `output_head(C_mid, level)` builds each level's output head.
    """

    loss_name = "reviewkd"
    teacher_preact = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        options: ReviewKDOptions,
        data: TrainingData,
        output_head: Callable[[int, Level], nn.Module],
    ):
        super().__init__(student, teacher, options)
        levels = paired_levels(feature_info(student), feature_info(teacher), data.image_size)
        mid = min(options.max_mid_channels, levels[-1].student_channels)
        deepest = len(levels) - 1
        self.heads.extend(
            AttentionFusion(levels[i], mid, i != deepest, output_head(mid, levels[i]))
            for i in reversed(range(len(levels)))
        )

    def head_outputs(self, student_maps: list[Tensor]) -> list[Tensor]:
        return review_chain(self.heads, student_maps)

    def feature_loss(self, outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
        return hierarchical_context_loss(outputs, targets)


@register_distiller("reviewkd")
class ReviewKD(ReviewDistiller):
    """Canonical ReviewKD: 3x3 convolution + BN output heads. Options: ReviewKDOptions."""

    Options = ReviewKDOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, options: ReviewKDOptions, data: TrainingData):
        super().__init__(student, teacher, options, data, conv_output_head)


@register_distiller("fam_reviewkd")
class FamReviewKD(ReviewDistiller):
    """FAM + ReviewKD: each 3x3 output convolution replaced by FAM (+ BN). Options: FamReviewKDOptions."""

    Options = FamReviewKDOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, options: FamReviewKDOptions, data: TrainingData):
        head = functools.partial(fam_output_head, **options.fam_options())
        super().__init__(student, teacher, options, data, head)
