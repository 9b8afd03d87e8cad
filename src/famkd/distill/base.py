"""The distiller contract shared by every method."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.levels import level_features, warmup_factor
from famkd.models.features import FeatureModel


class Distiller(nn.Module):
    """Holds a trainable student, a frozen teacher and the method's training-only heads.

    `forward(images, targets, epoch)` returns `(student_logits, {loss_name: scalar tensor})`;
    the trainer sums the dict and logs each term. Epochs count from 1. Everything that is
    neither `student` nor `teacher` is a head: it is trained, checkpointed, and left out of
    the exported student.
    """

    needs_teacher = True

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_parameters(self) -> Iterator[nn.Parameter]:
        return self.student.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        for name, parameter in self.named_parameters():
            if not name.startswith(("student.", "teacher.")):
                yield parameter

    def head_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("student.", "teacher."))}

    def num_head_parameters(self) -> int:
        return sum(p.numel() for p in self.head_parameters())

    @torch.no_grad()
    def teacher_features(self, images: Tensor):
        """The frozen teacher's features, computed without autograd."""
        return self.teacher.forward_features(images)

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class FeatureDistiller(Distiller):
    """Heads map the student's level maps onto the teacher's; subclasses say how and with which loss.

    loss = ce_weight * CE + feature_weight * min(epoch / warmup_epochs, 1) * feature_loss(heads(student), teacher),
    logged as {"ce": ..., loss_name: ...}. The levels are those of `famkd.distill.levels`; the
    teacher side uses its pre-activation maps when `teacher_preact`.
    """

    loss_name: str
    teacher_preact: bool

    def __init__(self, student, teacher, feature_weight: float, ce_weight: float, warmup_epochs: int, student_preact: bool):
        super().__init__(student, teacher)
        self.feature_weight = feature_weight
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs
        self.student_preact = student_preact
        self.heads = nn.ModuleList()

    def head_outputs(self, student_maps: list[Tensor]) -> list[Tensor]:
        """Head outputs, shallow to deep, from the student's level maps (shallow to deep)."""
        raise NotImplementedError

    def feature_loss(self, outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, images, targets, epoch):
        student = self.student.forward_features(images)
        teacher = self.teacher_features(images)
        count = len(self.heads)
        outputs = self.head_outputs(level_features(student, count, self.student_preact))
        feature_loss = self.feature_loss(outputs, level_features(teacher, count, self.teacher_preact))
        return student.logits, {
            "ce": self.ce_weight * F.cross_entropy(student.logits, targets),
            self.loss_name: self.feature_weight * warmup_factor(epoch, self.warmup_epochs) * feature_loss,
        }
