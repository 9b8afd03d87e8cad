"""Decoupled KD (Zhao et al., CVPR 2022) as published in mdistiller (docs/method.md).

The KD loss is split into TCKD, a binary KL over (target, all non-target) probabilities, and
NCKD, a KL over the non-target classes only; each gets its own weight:

    loss = ce_weight * CE + w(epoch) * (alpha * TCKD + beta * NCKD),  w(epoch) = min(epoch / warmup_epochs, 1)

Both KLs use temperature-softened teacher and student distributions, are multiplied by T^2,
summed over classes and averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import Distiller, TrainingData
from famkd.distill.levels import warmup_factor
from famkd.distill.options import DistillOptions
from famkd.distill.registry import register_distiller
from famkd.settings import setting

TARGET_SHIFT = 1000.0
"""Subtracted from the target's softened logit before NCKD's softmax (as published), so the target
class drops out of the non-target distribution."""


def kl_sum_mean(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """KL(p_teacher || p_student) from log-probabilities (B, K): summed over K, averaged over B."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1).mean()


def binary_log_probs(scaled_logits: Tensor, target_mask: Tensor) -> Tensor:
    """(B, 2): log of (probability of the target class, total probability of the other classes).

    Computed with logsumexp: the same values as the published log(sum of softmax probabilities),
    without its log(0) when a probability underflows.
    """
    log_total = torch.logsumexp(scaled_logits, dim=1)
    log_target = scaled_logits[target_mask]  # one target per row, in row order
    log_others = scaled_logits.masked_fill(target_mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([log_target, log_others], dim=1) - log_total[:, None]


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each a KL at temperature T times T^2, summed over classes and averaged over the batch.

    Computed in at least float32: under bf16 autocast, TCKD (often a small KL between two close
    binary distributions) would otherwise be off by several percent from logsumexp rounding.
    """
    compute = torch.promote_types(student_logits.dtype, torch.float32)
    target_mask = F.one_hot(targets, student_logits.shape[1]).bool()
    student, teacher = student_logits.to(compute) / temperature, teacher_logits.to(compute) / temperature
    tckd = kl_sum_mean(binary_log_probs(teacher, target_mask), binary_log_probs(student, target_mask))
    shift = TARGET_SHIFT * target_mask
    nckd = kl_sum_mean(F.log_softmax(teacher - shift, dim=1), F.log_softmax(student - shift, dim=1))
    return tckd * temperature**2, nckd * temperature**2


@dataclass
class DKDOptions(DistillOptions):
    """DKD's options, named as in the paper (mdistiller's CFG.DKD defaults).

    alpha: weight of TCKD; beta: weight of NCKD (8 by default; the published CIFAR-100 configs set
    2, 6 or 8 per pair, see famkd.recipes); temperature: the softening temperature T;
    warmup_epochs: the DKD terms are scaled by min(epoch / warmup_epochs, 1), 0 = no warm-up;
    ce_weight: weight of the cross-entropy.
    """

    alpha: float = setting(1.0, minimum=0.0)
    beta: float = setting(8.0, minimum=0.0)
    temperature: float = setting(4.0, above=0.0)
    warmup_epochs: int = setting(20, minimum=0)
    ce_weight: float = setting(1.0, minimum=0.0)


@register_distiller("dkd")
class DKD(Distiller):
    """Decoupled KD. Logs `ce`, `dkd_tckd` (alpha * w * TCKD) and `dkd_nckd` (beta * w * NCKD). Options: DKDOptions."""

    Options = DKDOptions
    needs_features = False

    def __init__(self, student: nn.Module, teacher: nn.Module, options: DKDOptions, data: TrainingData):
        super().__init__(student, teacher)
        self.options = options

    def term_weights(self, position: int) -> dict[str, float]:
        weight = warmup_factor(position, self.options.warmup_epochs)
        return {"dkd_tckd": self.options.alpha * weight, "dkd_nckd": self.options.beta * weight}

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        options = self.options
        logits = self.student(images)
        teacher_logits = self.teacher_features(images).logits
        tckd, nckd = dkd_terms(logits, teacher_logits, targets, options.temperature)
        weights = self.term_weights(epoch)
        return logits, {
            "ce": options.ce_weight * F.cross_entropy(logits, targets),
            "dkd_tckd": weights["dkd_tckd"] * tckd,
            "dkd_nckd": weights["dkd_nckd"] * nckd,
        }
