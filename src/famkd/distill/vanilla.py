"""Plain supervised training: cross-entropy only (also how teachers are trained)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import Distiller, TrainingData
from famkd.distill.options import DistillOptions
from famkd.distill.registry import register_distiller
from famkd.settings import setting


@dataclass
class VanillaOptions(DistillOptions):
    ce_weight: float = setting(1.0, minimum=0.0)


@register_distiller("vanilla")
class Vanilla(Distiller):
    """Cross-entropy only. Options: VanillaOptions."""

    needs_teacher = False
    needs_features = False
    Options = VanillaOptions

    def __init__(
        self,
        student: nn.Module,
        teacher: None = None,
        options: VanillaOptions | None = None,
        data: TrainingData | None = None,
    ):
        super().__init__(student, None)
        self.options = options if options is not None else VanillaOptions()

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.student(images)
        return logits, {"ce": self.options.ce_weight * F.cross_entropy(logits, targets)}
