"""configs/imagenet: every config loads, builds its distiller for 1000 classes at 224 x 224 and takes one training
step on CPU; fam_kd's `pooled_level: residual` (the published ImageNet model) against a direct computation, and
every parameter trained in both pooled-level modes.

One CPU step of fam_kd on resnet50 -> MobileNetV1 at 224 needs about 15 GB and 45 s (830M head parameters: measured
peak RSS 15.1 GB, 48 s on the 2-core CI machine with 24 GB). It runs by default; on a smaller machine,
FAMKD_SKIP_HEAVY_TESTS=1 skips it, saying so (that config still steps at 64 x 64 and has its heads counted at 224 on
the meta device). It is marked `heavy`: tests/conftest.py runs heavy tests first, while the test process is still
small, so that the suite's peak memory is about this step's alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from famkd.config import ConfigError, TrainConfig, load_config
from famkd.distill import Distiller, create_distiller
from famkd.engine.schedule import build_optimizer
from famkd.engine.step import optimizer_step
from famkd.fam import FrequencyAttention
from famkd.models import create_model

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGENET_DIR = REPO_ROOT / "configs" / "imagenet"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
HEAVY_CONFIG = "fam_kd/resnet50_MobileNetV1.yaml"
RUN_HEAVY = os.environ.get("FAMKD_SKIP_HEAVY_TESTS") != "1"


def imagenet_configs() -> list[str]:
    return sorted(path.relative_to(IMAGENET_DIR).as_posix() for path in IMAGENET_DIR.rglob("*.yaml"))


def build_from_config(name: str, image_size: int = IMAGE_SIZE) -> Distiller:
    """The distiller of configs/imagenet/`name` for 1000 classes, with random weights (seed 0)."""
    cfg = load_config(IMAGENET_DIR / name)
    torch.manual_seed(0)
    teacher = create_model(cfg.teacher.name, num_classes=NUM_CLASSES) if cfg.teacher.name else None
    student = create_model(cfg.student, num_classes=NUM_CLASSES)
    return create_distiller(cfg.method, student=student, teacher=teacher, image_size=image_size, **cfg.distill)


def check_one_training_step(distiller: Distiller, train: TrainConfig, image_size: int) -> None:
    """One optimiser step on a batch of 2: finite losses, every trained parameter has a gradient and moves,
    the teacher stays as it was."""
    distiller.train()
    optimizer = build_optimizer(distiller, train)
    trained = {name: p for name, p in distiller.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trained.items()}
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()} if distiller.teacher else {}
    images, labels = torch.randn(2, 3, image_size, image_size), torch.tensor([3, NUM_CLASSES - 1])

    logits, losses = optimizer_step(distiller, optimizer, None, contextlib.nullcontext, (images, labels, 1))

    assert logits.shape == (2, NUM_CLASSES)
    assert losses and all(torch.isfinite(loss) for loss in losses.values()), losses
    assert [name for name, p in trained.items() if p.grad is None] == []
    assert [name for name, p in trained.items() if torch.equal(p, before[name])] == []
    if distiller.teacher is not None:
        after = distiller.teacher.state_dict()
        assert all(torch.equal(after[key], value) for key, value in teacher_before.items())


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=[
                pytest.mark.heavy,
                pytest.mark.skipif(not RUN_HEAVY, reason="FAMKD_SKIP_HEAVY_TESTS=1: a 15 GB step"),
            ],
        )
        if name == HEAVY_CONFIG
        else name
        for name in imagenet_configs()
    ],
)
def test_every_config_takes_a_training_step_at_224(name):
    cfg = load_config(IMAGENET_DIR / name)
    assert (cfg.data.dataset, cfg.data.crop_size) == ("imagenet", IMAGE_SIZE)
    check_one_training_step(build_from_config(name), cfg.train, IMAGE_SIZE)


def test_the_heavy_config_takes_a_training_step_at_64():
    check_one_training_step(
        build_from_config(HEAVY_CONFIG, image_size=64), load_config(IMAGENET_DIR / HEAVY_CONFIG).train, 64
    )


# FAM filters: C_in * C_out * S^2 * 2 per stage level (C_mid = the student's channels, C_out the teacher's).
FAM_FILTERS_R34_R18 = 64 * 64 * 56**2 * 2 + 128 * 128 * 28**2 * 2 + 256 * 256 * 14**2 * 2 + 512 * 512 * 7**2 * 2
FAM_FILTERS_R50_MV1 = 128 * 256 * 56**2 * 2 + 256 * 512 * 28**2 * 2 + 512 * 1024 * 14**2 * 2 + 1024 * 2048 * 7**2 * 2


@pytest.mark.parametrize(
    "name, fam_filters, head_parameters",
    [
        ("fam_kd/resnet34_resnet18.yaml", FAM_FILTERS_R34_R18, 104_331_784),
        ("fam_kd/resnet50_MobileNetV1.yaml", FAM_FILTERS_R50_MV1, 829_753_992),
    ],
)
def test_fam_heads_at_224_have_four_fams_and_the_documented_size(name, fam_filters, head_parameters):
    with torch.device("meta"):  # sizes only: nothing is allocated
        distiller = build_from_config(name)
    fams = [m for m in distiller.heads.modules() if isinstance(m, FrequencyAttention)]
    assert [fam.size for fam in fams] == [7, 14, 28, 56]  # deepest first; no FAM at the pooled level
    assert sum(fam.global_filter.numel() for fam in fams) == fam_filters
    assert distiller.num_head_parameters() == head_parameters


# ---------------------------------------------------------------- pooled_level


def fam_kd(pooled_level: str, **options) -> Distiller:
    """fam_kd on resnet34 -> resnet18 at 64 x 64 (stage sides 16/8/4/2, then the pooled level), float64."""
    torch.manual_seed(0)
    return create_distiller(
        "fam_kd",
        student=create_model("resnet18", num_classes=NUM_CLASSES),
        teacher=create_model("resnet34", num_classes=NUM_CLASSES),
        image_size=64,
        pooled_level=pooled_level,
        **options,
    ).double()


def test_residual_pooled_level_loss_is_the_sum_of_the_four_stage_mses():
    loss_weight, warmup_epochs, epoch = 1.5, 4, 2
    distiller = fam_kd("residual", max_mid_channels=96, loss_weight=loss_weight, warmup_epochs=warmup_epochs).train()
    pooled_head, *stage_heads = distiller.heads
    assert not any(isinstance(m, (FrequencyAttention, torch.nn.BatchNorm2d)) for m in pooled_head.children())
    assert pooled_head.input_proj is not None  # 512 pooled channels, capped at 96: projected

    images, labels = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([5, 17])
    _, losses = distiller(images, labels, epoch=epoch)

    student = distiller.student.forward_features(images)
    teacher = distiller.teacher.forward_features(images)
    residual = pooled_head.input_proj(student.pooled[:, :, None, None])
    expected = torch.zeros((), dtype=torch.float64)
    for head, student_map, teacher_map in zip(stage_heads, student.stages[::-1], teacher.stages[::-1]):
        out, residual = head(student_map, residual)
        assert out.shape == teacher_map.shape
        expected = expected + F.mse_loss(out, teacher_map)
    weight = loss_weight * epoch / warmup_epochs
    torch.testing.assert_close(losses["fam_kd"], weight * expected, rtol=1e-12, atol=0)


def test_residual_mode_is_the_loss_mode_without_the_pooled_term():
    """Same weights, same batch: loss mode's total less its pooled level's MSE is residual mode's loss."""
    with_pooled, residual_only = fam_kd("loss"), fam_kd("residual")
    missing, unexpected = residual_only.load_state_dict(with_pooled.state_dict(), strict=False)
    assert missing == [] and sorted({key.split(".")[2] for key in unexpected}) == ["bn", "fam"]
    assert all(key.startswith("heads.0.") for key in unexpected)  # the pooled level's FAM and BN, nothing else
    images, labels = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([1, 2])

    _, losses = residual_only.train()(images, labels, epoch=20)
    _, all_levels = with_pooled.train()(images, labels, epoch=20)
    student = with_pooled.student.forward_features(images)
    pooled_output, _ = with_pooled.heads[0](student.pooled[:, :, None, None])
    pooled_mse = F.mse_loss(pooled_output, with_pooled.teacher.forward_features(images).pooled[:, :, None, None])
    torch.testing.assert_close(losses["fam_kd"], all_levels["fam_kd"] - pooled_mse, rtol=1e-10, atol=0)


@pytest.mark.parametrize("pooled_level", ["loss", "residual"])
@pytest.mark.parametrize("max_mid_channels", [0, 8])
def test_every_parameter_gets_a_gradient(pooled_level, max_mid_channels):
    torch.manual_seed(0)
    distiller = create_distiller(
        "fam_kd",
        student=create_model("resnet8"),
        teacher=create_model("resnet20"),
        pooled_level=pooled_level,
        max_mid_channels=max_mid_channels,
    ).train()
    _, losses = distiller(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), epoch=25)
    sum(losses.values()).backward()
    assert [n for n, p in distiller.named_parameters() if p.requires_grad and p.grad is None] == []
    fams = [m for m in distiller.modules() if isinstance(m, FrequencyAttention)]
    assert len(fams) == {"loss": 4, "residual": 3}[pooled_level]  # 3 CIFAR stages (+ the pooled level)


def test_residual_mode_trains_under_ddp_without_unused_parameter_search(tmp_path):
    """DDP with find_unused_parameters=False fails on the 2nd step if any parameter got no gradient."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        distiller = create_distiller(
            "fam_kd",
            student=create_model("resnet8"),
            teacher=create_model("resnet20"),
            pooled_level="residual",
            max_mid_channels=8,
        ).train()
        ddp = DistributedDataParallel(distiller, find_unused_parameters=False)
        for step in range(2):
            _, losses = ddp(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), epoch=step + 1)
            sum(losses.values()).backward()
    finally:
        dist.destroy_process_group()


def test_pooled_level_is_checked_at_load():
    with pytest.raises(ConfigError, match=r"distill.pooled_level='head' is not allowed.*loss, residual"):
        load_config(None, ["method=fam_kd", "distill.pooled_level=head"])
    assert load_config(None, ["method=fam_kd"]).distill["pooled_level"] == "loss"
