"""kd's loss terms on a hand-worked example (docs/method.md, KD):

    loss = ce_weight * CE(student, y) + loss_weight * T^2 * mean_batch sum_classes KL(p_teacher || p_student),
    p = softmax(logits / T).

The logits are chosen so that every softmax at T = 2 is a ratio of small integers:
softmax([2 ln 2, 0, 0] / 2) = softmax([ln 2, 0, 0]) = (2, 1, 1) / 4.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from famkd.distill import create_distiller
from famkd.errors import FamkdDeprecationWarning

TEMPERATURE = 2.0
LN2 = math.log(2.0)
# images[:, 0] holds the student's logits, images[:, 1] the teacher's (see LogitsReader).
STUDENT_LOGITS = [[0.0, 0.0, 0.0], [2 * LN2, 0.0, 0.0]]
TEACHER_LOGITS = [[2 * LN2, 0.0, 0.0], [2 * LN2, 0.0, 0.0]]
TARGETS = [0, 2]

# Sample 1: p_teacher = (1/2, 1/4, 1/4), p_student = (1/3, 1/3, 1/3):
#   KL = 1/2 ln((1/2)/(1/3)) + 2 * 1/4 ln((1/4)/(1/3)) = 1/2 ln(3/2) + 1/2 ln(3/4) = 1/2 ln(9/8).
# Sample 2: the same logits on both sides, so KL = 0.
# Batch mean: 1/4 ln(9/8); times T^2 = 4: ln(9/8) = 0.117783...
EXPECTED_KD_LOSS = math.log(9 / 8)
# Not what kd computes, and each is at least 3% away from it:
#   KL(student || teacher): sample 1 gives 1/3 ln(2/3) + 2/3 ln(4/3) = 1/3 ln(32/27), sample 2 gives 0,
#   so (2/3) ln(32/27) = 0.113266 after the mean and T^2;
#   T on the student only: sample 2 compares (1/2, 1/4, 1/4) with softmax([2 ln 2, 0, 0]) = (4, 1, 1)/6, > 0;
#   T on the teacher only: sample 1 compares softmax([2 ln 2, 0, 0]) with (1/3, 1/3, 1/3), a larger KL;
#   without T^2: ln(9/8) / 4; summed over the batch instead of averaged: 2 ln(9/8).
# CE at T = 1: sample 1, softmax(0, 0, 0)[0] = 1/3, so -ln(1/3) = ln 3; sample 2, softmax(2 ln 2, 0, 0)[2] =
#   1/6, so ln 6. The batch mean is (ln 3 + ln 6) / 2 = ln(18) / 2 = 1.445...
EXPECTED_CE = math.log(18) / 2


class LogitsReader(nn.Module):
    """A 3-class "model" whose logits are row `row` of its input (B, 2, 3), through an identity Linear."""

    def __init__(self, row: int):
        super().__init__()
        self.row = row
        self.classifier = nn.Linear(3, 3).double()
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(3))
            self.classifier.bias.zero_()

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images[:, self.row])


def kd_terms(**options) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The images, the distiller's logits and its loss terms on the hand-worked batch."""
    distiller = create_distiller("kd", student=LogitsReader(0), teacher=LogitsReader(1), **options)
    images = torch.tensor([STUDENT_LOGITS, TEACHER_LOGITS], dtype=torch.float64).transpose(0, 1)
    logits, losses = distiller(images, torch.tensor(TARGETS), epoch=1)
    return images, logits, losses


def test_kd_loss_and_cross_entropy_equal_the_hand_worked_values():
    images, logits, losses = kd_terms(temperature=TEMPERATURE, loss_weight=0.75, ce_weight=0.3)
    assert set(losses) == {"ce", "kd"}
    assert torch.equal(logits, images[:, 0])
    assert losses["kd"].item() == pytest.approx(0.75 * EXPECTED_KD_LOSS, rel=1e-12)
    assert losses["ce"].item() == pytest.approx(0.3 * EXPECTED_CE, rel=1e-12)


def test_defaults_weigh_kd_by_0_9_and_ce_by_0_1():
    _, _, losses = kd_terms(temperature=TEMPERATURE)
    assert losses["kd"].item() == pytest.approx(0.9 * EXPECTED_KD_LOSS, rel=1e-12)
    assert losses["ce"].item() == pytest.approx(0.1 * EXPECTED_CE, rel=1e-12)


def test_the_old_name_kd_weight_sets_loss_weight():
    with pytest.warns(FamkdDeprecationWarning, match="kd_weight"):
        _, _, losses = kd_terms(temperature=TEMPERATURE, kd_weight=0.5)
    assert losses["kd"].item() == pytest.approx(0.5 * EXPECTED_KD_LOSS, rel=1e-12)


def test_kd_gradient_is_t_times_the_difference_of_the_softened_distributions():
    """d(T^2 KL) / d(student logits) = T (p_student - p_teacher) / B: at sample 1,
    2 * ((1/3, 1/3, 1/3) - (1/2, 1/4, 1/4)) / 2 = (-1/6, 1/12, 1/12); at sample 2, 0."""
    _, logits, losses = kd_terms(temperature=TEMPERATURE, loss_weight=1.0)
    (grad_logits,) = torch.autograd.grad(losses["kd"], logits)
    expected = torch.tensor([[-1 / 6, 1 / 12, 1 / 12], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad_logits, expected, rtol=1e-12, atol=1e-15)
