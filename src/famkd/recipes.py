"""The paper's CIFAR-100 and ImageNet teacher/student pairs and their per-pair settings (docs/method.md).

The YAML files under configs/cifar100/ and configs/imagenet/ are generated from these tables
(tools/make_configs.py) and a test keeps them in step with them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CifarPair:
    teacher: str
    student: str
    alpha: float  # FAM-KD feature-loss weight (the paper's alpha; the option loss_weight)
    student_preact: bool  # FAM-KD matches the student's pre-activation maps
    dkd_beta: float  # DKD baseline's beta (mdistiller's configs/cifar100/dkd/; resnet110 -> resnet20: famkd's choice)
    reviewkd_weight: float = 5.0  # ReviewKD's CIFAR-100/script/reviewKD.sh; else mdistiller's 5

    @property
    def name(self) -> str:
        return f"{self.teacher}_{self.student}"

    @property
    def lr(self) -> float:
        """0.01 for MobileNetV2/ShuffleNet students, 0.05 otherwise."""
        return 0.01 if self.student in LIGHTWEIGHT_STUDENTS else 0.05


LIGHTWEIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

CIFAR_PAIRS = (
    CifarPair("resnet56", "resnet20", alpha=1, student_preact=False, dkd_beta=2, reviewkd_weight=0.6),
    CifarPair("resnet110", "resnet32", alpha=1, student_preact=False, dkd_beta=2, reviewkd_weight=1.0),
    CifarPair("resnet110", "resnet20", alpha=1, student_preact=False, dkd_beta=2),
    CifarPair("resnet32x4", "resnet8x4", alpha=20, student_preact=True, dkd_beta=8),
    CifarPair("wrn_40_2", "wrn_16_2", alpha=5, student_preact=False, dkd_beta=6),
    CifarPair("wrn_40_2", "wrn_40_1", alpha=5, student_preact=False, dkd_beta=6),
    CifarPair("vgg13", "vgg8", alpha=20, student_preact=False, dkd_beta=6),
    CifarPair("vgg13", "MobileNetV2", alpha=20, student_preact=False, dkd_beta=6),
    CifarPair("ResNet50", "MobileNetV2", alpha=20, student_preact=False, dkd_beta=8),
    CifarPair("resnet32x4", "ShuffleV1", alpha=20, student_preact=False, dkd_beta=8),
    CifarPair("resnet32x4", "ShuffleV2", alpha=20, student_preact=False, dkd_beta=8, reviewkd_weight=8.0),
    CifarPair("wrn_40_2", "ShuffleV1", alpha=20, student_preact=False, dkd_beta=8),
)


# ---- ImageNet pairs ------------------------------------------------------------------------------
# The settings that differ between the two ImageNet pairs; everything else is shared (docs/method.md,
# "ImageNet"). configs/imagenet/ is generated from this table too.


@dataclass(frozen=True)
class ImageNetPair:
    """An ImageNet teacher -> student pair and the per-pair values of its methods' recipes."""

    teacher: str
    student: str
    published_name: str  # the pair's folder in the published configs (mdistiller, FAM-KD): configs/imagenet/<this>/
    fam_student_preact: bool  # FAM-KD matches the student's pre-activation maps
    reviewkd_weight: float  # ReviewKD's loss weight (mdistiller's configs)
    reviewkd_mid_channels: int  # ReviewKD's head width C_mid (the published ReviewKD ImageNet code)
    dkd_beta: float  # DKD's beta (mdistiller's configs)

    @property
    def name(self) -> str:
        return f"{self.teacher}_{self.student}"


IMAGENET_PAIRS = (
    ImageNetPair(
        "resnet34",
        "resnet18",
        "r34_r18",
        fam_student_preact=False,
        reviewkd_weight=1.0,
        reviewkd_mid_channels=512,
        dkd_beta=0.5,
    ),
    ImageNetPair(
        "resnet50",
        "MobileNetV1",
        "r50_mv1",
        fam_student_preact=True,
        reviewkd_weight=8.0,
        reviewkd_mid_channels=256,
        dkd_beta=2.0,
    ),
)


# ---- published CIFAR-100 test top-1 (%) ----------------------------------------------------------
# As listed in docs/method.md, "Reference numbers" (tests/test_results.py checks every number against
# that section). Papers report the best epoch's accuracy, averaged over runs. `famkd results --reference`
# shows them beside measured runs.


@dataclass(frozen=True)
class PublishedTop1:
    """A published distillation result: `method` on `teacher` -> `student`."""

    method: str
    teacher: str
    student: str
    top1: float
    variant: str = ""  # the distill option that differs from the method's defaults, e.g. "hpf=gaussian"


PUBLISHED_DISTILLATION_TOP1 = (
    PublishedTop1("reviewkd", "resnet110", "resnet32", 73.89),
    PublishedTop1("reviewkd", "resnet32x4", "resnet8x4", 75.63),
    PublishedTop1("fam_reviewkd", "resnet110", "resnet32", 74.28),
    PublishedTop1("fam_reviewkd", "resnet32x4", "resnet8x4", 76.19),
    PublishedTop1("fam_kd", "resnet110", "resnet32", 74.45),
    PublishedTop1("fam_kd", "resnet32x4", "resnet8x4", 76.84),
    PublishedTop1("fam_kd", "resnet110", "resnet32", 74.49, variant="hpf=gaussian"),
    PublishedTop1("fam_kd", "resnet32x4", "resnet8x4", 76.75, variant="hpf=gaussian"),
    PublishedTop1("fam_kd", "resnet110", "resnet32", 74.50, variant="hpf=butterworth"),
    PublishedTop1("fam_kd", "resnet32x4", "resnet8x4", 76.71, variant="hpf=butterworth"),
)

# Models trained alone (method vanilla): the community teacher checkpoints, then the published students.
PUBLISHED_VANILLA_TOP1 = {
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "wrn_40_2": 75.61,
    "vgg13": 74.64,
    "ResNet50": 79.34,
    "resnet20": 69.06,
    "resnet32": 71.14,
    "resnet8x4": 72.50,
    "wrn_16_2": 73.26,
    "wrn_40_1": 71.98,
    "vgg8": 70.36,
}
