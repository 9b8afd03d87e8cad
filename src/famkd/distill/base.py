"""The distiller contract shared by every method."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.levels import level_features, warmup_factor
from famkd.distill.options import DistillOptions, resolve_options
from famkd.errors import ConfigError
from famkd.fam import HIGHPASS_FILTERS
from famkd.models.features import Features
from famkd.models.taps import forward_features, has_preact, tap_reader
from famkd.settings import setting


@dataclass(frozen=True)
class TrainingData:
    """What a distiller needs to know of its training data before it sees a batch.

    image_size: the side of the (square) training images, which fixes every feature level's size;
    num_samples: the number of training images (0 = unknown), the size of a per-sample memory bank;
    labels: the training images' labels, int64 (num_samples,), or None where unknown (a contrastive
    method draws each image's negatives from the other classes with them).
    """

    image_size: int = 32
    num_samples: int = 0
    labels: Tensor | None = None


class Distiller(nn.Module):
    """Holds a trainable student, a frozen teacher and the method's training-only heads.

    `forward(*inputs, position)` returns `(outputs, {loss_name: scalar tensor})`; the trainer sums the
    dict and logs each term, and the task reads `outputs` for its training metrics. A classification
    distiller's inputs are (images, targets), its position the epoch (from 1) and its outputs the
    student's logits; a detection distiller's (famkd.detection.distill) are (images, targets), the
    iteration and None. Everything that is neither `student` nor `teacher` is a head: it is trained,
    checkpointed, and left out of the exported student. `term_weights(position)` gives the weight each
    warmed-up term carries at `position`, which the trainer logs.

    Subclasses name their options class in `Options` and are built as
    `cls(student, teacher, options, data)` (`data`: a TrainingData); use
    `famkd.distill.create_distiller`. A method that needs each image's position in the training
    set (a memory bank) sets `needs_sample_indices`: its forward then takes them as a fourth
    argument, `forward(images, targets, epoch, indices)`. A method that reads the logits alone clears
    `needs_features`: its models need no feature taps.
    """

    needs_teacher: ClassVar[bool] = True
    needs_sample_indices: ClassVar[bool] = False
    needs_features: ClassVar[bool] = True  # reads feature taps (False: the logits alone)
    Options: ClassVar[type[DistillOptions]] = DistillOptions

    student: Any  # a classifier with feature taps (famkd.models.taps), or a torchvision FasterRCNN for detection
    teacher: Any

    def __init__(self, student: nn.Module, teacher: nn.Module | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @classmethod
    def resolve_options(cls, values: Mapping[str, Any], method: str) -> Any:
        """This method's options object for `values` (see famkd.distill.options.resolve_options)."""
        return resolve_options(cls.Options, values, method)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """The student's trainable parameters (a detector's frozen stem and first stage left out)."""
        return (parameter for parameter in self.student.parameters() if parameter.requires_grad)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        for name, parameter in self.named_parameters():
            if not name.startswith(("student.", "teacher.")):
                yield parameter

    def head_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("student.", "teacher."))}

    def num_head_parameters(self) -> int:
        return sum(p.numel() for p in self.head_parameters())

    def student_features(self, images: Tensor) -> Features:
        """The student's features (famkd.models.forward_features)."""
        return forward_features(self.student, images)

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> Features:
        """The frozen teacher's features, computed without autograd."""
        assert self.teacher is not None
        return forward_features(self.teacher, images)

    def term_weights(self, position: int) -> dict[str, float]:
        """The weight of each loss term that a warm-up scales, at `position` (none by default)."""
        return {}

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Tensor]]:
        raise NotImplementedError


@dataclass
class FeatureOptions(DistillOptions):
    """Options shared by the feature distillers: the loss weights, the warm-up and the student's taps.

    loss = ce_weight * CE + loss_weight * min(epoch / warmup_epochs, 1) * feature loss;
    student_preact matches the student's pre-activation maps instead of its stage outputs.
    """

    loss_weight: float = setting(1.0, minimum=0.0)
    ce_weight: float = setting(1.0, minimum=0.0)
    warmup_epochs: int = setting(20, minimum=0)
    student_preact: bool = False


class FeatureDistiller(Distiller):
    """Heads map the student's level maps onto the teacher's; subclasses say how and with which loss.

    loss = ce_weight * CE + loss_weight * min(epoch / warmup_epochs, 1) * feature_loss(heads(student), teacher),
    logged as {"ce": ..., loss_name: ...}. The levels are those of `famkd.distill.levels`; the
    teacher side uses its pre-activation maps when `teacher_preact`.
    """

    loss_name: ClassVar[str]
    teacher_preact: ClassVar[bool]

    def __init__(self, student: nn.Module, teacher: nn.Module, options: FeatureOptions):
        super().__init__(student, teacher)
        if options.student_preact and not has_preact(student):
            reader = tap_reader(student)
            raise ConfigError(
                f"distill.student_preact=true, but the student {reader.label if reader else ''} has no pre-activation "
                "maps: none of its taps ends in an activation module; set distill.student_preact=false"
            )
        self.options = options
        self.heads = nn.ModuleList()

    def head_outputs(self, student_maps: list[Tensor]) -> list[Tensor]:
        """Head outputs, shallow to deep, from the student's level maps (shallow to deep)."""
        raise NotImplementedError

    def feature_loss(self, outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def term_weights(self, position: int) -> dict[str, float]:
        return {self.loss_name: self.options.loss_weight * warmup_factor(position, self.options.warmup_epochs)}

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        options = self.options
        student = self.student_features(images)
        teacher = self.teacher_features(images)
        count = len(self.heads)
        outputs = self.head_outputs(level_features(student, count, options.student_preact))
        feature_loss = self.feature_loss(outputs, level_features(teacher, count, self.teacher_preact))
        return student.logits, {
            "ce": options.ce_weight * F.cross_entropy(student.logits, targets),
            self.loss_name: self.term_weights(epoch)[self.loss_name] * feature_loss,
        }


@dataclass
class FamFilterOptions:
    """The FAM heads' high-pass filter (famkd.fam.masks): its kind, cutoff and Butterworth order."""

    hpf: str = setting("ideal", choices=HIGHPASS_FILTERS)
    cutoff: float = setting(0.1, above=0.0)
    order: int = setting(2, minimum=1)

    def fam_options(self) -> dict[str, Any]:
        """Keyword arguments for FrequencyAttention."""
        return {"hpf": self.hpf, "cutoff": self.cutoff, "order": self.order}
