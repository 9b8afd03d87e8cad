"""Hinton et al. 2015: cross-entropy plus temperature-softened KL to the teacher's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from famkd.distill.base import Distiller
from famkd.distill.registry import register_distiller


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on softened distributions, summed over classes, batch mean, times T^2."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1).mean()
    return kl * temperature**2


@register_distiller("kd")
class KD(Distiller):
    def __init__(self, student, teacher, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9):
        super().__init__(student, teacher)
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def forward(self, images, targets, epoch):
        logits = self.student(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, targets),
            "kd": self.kd_weight * kd_loss(logits, teacher_logits, self.temperature),
        }
