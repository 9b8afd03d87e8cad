"""Attention Transfer (Zagoruyko and Komodakis, ICLR 2017) as in the CRD benchmark (RepDistiller's AT).

Each stage map f (B, C, H, W) becomes a spatial attention map: the channel mean of |f|^p,
flattened and L2-normalised per image. The student is trained to match the teacher's maps:

    loss = ce_weight * CE + loss_weight * sum_stages mean_(batch, positions) (at(f_s) - at(f_t))^2

The stages are the last N of each model (N = the smaller stage count, paired from the end as in
famkd.distill.levels), without the pooled level. No heads, no logit-KD term, no warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import Distiller, TrainingData
from famkd.distill.options import DistillOptions
from famkd.distill.registry import register_distiller
from famkd.models.taps import feature_info
from famkd.settings import setting


def attention_map(features: Tensor, p: int) -> Tensor:
    """(B, H * W): the mean over channels of |f|^p, flattened and L2-normalised per image.

    The benchmark takes f^p; for the default (even) p = 2 that is the same as the paper's |f|^p.
    As there (F.normalize), the norm is floored at 1e-12, so an all-zero map stays zero.
    """
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def pooled_to_side(features: Tensor, side: int) -> Tensor:
    """`features` adaptive-average-pooled to side x side, or unchanged when already that size."""
    return features if features.shape[-1] == side else F.adaptive_avg_pool2d(features, side)


def stage_attention_loss(student: Tensor, teacher: Tensor, p: int) -> Tensor:
    """Mean over (batch, positions) of the squared attention difference of one stage pair.

    When the sides differ, the larger map is adaptive-average-pooled to the smaller side before
    its attention map is taken, as the benchmark does. Computed in at least float32 (half-precision
    maps, as under autocast, are upcast first).
    """
    compute = torch.promote_types(student.dtype, torch.float32)
    student, teacher = student.to(compute), teacher.to(compute)
    side = min(student.shape[-1], teacher.shape[-1])
    difference = attention_map(pooled_to_side(student, side), p) - attention_map(pooled_to_side(teacher, side), p)
    return difference.pow(2).mean()


def attention_transfer_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], p: int) -> Tensor:
    """Sum over stage pairs of `stage_attention_loss`."""
    return cast(Tensor, sum(stage_attention_loss(s, t, p) for s, t in zip(student_maps, teacher_maps)))


@dataclass
class ATOptions(DistillOptions):
    """AT's options (the CRD benchmark's `-b 1000 -r 1`, p = 2; mdistiller's CFG.AT).

    loss_weight: weight of the summed attention loss (the benchmark's beta); ce_weight: weight of
    the cross-entropy; p: the power applied to |f| before the channel mean.
    """

    loss_weight: float = setting(1000.0, minimum=0.0)
    ce_weight: float = setting(1.0, minimum=0.0)
    p: int = setting(2, minimum=1)


@register_distiller("at")
class AT(Distiller):
    """Attention Transfer on every paired stage output (post-activation), logged as `at`. Options: ATOptions."""

    Options = ATOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, options: ATOptions, data: TrainingData):
        super().__init__(student, teacher)
        self.options = options
        self.stage_count = min(len(feature_info(student).stages), len(feature_info(teacher).stages))

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        options = self.options
        student = self.student_features(images)
        teacher = self.teacher_features(images)
        count = self.stage_count
        transfer = attention_transfer_loss(student.stages[-count:], teacher.stages[-count:], options.p)
        return student.logits, {
            "ce": options.ce_weight * F.cross_entropy(student.logits, targets),
            "at": options.loss_weight * transfer,
        }
