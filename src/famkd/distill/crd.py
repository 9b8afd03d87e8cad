"""CRD: Contrastive Representation Distillation (Tian, Krishnan and Isola, ICLR 2020), as its benchmark
RepDistiller runs it on CIFAR-100 (`-a 0 -b 0.8`: cross-entropy plus the CRD loss, no KD term).

The pieces (embeddings, memories, NCE loss) are in famkd.distill.contrastive; docs/method.md has the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import TrainingData
from famkd.distill.contrastive import ContrastiveDistiller, ContrastOptions
from famkd.distill.registry import register_distiller


@dataclass
class CRDOptions(ContrastOptions):
    """CRD's options: those of famkd.distill.contrastive.ContrastOptions, at RepDistiller's defaults."""


@register_distiller("crd")
class CRD(ContrastiveDistiller):
    """loss = ce_weight * CE + loss_weight * CRD loss; the embeddings are linear maps, as published."""

    Options = CRDOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, options: CRDOptions, data: TrainingData):
        super().__init__(student, teacher, options, data, hidden=0)

    def forward(
        self, images: Tensor, targets: Tensor, epoch: int, indices: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        student, student_embedding, teacher_embedding = self.encode(images)
        return student.logits, {
            "ce": self.options.ce_weight * F.cross_entropy(student.logits, targets),
            "crd": self.options.loss_weight * self.contrast_loss(student_embedding, teacher_embedding, indices),
        }
