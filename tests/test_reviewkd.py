"""ReviewKD's loss and gradients against a direct float64 transcription of the published method:
attention-based fusion with a concatenated 1x1 convolution and an interpolated residual, and
the hierarchical context loss written out level by level. The loss terms of forward() (weights and
warm-up included) are checked in test_fam_l2l_reviewkd.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from famkd.distill import create_distiller
from famkd.distill.levels import level_features
from famkd.models import create_model

# Matched sizes (residual factors 2 and 8), a student at half the teacher's side (fused map
# upsampled), and a level whose residual already has its size (factor 1).
PAIRS = [("resnet14", "resnet8"), ("wrn_40_2", "ShuffleV1"), ("vgg13", "MobileNetV2")]


def direct_fusion(head, x, residual):
    """The published ABF: conv1(x); cat with the interpolated residual; 1x1 conv, sigmoid; weighted sum; resize."""
    x = head.input_proj(x)
    if head.attention is not None:
        side = x.shape[-1]
        residual = F.interpolate(residual, (side, side), mode="nearest")
        maps = torch.sigmoid(head.attention[0](torch.cat([x, residual], dim=1)))
        x = x * maps[:, 0:1] + residual * maps[:, 1:2]
    if x.shape[-1] != head.teacher_size:
        x = F.interpolate(x, (head.teacher_size, head.teacher_size), mode="nearest")
    return head.output_head(x), x


def direct_context_loss(outputs, targets):
    total = 0.0
    for out, target in zip(outputs, targets):
        loss, weight, weight_sum = F.mse_loss(out, target), 1.0, 1.0
        for side in (4, 2, 1):
            if side >= out.shape[-1]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(out, (side, side)), F.adaptive_avg_pool2d(target, (side, side))
            )
            weight_sum += weight
        total = total + loss / weight_sum
    return total


def direct_review_loss(distiller, student_maps, teacher_maps):
    outputs, residual = [], None
    for head, x in zip(distiller.heads, reversed(student_maps)):
        out, residual = direct_fusion(head, x, residual)
        outputs.append(out)
    return direct_context_loss(outputs[::-1], teacher_maps)


@pytest.mark.parametrize("teacher_name,student_name", PAIRS)
def test_review_loss_and_gradients_match_the_direct_form(teacher_name, student_name):
    torch.manual_seed(0)
    teacher = create_model(teacher_name).double()
    student = create_model(student_name).double()
    ours = create_distiller("reviewkd", student=student, teacher=teacher).double().train()
    reference = copy.deepcopy(ours)  # train-mode BN updates running stats; keep the two apart
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    levels = len(ours.heads)
    with torch.no_grad():
        teacher_maps = level_features(teacher.forward_features(images), levels, preact=True)
        student_maps = [
            m.clone().requires_grad_(True)
            for m in level_features(student.forward_features(images), levels, preact=False)
        ]
    loss = ours.feature_loss(ours.head_outputs(student_maps), teacher_maps)
    expected = direct_review_loss(reference, student_maps, teacher_maps)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    heads, reference_heads = list(ours.heads.parameters()), list(reference.heads.parameters())
    grads = torch.autograd.grad(loss, student_maps + heads)
    expected_grads = torch.autograd.grad(expected, student_maps + reference_heads)
    for ours_grad, reference_grad in zip(grads, expected_grads):
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-10, atol=1e-12)
