"""FitNets (Romero et al., ICLR 2015) as in the CRD benchmark (RepDistiller, `--distill hint -a 0 -b 100`).

A learned regressor maps the student's hint feature (one middle stage) onto the teacher's feature
at the same depth, trained jointly with the student:

    loss = ce_weight * CE + loss_weight * MSE(regressor(student hint), teacher hint)

The benchmark trains in one stage, with no logit-KD term and no warm-up; so does famkd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import Distiller, TrainingData
from famkd.distill.options import DistillOptions
from famkd.distill.registry import register_distiller
from famkd.errors import ConfigError
from famkd.models import FeatureInfo
from famkd.models.taps import feature_info
from famkd.settings import setting


def hint_stages(student: FeatureInfo, teacher: FeatureInfo) -> tuple[int, int]:
    """The hint's stage index in the student's and in the teacher's stages (stem excluded).

    The stages are paired from the end as in famkd.distill.levels (the last N of each, N = the
    smaller stage count), and the hint is the middle pair, (N - 1) // 2 among them: the second of
    three stages, and the second of four (the shallower middle). That is RepDistiller's
    `hint_layer=2` for the 3-stage ResNet/WRN/ShuffleNet and the 4-stage VGG/MobileNetV2/ResNet50
    models alike, whose feature list starts with the stem.
    """
    count = min(len(student.stages), len(teacher.stages))
    middle = (count - 1) // 2
    return len(student.stages) - count + middle, len(teacher.stages) - count + middle


def regression_conv(in_channels: int, out_channels: int, student_size: int, teacher_size: int) -> nn.Module:
    """RepDistiller's ConvReg convolution, chosen by how the two map sides relate.

    Student side twice the teacher's: 3x3 conv, stride 2, padding 1. Half the teacher's: 4x4
    transposed conv, stride 2, padding 1. Otherwise, when not smaller: a valid conv of kernel
    1 + student_size - teacher_size (1x1 for equal sides). Any other relation is refused, as there.
    """
    if student_size == 2 * teacher_size:
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
    if 2 * student_size == teacher_size:
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
    if student_size >= teacher_size:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1 + student_size - teacher_size)
    raise ConfigError(
        f"fitnet cannot regress a {student_size}x{student_size} student hint onto a {teacher_size}x{teacher_size} "
        "teacher hint: the student map must be half the teacher's side, or not smaller than it"
    )


def hint_regressor(in_channels: int, out_channels: int, student_size: int, teacher_size: int) -> nn.Sequential:
    """ConvReg: the size-dependent convolution (with bias), then BN and ReLU, student hint -> teacher hint shape."""
    conv = regression_conv(in_channels, out_channels, student_size, teacher_size)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


@dataclass
class FitNetOptions(DistillOptions):
    """FitNet's options (the CRD benchmark's `-b 100 -r 1`; mdistiller's CFG.FITNET).

    loss_weight: weight of the hint MSE; ce_weight: weight of the cross-entropy.
    """

    loss_weight: float = setting(100.0, minimum=0.0)
    ce_weight: float = setting(1.0, minimum=0.0)


@register_distiller("fitnet")
class FitNet(Distiller):
    """FitNets hint loss on the middle stage (see `hint_stages`), logged as `fitnet`. Options: FitNetOptions.

    Both hints are stage outputs (post-activation), as in the benchmark. The one head, `regressor`,
    is sized from the models' feature_info at the training images' side.
    """

    Options = FitNetOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, options: FitNetOptions, data: TrainingData):
        super().__init__(student, teacher)
        self.options = options
        self.student_stage, self.teacher_stage = hint_stages(feature_info(student), feature_info(teacher))
        student_hint = feature_info(student).stages[self.student_stage]
        teacher_hint = feature_info(teacher).stages[self.teacher_stage]
        self.regressor = hint_regressor(
            student_hint.channels,
            teacher_hint.channels,
            student_hint.spatial_size(data.image_size),
            teacher_hint.spatial_size(data.image_size),
        )

    def forward(self, images: Tensor, targets: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        student = self.student_features(images)
        teacher = self.teacher_features(images)
        hint = self.regressor(student.stages[self.student_stage])
        return student.logits, {
            "ce": self.options.ce_weight * F.cross_entropy(student.logits, targets),
            "fitnet": self.options.loss_weight * F.mse_loss(hint, teacher.stages[self.teacher_stage]),
        }
