"""forward() of fam_kd_l2l, reviewkd and fam_reviewkd against direct float64 references (docs/method.md).

Each reference reads a deep copy of the distiller's parameters and writes every step out: nearest
resizing by index arithmetic, BatchNorm in training mode from the batch statistics, FAM by its literal
definition (famkd.fam.direct_global_branch with the published box mask), ReviewKD's attention-based
fusion with its concatenation, and the hierarchical context loss with average pooling by reshaping.
The whole loss dict is compared, loss_weight, ce_weight and warm-up included, at an epoch inside the
warm-up and at one after it, and so is the gradient of every trained parameter.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import reference_fam_kd as reference
from famkd.distill import create_distiller
from famkd.fam import FrequencyAttention, direct_global_branch
from famkd.models import create_model

# (teacher, student). Levels: three stages and the pooled one. resnet14 -> resnet8 has equal sides (32, 16, 8),
# so ReviewKD's fusion upsamples each residual; resnet8 -> MobileNetV2 is heterogeneous: the student's last
# three maps (8, 4, 2) are a quarter of the teacher's sides, so each is resized (nearest) before its output head.
PAIRS = [("resnet14", "resnet8"), ("resnet8", "MobileNetV2")]
CE_WEIGHT = 0.7
WARMUP_EPOCHS = 20
EPOCHS = [5, 25]  # warm-up factor 5/20 = 1/4, then 1
BN_EPS = 1e-5
# The hierarchical context loss per map side: after the full-size MSE (weight 1), the MSEs of the maps
# average-pooled to these sides, with these weights; the level's sum is divided by the sum of its weights.
CONTEXT_POOLS = {
    32: [(4, 1 / 2), (2, 1 / 4), (1, 1 / 8)],
    16: [(4, 1 / 2), (2, 1 / 4), (1, 1 / 8)],
    8: [(4, 1 / 2), (2, 1 / 4), (1, 1 / 8)],
    1: [],
}


def batch_norm_train(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """(x - batch mean) / sqrt(biased batch variance + eps) * weight + bias, per channel."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(variance + BN_EPS) * bn.weight[:, None, None] + bn.bias[:, None, None]


def direct_fam(x: Tensor, fam: FrequencyAttention) -> Tensor:
    """gamma1 * Re(IFFT2(M * (K . FFT2(x)))) + gamma2 * (1x1 convolution with bias)(x), M the ideal box mask."""
    mask = torch.fft.ifftshift(reference.centered_box_mask(x.shape[-1]))  # FFT index order
    local = reference.conv1x1(x, fam.local.weight, fam.local.bias)
    return fam.gamma1 * direct_global_branch(x, fam.kernel, mask) + fam.gamma2 * local


def mse(out: Tensor, target: Tensor) -> Tensor:
    return ((out - target) ** 2).mean()


def average_pool(x: Tensor, side: int) -> Tensor:
    """Mean over (S/side x S/side) blocks: adaptive average pooling to side x side when side divides S."""
    batch, channels, size = x.shape[:3]
    block = size // side
    return x.reshape(batch, channels, side, block, side, block).mean(dim=(3, 5))


def context_loss(outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for out, target in zip(outputs, targets):
        pools = CONTEXT_POOLS[out.shape[-1]]
        loss = mse(out, target) + sum(
            weight * mse(average_pool(out, s), average_pool(target, s)) for s, weight in pools
        )
        total = total + loss / (1 + sum(weight for _, weight in pools))
    return total


def l2l_loss(distiller, student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """Sum over levels of MSE(BN(FAM(student map resized to the teacher's side)), teacher map)."""
    total = torch.zeros((), dtype=torch.float64)
    for head, x, target in zip(distiller.heads, student_maps, teacher_maps):
        x = reference.nearest_resize(x, target.shape[-1])
        total = total + mse(batch_norm_train(direct_fam(x, head.fam), head.bn), target)
    return total


def conv_output(head, x: Tensor) -> Tensor:
    """ReviewKD's output head: 3x3 convolution (padding 1, no bias), then BN."""
    conv, bn = head.output_head
    return batch_norm_train(F.conv2d(x, conv.weight, padding=1), bn)


def fam_output(head, x: Tensor) -> Tensor:
    """FAM + ReviewKD's output head: FAM, then BN."""
    fam, bn = head.output_head
    return batch_norm_train(direct_fam(x, fam), bn)


def review_loss(output: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The ReviewKD feature loss with `output(head, x)` as each level's output head."""

    def loss(distiller, student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
        outputs, residual = [], None
        for head, x, target in zip(distiller.heads, student_maps[::-1], teacher_maps[::-1]):  # deepest first
            conv, bn = head.input_proj
            x = batch_norm_train(reference.conv1x1(x, conv.weight), bn)
            if residual is not None:  # ABF: cat(x, upsampled residual) -> 1x1 conv -> sigmoid -> (a, b)
                residual = reference.nearest_resize(residual, x.shape[-1])
                attention = head.attention[0]
                maps = torch.sigmoid(reference.conv1x1(torch.cat([x, residual], 1), attention.weight, attention.bias))
                x = x * maps[:, 0:1] + residual * maps[:, 1:2]
            x = reference.nearest_resize(x, target.shape[-1])
            outputs.append(output(head, x))
            residual = x
        return context_loss(outputs[::-1], teacher_maps)

    return loss


# method: (its options, its loss term, whether the teacher side uses pre-activation maps, the reference loss)
CASES = {
    "fam_kd_l2l": ({"loss_weight": 3.0}, "fam_kd", False, l2l_loss),
    "reviewkd": ({"loss_weight": 2.5, "max_mid_channels": 16}, "reviewkd", True, review_loss(conv_output)),
    "fam_reviewkd": ({"loss_weight": 2.5, "max_mid_channels": 16}, "reviewkd", True, review_loss(fam_output)),
}


def levels(features, count: int, preact: bool) -> list[Tensor]:
    """The last `count - 1` stage maps (pre-activation if `preact`), shallow to deep, then the pooled vector."""
    stages = features.preact if preact else features.stages
    return list(stages[len(stages) - count + 1 :]) + [features.pooled[:, :, None, None]]


def randomize_head_affines(distiller, generator: torch.Generator) -> None:
    """Random BN weights and biases and FAM gammas, so that a swapped or dropped one shows."""
    with torch.no_grad():
        for module in distiller.heads.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.5, generator=generator)
            elif isinstance(module, FrequencyAttention):
                module.gamma1.uniform_(0.3, 1.5, generator=generator)
                module.gamma2.uniform_(0.3, 1.5, generator=generator)


def assert_close_named(name: str, actual: Tensor, expected: Tensor, rtol: float, atol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda text: f"{name}: {text}")


@pytest.mark.parametrize("epoch", EPOCHS)
@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
@pytest.mark.parametrize("method", list(CASES))
def test_forward_equals_the_direct_reference(method, teacher_name, student_name, epoch):
    options, loss_name, teacher_preact, feature_loss = CASES[method]
    torch.manual_seed(0)
    distiller = create_distiller(
        method,
        student=create_model(student_name),
        teacher=create_model(teacher_name),
        ce_weight=CE_WEIGHT,
        warmup_epochs=WARMUP_EPOCHS,
        **options,
    ).double()
    randomize_head_affines(distiller, torch.Generator().manual_seed(1))
    oracle = copy.deepcopy(distiller)  # train-mode BNs move their running statistics: keep the two apart
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([4, 99])

    _, losses = distiller.train()(images, targets, epoch=epoch)
    sum(losses.values()).backward()

    count = len(distiller.heads)
    student = oracle.train().student.forward_features(images)
    with torch.no_grad():
        teacher = oracle.teacher.forward_features(images)
    feature = feature_loss(oracle, levels(student, count, False), levels(teacher, count, teacher_preact))
    expected = {
        "ce": CE_WEIGHT * F.cross_entropy(student.logits, targets),
        loss_name: options["loss_weight"] * min(epoch / WARMUP_EPOCHS, 1.0) * feature,
    }
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert_close_named(name, losses[name], value, rtol=1e-12, atol=0)

    sum(expected.values()).backward()
    oracle_parameters = dict(oracle.named_parameters())
    for name, parameter in distiller.named_parameters():
        if parameter.requires_grad:
            expected_grad = oracle_parameters[name].grad
            assert parameter.grad is not None and expected_grad is not None, name
            assert_close_named(name, parameter.grad, expected_grad, rtol=1e-9, atol=1e-12)
