"""The paper's CIFAR-100 teacher/student pairs and their per-pair settings (docs/method.md).

The YAML files under configs/cifar100/ are generated from this table (tools/make_configs.py)
and a test keeps them in step with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CifarPair:
    teacher: str
    student: str
    alpha: float  # FAM-KD feature-loss weight (the paper's alpha; the option loss_weight)
    student_preact: bool  # FAM-KD matches the student's pre-activation maps
    dkd_beta: float  # DKD baseline's beta (published DKD configs)

    @property
    def name(self) -> str:
        return f"{self.teacher}_{self.student}"

    @property
    def lr(self) -> float:
        """0.01 for MobileNetV2/ShuffleNet students, 0.05 otherwise."""
        return 0.01 if self.student in LIGHTWEIGHT_STUDENTS else 0.05


LIGHTWEIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

CIFAR_PAIRS = (
    CifarPair("resnet56", "resnet20", alpha=1, student_preact=False, dkd_beta=2),
    CifarPair("resnet110", "resnet32", alpha=1, student_preact=False, dkd_beta=2),
    CifarPair("resnet110", "resnet20", alpha=1, student_preact=False, dkd_beta=8),
    CifarPair("resnet32x4", "resnet8x4", alpha=20, student_preact=True, dkd_beta=8),
    CifarPair("wrn_40_2", "wrn_16_2", alpha=5, student_preact=False, dkd_beta=6),
    CifarPair("wrn_40_2", "wrn_40_1", alpha=5, student_preact=False, dkd_beta=6),
    CifarPair("vgg13", "vgg8", alpha=20, student_preact=False, dkd_beta=6),
    CifarPair("vgg13", "MobileNetV2", alpha=20, student_preact=False, dkd_beta=6),
    CifarPair("ResNet50", "MobileNetV2", alpha=20, student_preact=False, dkd_beta=8),
    CifarPair("resnet32x4", "ShuffleV1", alpha=20, student_preact=False, dkd_beta=8),
    CifarPair("resnet32x4", "ShuffleV2", alpha=20, student_preact=False, dkd_beta=8),
    CifarPair("wrn_40_2", "ShuffleV1", alpha=20, student_preact=False, dkd_beta=8),
)
