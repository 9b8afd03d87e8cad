"""DKD, FitNet and AT against formulas written out here (float64), hand-worked numbers, and every paper pair."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from famkd.distill import create_distiller, list_options  # the imports below also register dkd, at, fitnet
from famkd.distill.at import attention_map, stage_attention_loss
from famkd.distill.dkd import dkd_terms
from famkd.distill.fitnet import hint_regressor, hint_stages, regression_conv
from famkd.errors import ConfigError
from famkd.models import FeatureInfo, FeatureModel, Features, StageInfo, create_model
from famkd.recipes import CIFAR_PAIRS

METHODS = ["dkd", "fitnet", "at"]
PAIR_BY_NAME = {pair.name: pair for pair in CIFAR_PAIRS}


class FixedLogits(FeatureModel):
    """A stand-in model whose logits are a parameter, whatever the images: feeds a distiller chosen logits."""

    def __init__(self, logits: Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward_features(self, x: Tensor) -> Features:
        return Features(stages=[], preact=[], pooled=self.logits, logits=self.logits)


def build(method, pair, **options):
    torch.manual_seed(0)
    return create_distiller(method, student=create_model(pair.student), teacher=create_model(pair.teacher), **options)


def dkd_on_logits(student_logits, teacher_logits, **options):
    return create_distiller(
        "dkd", student=FixedLogits(student_logits), teacher=FixedLogits(teacher_logits), **options
    ).train()


def random_logits(batch=5, classes=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    return student, teacher, torch.randint(classes, (batch,), generator=generator)


def reference_dkd(student_logits, teacher_logits, targets, temperature):
    """The published decoupled terms (Zhao et al. 2022, Eq. 2-5), one sample and one class at a time.

    With p = softmax(z / T): TCKD = KL over b = (p_target, 1 - p_target); NCKD = KL over the
    non-target classes, renormalised among themselves (the target class left out). Each is
    averaged over the samples and multiplied by T^2.
    """
    tckd_sum, nckd_sum = 0.0, 0.0
    for z_s, z_t, target in zip(student_logits, teacher_logits, targets.tolist()):
        p_s = torch.exp(z_s / temperature) / torch.exp(z_s / temperature).sum()
        p_t = torch.exp(z_t / temperature) / torch.exp(z_t / temperature).sum()
        b_s = [p_s[target], 1 - p_s[target]]
        b_t = [p_t[target], 1 - p_t[target]]
        tckd_sum = tckd_sum + sum(b_t[i] * torch.log(b_t[i] / b_s[i]) for i in range(2))
        others = [k for k in range(len(z_s)) if k != target]
        q_s = torch.stack([torch.exp(z_s[k] / temperature) for k in others])
        q_t = torch.stack([torch.exp(z_t[k] / temperature) for k in others])
        q_s, q_t = q_s / q_s.sum(), q_t / q_t.sum()
        nckd_sum = nckd_sum + sum(q_t[i] * torch.log(q_t[i] / q_s[i]) for i in range(len(others)))
    batch = len(targets)
    return tckd_sum * temperature**2 / batch, nckd_sum * temperature**2 / batch


def test_default_options():
    assert list_options("dkd") == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20, "ce_weight": 1.0}
    assert list_options("fitnet") == {"loss_weight": 100.0, "ce_weight": 1.0}
    assert list_options("at") == {"loss_weight": 1000.0, "ce_weight": 1.0, "p": 2}


# DKD


@pytest.mark.parametrize("temperature", [4.0, 1.5])
def test_dkd_terms_equal_the_published_formula(temperature):
    student, teacher, targets = random_logits()
    distiller = dkd_on_logits(student, teacher, alpha=1.5, beta=3.0, temperature=temperature, warmup_epochs=0)
    _, losses = distiller(torch.zeros(5, 3, 4, 4), targets, epoch=1)
    tckd, nckd = reference_dkd(student, teacher, targets, temperature)
    assert set(losses) == {"ce", "dkd_tckd", "dkd_nckd"}
    torch.testing.assert_close(losses["dkd_tckd"], 1.5 * tckd, rtol=1e-10, atol=0)
    torch.testing.assert_close(losses["dkd_nckd"], 3.0 * nckd, rtol=1e-10, atol=0)
    log_p = student - student.exp().sum(1, keepdim=True).log()
    torch.testing.assert_close(losses["ce"], -log_p[range(5), targets].mean(), rtol=1e-12, atol=0)


def test_dkd_gradient_equals_the_reference_gradient():
    student, teacher, targets = random_logits(seed=1)
    distiller = dkd_on_logits(student, teacher, alpha=1.0, beta=8.0, warmup_epochs=0)
    _, losses = distiller(torch.zeros(5, 3, 4, 4), targets, epoch=1)
    (losses["dkd_tckd"] + losses["dkd_nckd"]).backward()
    leaf = student.clone().requires_grad_(True)
    tckd, nckd = reference_dkd(leaf, teacher, targets, 4.0)
    (tckd + 8.0 * nckd).backward()
    assert leaf.grad is not None
    grad = distiller.student.logits.grad
    target_column = (range(5), targets)
    torch.testing.assert_close(grad[target_column], leaf.grad[target_column], rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-9, atol=1e-14)
    assert grad[target_column].abs().min() > 1e-6  # the target logit's gradient is not trivially zero


def test_dkd_warmup_scales_both_terms():
    student, teacher, targets = random_logits(seed=2)
    distiller = dkd_on_logits(student, teacher, warmup_epochs=20)
    early = distiller(torch.zeros(5, 3, 4, 4), targets, epoch=5)[1]
    late = distiller(torch.zeros(5, 3, 4, 4), targets, epoch=40)[1]
    tckd, nckd = reference_dkd(student, teacher, targets, 4.0)
    for name, full in (("dkd_tckd", 1.0 * tckd), ("dkd_nckd", 8.0 * nckd)):
        torch.testing.assert_close(late[name], full, rtol=1e-10, atol=0)  # min(40 / 20, 1) = 1
        torch.testing.assert_close(early[name], full / 4, rtol=1e-10, atol=0)  # 5 / 20
    torch.testing.assert_close(early["ce"], late["ce"])


def test_dkd_hand_worked_three_classes():
    # One sample, 3 classes, target 0, T = 2. Student logits 0 -> p_s = (1/3, 1/3, 1/3).
    # Teacher logits T * (0, ln 3, 0) -> p_t = (1, 3, 1) / 5.
    # TCKD: b_t = (1/5, 4/5), b_s = (1/3, 2/3):
    #   KL = 1/5 ln((1/5)/(1/3)) + 4/5 ln((4/5)/(2/3)) = 1/5 ln(3/5) + 4/5 ln(6/5) = 0.043688...
    # NCKD: non-targets renormalised: teacher (3/4, 1/4), student (1/2, 1/2):
    #   KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln 3 - ln 2 = 0.130812...
    # Both are multiplied by T^2 = 4.
    student = torch.zeros(1, 3, dtype=torch.float64)
    teacher = torch.tensor([[0.0, 2 * math.log(3), 0.0]], dtype=torch.float64)
    distiller = dkd_on_logits(student, teacher, alpha=1.0, beta=1.0, temperature=2.0, warmup_epochs=0)
    _, losses = distiller(torch.zeros(1, 3, 4, 4), torch.tensor([0]), epoch=1)
    tckd = 4 * (math.log(3 / 5) / 5 + 4 * math.log(6 / 5) / 5)
    nckd = 4 * (0.75 * math.log(3) - math.log(2))
    assert losses["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-12)
    assert losses["dkd_nckd"].item() == pytest.approx(nckd, rel=1e-12)
    assert losses["ce"].item() == pytest.approx(math.log(3), rel=1e-12)


def test_dkd_and_at_compute_half_precision_inputs_in_float32():
    student, teacher, targets = random_logits(seed=5)
    student, teacher = student.bfloat16(), teacher.bfloat16()
    for half, wide in zip(
        dkd_terms(student, teacher, targets, 4.0), dkd_terms(student.double(), teacher.double(), targets, 4.0)
    ):
        assert half.dtype == torch.float32
        torch.testing.assert_close(half.double(), wide, rtol=1e-5, atol=0)
    generator = torch.Generator().manual_seed(5)
    f_s = torch.randn(2, 3, 8, 8, generator=generator).bfloat16()
    f_t = torch.randn(2, 5, 16, 16, generator=generator).bfloat16()
    half = stage_attention_loss(f_s, f_t, 2)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), stage_attention_loss(f_s.double(), f_t.double(), 2), rtol=1e-5, atol=0)


# FitNet


def test_fitnet_hint_is_the_middle_of_the_paired_stages():
    def info(count):
        return FeatureInfo(tuple(StageInfo(f"s{i}", 8, 2**i) for i in range(count)), 8)

    # N paired stages (the last N of each): the hint is pair (N - 1) // 2, the second of 3 or of 4.
    assert hint_stages(info(3), info(3)) == (1, 1)
    assert hint_stages(info(4), info(4)) == (1, 1)
    assert hint_stages(info(3), info(4)) == (1, 2)  # the teacher's first stage has no partner
    assert hint_stages(info(5), info(3)) == (3, 1)
    assert hint_stages(info(5), info(5)) == (2, 2)
    for pair in CIFAR_PAIRS:  # all 3-stage or 4-stage on both sides: RepDistiller's feat[2], the second stage
        distiller = build("fitnet", pair)
        assert (distiller.student_stage, distiller.teacher_stage) == (1, 1), pair.name
        assert distiller.regressor[0].in_channels == distiller.student.feature_info.stages[1].channels


def test_regression_conv_follows_convreg():
    def shape_of(conv, side):
        return tuple(conv(torch.zeros(1, 4, side, side)).shape)

    down = regression_conv(4, 6, 16, 8)
    assert (type(down), down.kernel_size, down.stride, down.padding) == (nn.Conv2d, (3, 3), (2, 2), (1, 1))
    up = regression_conv(4, 6, 8, 16)
    assert (type(up), up.kernel_size, up.stride, up.padding) == (nn.ConvTranspose2d, (4, 4), (2, 2), (1, 1))
    same = regression_conv(4, 6, 8, 8)
    assert (type(same), same.kernel_size) == (nn.Conv2d, (1, 1))
    valid = regression_conv(4, 6, 7, 4)
    assert (type(valid), valid.kernel_size, valid.padding) == (nn.Conv2d, (4, 4), (0, 0))
    for conv, side, expected in ((down, 16, 8), (up, 8, 16), (same, 8, 8), (valid, 7, 4)):
        assert shape_of(conv, side) == (1, 6, expected, expected)
    with pytest.raises(ConfigError, match="half the teacher's side"):
        regression_conv(4, 6, 4, 16)
    regressor = hint_regressor(4, 6, 8, 16)  # ConvReg with use_relu=True: conv, BN, ReLU
    assert [type(m) for m in regressor] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU]
    assert regressor[0].bias is not None and regressor[1].num_features == 6


@pytest.mark.parametrize("pair", CIFAR_PAIRS, ids=lambda p: p.name)
def test_fitnet_regressor_output_has_the_teacher_hint_shape(pair):
    distiller = build("fitnet", pair).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        student = distiller.student.forward_features(images)
        teacher = distiller.teacher.forward_features(images)
        out = distiller.regressor(student.stages[distiller.student_stage])
    assert out.shape == teacher.stages[distiller.teacher_stage].shape


@pytest.mark.parametrize("pair_name", ["resnet56_resnet20", "resnet32x4_ShuffleV1", "ResNet50_MobileNetV2"])
def test_fitnet_loss_is_weighted_mse_of_the_regressor_output(pair_name):
    distiller = build("fitnet", PAIR_BY_NAME[pair_name], loss_weight=7.0, ce_weight=0.5).double().eval()
    images, targets = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([4, 9])
    with torch.no_grad():
        logits, losses = distiller(images, targets, epoch=1)
        student = distiller.student.forward_features(images)
        teacher = distiller.teacher.forward_features(images)
        out = distiller.regressor(student.stages[1])
    assert set(losses) == {"ce", "fitnet"}
    expected = 7.0 * ((out - teacher.stages[1]) ** 2).sum() / teacher.stages[1].numel()
    torch.testing.assert_close(losses["fitnet"], expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(losses["ce"], 0.5 * nn.functional.cross_entropy(logits, targets))


# AT


def test_attention_map_hand_computed():
    # Channel 0 = [[1, 2], [0, -1]], channel 1 = [[1, 0], [2, 1]].
    # p = 2: squares per channel (1, 4, 0, 1) and (1, 0, 4, 1); channel mean (1, 2, 2, 1);
    # L2 norm sqrt(1 + 4 + 4 + 1) = sqrt(10); map (1, 2, 2, 1) / sqrt(10).
    features = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[1.0, 0.0], [2.0, 1.0]]]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 2.0, 2.0, 1.0]], dtype=torch.float64) / math.sqrt(10)
    torch.testing.assert_close(attention_map(features, 2), expected, rtol=1e-14, atol=0)
    # Against an all-zero map, (at_s - at_t)^2 averages to |at_s|^2 / 4 = 1 / 4.
    assert stage_attention_loss(features, torch.zeros_like(features), 2).item() == pytest.approx(0.25, rel=1e-14)


def reference_attention(features, side):
    """Channel mean of f^2 after block-averaging to `side` (integer factor), each image divided by its L2 norm.

    The norm is floored at 1e-12 as the benchmark's F.normalize does: the random-init MobileNetV2's
    last stage is small enough (values ~1e-7) for the floor to matter in vgg13 -> MobileNetV2.
    """
    batch, channels, size, _ = features.shape
    factor = size // side
    pooled = features.reshape(batch, channels, side, factor, side, factor).mean(dim=(3, 5))
    squares = (pooled**2).mean(dim=1).reshape(batch, side * side)
    return squares / squares.pow(2).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)


def reference_at_loss(student_maps, teacher_maps):
    """Sum over stages of the mean over (batch, positions) of the squared attention difference."""
    total = 0.0
    for student, teacher in zip(student_maps, teacher_maps):
        side = min(student.shape[-1], teacher.shape[-1])
        difference = reference_attention(student, side) - reference_attention(teacher, side)
        total = total + (difference**2).sum() / difference.numel()
    return total


def test_stage_attention_loss_pools_the_larger_map_either_way():
    generator = torch.Generator().manual_seed(3)
    big = torch.randn(3, 5, 8, 8, generator=generator, dtype=torch.float64)
    small = torch.randn(3, 7, 4, 4, generator=generator, dtype=torch.float64)
    for student, teacher in ((big, small), (small, big), (big, big.flip(-1))):
        expected = reference_at_loss([student], [teacher])
        torch.testing.assert_close(stage_attention_loss(student, teacher, 2), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("pair_name", ["resnet56_resnet20", "resnet32x4_ShuffleV1", "vgg13_MobileNetV2"])
def test_at_loss_equals_the_direct_formula(pair_name):
    # resnet32x4 -> ShuffleV1: teacher stages 32/16/8 are pooled to the student's 16/8/4;
    # vgg13 -> MobileNetV2: sides 16/8/4/4 against 16/8/4/2, the last teacher stage pooled to 2.
    distiller = build("at", PAIR_BY_NAME[pair_name], loss_weight=3.0).double().eval()
    images, targets = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 5])
    with torch.no_grad():
        _, losses = distiller(images, targets, epoch=1)
        student = distiller.student.forward_features(images).stages
        teacher = distiller.teacher.forward_features(images).stages
    assert set(losses) == {"ce", "at"}
    assert len(student) == len(teacher) == distiller.stage_count
    expected = 3.0 * reference_at_loss(student, teacher)
    torch.testing.assert_close(losses["at"], expected, rtol=1e-10, atol=0)


def test_at_pools_the_teacher_to_the_student_side_in_a_heterogeneous_pair():
    distiller = build("at", PAIR_BY_NAME["resnet32x4_ShuffleV1"])
    student, teacher = distiller.student.feature_info, distiller.teacher.feature_info
    assert [s.spatial_size(32) for s in student.stages] == [16, 8, 4]
    assert [s.spatial_size(32) for s in teacher.stages] == [32, 16, 8]
    generator = torch.Generator().manual_seed(4)
    f_s = torch.randn(2, 240, 16, 16, generator=generator, dtype=torch.float64)
    f_t = torch.randn(2, 64, 32, 32, generator=generator, dtype=torch.float64)
    pooled_teacher = f_t.reshape(2, 64, 16, 2, 16, 2).mean(dim=(3, 5))  # 2x2 block means
    direct = ((attention_map(f_s, 2) - attention_map(pooled_teacher, 2)) ** 2).mean()
    torch.testing.assert_close(stage_attention_loss(f_s, f_t, 2), direct, rtol=1e-12, atol=0)


# Every pair, every method


@pytest.mark.parametrize("pair", CIFAR_PAIRS, ids=lambda p: p.name)
def test_pair_builds_steps_and_keeps_the_teacher(pair):
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    for method in METHODS:
        distiller = build(method, pair).train()
        teacher_state = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
        logits, losses = distiller(images, targets, epoch=25)
        assert logits.shape == (2, 100), method
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), (method, losses)
        sum(losses.values()).backward()
        missing = [n for n, p in distiller.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], f"{method}: parameters without gradient: {missing[:5]}"
        assert (distiller.num_head_parameters() > 0) == (method == "fitnet")
        assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters()), method
        assert not distiller.teacher.training, method
        after = distiller.teacher.state_dict()
        assert all(torch.equal(teacher_state[k], after[k]) for k in teacher_state), f"{method} changed the teacher"
