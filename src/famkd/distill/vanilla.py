"""Plain supervised training: cross-entropy only (also how teachers are trained)."""

from __future__ import annotations

import torch.nn.functional as F

from famkd.distill.base import Distiller
from famkd.distill.registry import register_distiller


@register_distiller("vanilla")
class Vanilla(Distiller):
    needs_teacher = False

    def __init__(self, student, teacher=None, ce_weight: float = 1.0):
        super().__init__(student, None)
        self.ce_weight = ce_weight

    def forward(self, images, targets, epoch):
        logits = self.student(images)
        return logits, {"ce": self.ce_weight * F.cross_entropy(logits, targets)}
