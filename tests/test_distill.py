"""Every paper pair x method builds, trains a step, and keeps the distiller contract."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from famkd.config import ConfigError
from famkd.distill import create_distiller, list_distillers
from famkd.distill.levels import warmup_factor
from famkd.models import create_model
from famkd.recipes import CIFAR_PAIRS

FEATURE_METHODS = ["fam_kd", "fam_kd_l2l", "reviewkd", "fam_reviewkd"]
METHODS = ["vanilla", "kd"] + FEATURE_METHODS


def build(method, pair, **options):
    torch.manual_seed(0)
    teacher = create_model(pair.teacher)
    student = create_model(pair.student)
    if method in ("fam_kd", "fam_kd_l2l"):
        options.setdefault("student_preact", pair.student_preact)
    return create_distiller(method, student=student, teacher=teacher, **options)


def test_all_methods_registered():
    assert set(METHODS) <= set(list_distillers())


@pytest.mark.parametrize("pair", CIFAR_PAIRS, ids=lambda p: p.name)
def test_pair_builds_and_every_head_parameter_gets_a_gradient(pair):
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([3, 7])
    for method in METHODS:
        distiller = build(method, pair).train()
        logits, losses = distiller(images, targets, epoch=25)
        assert logits.shape == (2, 100), method
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), method
        sum(losses.values()).backward()
        no_grad = [n for n, p in distiller.named_parameters() if p.requires_grad and p.grad is None]
        assert no_grad == [], f"{method}: parameters without gradient: {no_grad[:5]}"
        if distiller.teacher is not None:
            assert not distiller.teacher.training
            assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
        assert set(distiller.student.state_dict()) == set(create_model(pair.student).state_dict())
        assert (method in FEATURE_METHODS) == (distiller.num_head_parameters() > 0)


def test_heads_are_sized_from_feature_info():
    pair = next(p for p in CIFAR_PAIRS if p.student == "ShuffleV1")  # 16/8/4 student maps vs 32/16/8 teacher maps
    distiller = build("fam_kd", pair)
    student, teacher = distiller.student.feature_info, distiller.teacher.feature_info
    fams = [head.fam for head in distiller.heads][::-1]  # shallow to deep
    expected_in = student.channels + [student.pooled_channels]
    expected_out = teacher.channels + [teacher.pooled_channels]
    assert [f.in_channels for f in fams] == expected_in
    assert [f.out_channels for f in fams] == expected_out
    assert [f.size for f in fams] == [stage.spatial_size(32) for stage in teacher.stages] + [1]


def test_warmup_and_loss_scaling():
    assert [warmup_factor(e, 20) for e in (1, 10, 20, 30)] == [0.05, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0
    pair = CIFAR_PAIRS[0]
    distiller = build("fam_kd", pair, loss_weight=2.0).eval()
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with torch.no_grad():
        early = distiller(images, targets, epoch=5)[1]["fam_kd"]
        late = distiller(images, targets, epoch=40)[1]["fam_kd"]
    assert torch.allclose(early * 4, late, rtol=1e-6)


def test_distillation_without_teacher_is_an_error():
    with pytest.raises(ValueError, match="distills from a teacher"):
        create_distiller("fam_kd", student=create_model("resnet8"))


def test_mismatched_classes_is_an_error():
    with pytest.raises(ValueError, match="student predicts 10 classes but teacher predicts 100"):
        create_distiller("kd", student=create_model("resnet8", num_classes=10), teacher=create_model("resnet14"))


def test_unknown_method_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'fam_kd'"):
        create_distiller("famkd", student=create_model("resnet8"), teacher=create_model("resnet8"))


def test_ddp_without_unused_parameter_search(tmp_path):
    """DDP with find_unused_parameters=False fails on the 2nd step if any head parameter got no gradient."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        for method in FEATURE_METHODS:
            distiller = build(method, CIFAR_PAIRS[0]).train()
            ddp = DistributedDataParallel(distiller, find_unused_parameters=False)
            for step in range(2):
                _, losses = ddp(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), epoch=step + 1)
                sum(losses.values()).backward()
    finally:
        dist.destroy_process_group()
