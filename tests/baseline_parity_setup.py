"""The cases of the baseline parity check, shared by tools/make_baseline_fixtures.py and
tests/test_baseline_parity.py: which method on which pair, famkd's options, and the seeded
weights and batch both implementations see (nothing of them is stored in the fixture).

Everything is float64. Weights are drawn per tensor from a generator seeded by the tensor's name
(crc32), so they do not depend on construction order: the student and teacher use their state-dict
names, which equal the community zoo's, and the heads use famkd's names (the fixture script maps
them to the published module's names explicitly).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from famkd.distill import create_distiller
from famkd.distill.base import Distiller
from famkd.models import create_model

FIXTURE_NAME = "baseline_published.pt"
BATCH = 4
EPOCH = 5  # inside DKD's and ReviewKD's 20-epoch warm-up, so the warm-up factor is exercised
NUM_SAMPLES = 64  # CRD's memory rows
NCE_K = 16  # CRD's negatives per sample


@dataclass(frozen=True)
class Case:
    """One method on one teacher -> student pair; `options` are famkd's (the published module is
    configured with the same values by the fixture script)."""

    method: str
    teacher: str
    student: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}:{self.teacher}->{self.student}"


CASES = [
    # mdistiller (KD, DKD, ReviewKD)
    Case("kd", "resnet56", "resnet20", {"temperature": 4.0, "ce_weight": 0.1, "loss_weight": 0.9}),
    Case("kd", "vgg13", "MobileNetV2", {"temperature": 4.0, "ce_weight": 0.1, "loss_weight": 0.9}),
    Case("dkd", "resnet56", "resnet20", {"alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup_epochs": 20}),
    Case("dkd", "vgg13", "MobileNetV2", {"alpha": 1.0, "beta": 6.0, "temperature": 4.0, "warmup_epochs": 20}),
    Case("reviewkd", "resnet56", "resnet20", {"loss_weight": 5.0, "warmup_epochs": 20}),
    Case("reviewkd", "resnet32x4", "ShuffleV1", {"loss_weight": 5.0, "warmup_epochs": 20}),
    # RepDistiller (FitNet, AT, CRD)
    Case("fitnet", "resnet56", "resnet20", {"loss_weight": 100.0, "ce_weight": 1.0}),
    Case("fitnet", "vgg13", "MobileNetV2", {"loss_weight": 100.0, "ce_weight": 1.0}),
    Case("at", "resnet56", "resnet20", {"loss_weight": 1000.0, "ce_weight": 1.0, "p": 2}),
    Case("at", "resnet32x4", "ShuffleV1", {"loss_weight": 1000.0, "ce_weight": 1.0, "p": 2}),
    Case("crd", "resnet56", "resnet20", {"loss_weight": 0.8, "nce_k": NCE_K, "nce_t": 0.07, "nce_mom": 0.5}),
    Case("crd", "vgg13", "MobileNetV2", {"loss_weight": 0.8, "nce_k": NCE_K, "nce_t": 0.07, "nce_mom": 0.5}),
]


def seeded(name: str, shape: torch.Size | tuple[int, ...]) -> Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


@torch.no_grad()
def fill_seeded(module: nn.Module, prefix: str = "") -> None:
    """Overwrite every parameter and BN running statistic with values seeded by `prefix + name`.

    Weights of rank >= 2: N(0, 2 / fan_in); 1-D weights (BN scales): 1 + 0.1 N; biases 0.1 N;
    running means 0.1 N; running variances exp(0.2 N).
    """
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        key = prefix + name
        if not tensor.is_floating_point():
            continue
        noise = seeded(key, tensor.shape)
        if name.endswith("running_mean"):
            tensor.copy_(0.1 * noise)
        elif name.endswith("running_var"):
            tensor.copy_((0.2 * noise).exp())
        elif name.endswith(("memory", "normalizers")):
            continue  # CRD's memories: see memories()
        elif tensor.dim() > 1:
            tensor.copy_(noise * math.sqrt(2.0 / tensor[0].numel()))
        elif name.endswith("weight"):
            tensor.copy_(1.0 + 0.1 * noise)
        else:
            tensor.copy_(0.1 * noise)


def batch() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(images (B, 3, 32, 32) float64, targets (B,), the images' rows in a training set of
    NUM_SAMPLES, that training set's labels)."""
    generator = torch.Generator().manual_seed(19)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 100, (NUM_SAMPLES,), generator=generator)
    indices = torch.randperm(NUM_SAMPLES, generator=generator)[:BATCH]
    return images, labels[indices], indices, labels


def memories(feat_dim: int) -> tuple[Tensor, Tensor]:
    """CRD's initial student and teacher memories (NUM_SAMPLES, feat_dim): the published
    initialisation, uniform in [-s, s], s = 1 / sqrt(feat_dim / 3), from seeded generators."""
    stdv = 1.0 / math.sqrt(feat_dim / 3)
    drawn = []
    for seed in (1, 2):
        generator = torch.Generator().manual_seed(seed)
        drawn.append(torch.rand(NUM_SAMPLES, feat_dim, generator=generator, dtype=torch.float64) * 2 * stdv - stdv)
    return drawn[0], drawn[1]


def crd_negatives() -> Tensor:
    """(B, NCE_K) negatives of each batch image: distinct training images of other classes (as
    RepDistiller's `exact` sampling), from a seeded generator."""
    _, _, indices, labels = batch()
    generator = torch.Generator().manual_seed(23)
    rows = []
    for index in indices.tolist():
        others = (labels != labels[index]).nonzero().flatten()
        rows.append(others[torch.randperm(len(others), generator=generator)[:NCE_K]])
    return torch.stack(rows)


def build_famkd(case: Case) -> Distiller:
    """famkd's distiller for `case`, float64, seeded, in training mode (the teacher in eval mode)."""
    student = create_model(case.student, num_classes=100)
    teacher = create_model(case.teacher, num_classes=100)
    _, _, _, labels = batch()
    distiller = create_distiller(
        case.method,
        student=student,
        teacher=teacher,
        image_size=32,
        num_samples=NUM_SAMPLES,
        labels=labels,
        **case.options,
    ).double()
    fill_seeded(distiller.student, "student.")
    fill_seeded(distiller.teacher, "teacher.")
    for name, module in distiller.named_children():
        if name not in ("student", "teacher"):
            fill_seeded(module, name + ".")
    calibrate(distiller.teacher)
    if case.method == "crd":
        memory: Any = distiller.memory
        memory.student_memory, memory.teacher_memory = memories(memory.student_memory.shape[1])
    return distiller.train()


@torch.no_grad()
def calibrate(teacher: nn.Module) -> None:
    """Set the teacher's BN running statistics to those of one training-mode pass on the batch
    (momentum 1), so that its eval-mode activations stay of order one through the seeded weights."""
    norms = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = 1.0
    teacher.train()
    teacher(batch()[0])
    for norm in norms:
        norm.momentum = 0.1
    teacher.eval()


def gradient_summary(gradient: Tensor) -> list[float]:
    """[L2 norm, mean weighted by linspace(-1, 1) over the flattened order] of one gradient."""
    flat = gradient.detach().double().flatten()
    position = torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64)
    return [flat.norm().item(), (flat * position).mean().item()]
