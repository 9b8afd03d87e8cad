"""The distiller contract shared by every method."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

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
