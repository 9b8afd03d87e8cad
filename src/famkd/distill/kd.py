"""Hinton et al. 2015: cross-entropy plus temperature-softened KL to the teacher's logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import Distiller, TrainingData
from famkd.distill.options import DistillOptions
from famkd.distill.registry import register_distiller
from famkd.settings import setting


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on softened distributions, summed over classes, batch mean, times T^2."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1).mean()
    return kl * temperature**2


@dataclass
class KDOptions(DistillOptions):
    """loss = ce_weight * CE + loss_weight * kd_loss(T = temperature); loss_weight was kd_weight."""

    ALIASES: ClassVar[dict[str, str]] = {"kd_weight": "loss_weight"}
    loss_weight: float = setting(0.9, minimum=0.0)
    ce_weight: float = setting(0.1, minimum=0.0)
    temperature: float = setting(4.0, above=0.0)


@register_distiller("kd")
class KD(Distiller):
    """Hinton et al.'s KD. Options: KDOptions."""

    Options = KDOptions
    needs_features = False

    def __init__(self, student: nn.Module, teacher: nn.Module, options: KDOptions, data: TrainingData):
        super().__init__(student, teacher)
        self.options = options

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.teacher is not None
        logits = self.student(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return logits, {
            "ce": self.options.ce_weight * F.cross_entropy(logits, targets),
            "kd": self.options.loss_weight * kd_loss(logits, teacher_logits, self.options.temperature),
        }
