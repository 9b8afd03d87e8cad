"""famkd detect: distillers' loss terms on fixed tensors, CLI training on a tiny COCO, and exact resume."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import FrozenBatchNorm2d

from detectron2_layout import random_detectron2_weights, write_detectron2_pickle
from famkd.cli import main
from famkd.detection import cli
from famkd.detection.config import TASK, load_detection_config
from famkd.detection.detectron2_import import Detectron2Spec, import_detectron2_faster_rcnn
from famkd.detection.distill import FPN_LEVELS
from famkd.detection.models import (
    DetectorOutputs,
    SmoothL1RoIHeads,
    SmoothL1RPN,
    build_detector,
    detector_forward,
    fpn_backbone,
    load_teacher,
    teacher_features,
)
from famkd.detection.task import TASK as DETECTION
from famkd.detection.task import train_detection
from famkd.distill import create_distiller
from famkd.distill.kd import kd_loss
from famkd.distill.levels import review_chain
from famkd.distill.reviewkd import hierarchical_context_loss
from famkd.engine.run_log import read_metrics
from famkd.engine.schedule import build_optimizer
from famkd.engine.trainer import Trainer
from famkd.errors import ConfigError, FamkdError, TrainingInterrupted
from famkd.weights import load_checkpoint
from tiny_coco import write_tiny_coco

SMALL = ["data.min_size=64", "data.max_size=96", "data.workers=0", "device=cpu", "train.student_init=none"]
SCHEDULE = ["train.batch_size=2", "train.warmup_iters=0", "train.lr_milestones=[]", "run.tensorboard=false"]
FAM = ["distill.pool_sizes=[8,4,2,2,1]", "distill.mid_channels=16"]


def create_detection_distiller(method: str, student, teacher, options: dict):
    return create_distiller(method, task=TASK, student=student, teacher=teacher, **options)


def detect(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def teacher(coco: Path, tmp_path_factory) -> Path:
    """A vanilla resnet18 detector trained for 4 iterations through `famkd detect train`."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    config = run_dir.parent / "vanilla.yaml"
    config.write_text("method: vanilla\nstudent: resnet18\ntrain:\n  iterations: 4\n  lr: 0.02\n")
    assert detect("train", str(config), f"data.root={coco}", f"run.dir={run_dir}", *SMALL, *SCHEDULE) == 0
    return run_dir / "student_last.pt"


def distill_overrides(coco: Path, teacher: Path, run_dir: Path, method: str = "fam_kd") -> list[str]:
    return [
        f"method={method}",
        "teacher.name=resnet18",
        f"teacher.checkpoint={teacher}",
        f"data.root={coco}",
        f"run.dir={run_dir}",
        *SMALL,
        *SCHEDULE,
    ]


def test_fam_kd_trains_through_the_cli_and_is_evaluated(coco: Path, teacher: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "fam_kd"
    overrides = [*distill_overrides(coco, teacher, run_dir), *FAM, "data.flip_prob=0", "train.iterations=16"]
    config = tmp_path / "fam_kd.yaml"
    config.write_text("train:\n  lr: 0.01\n  log_interval: 4\n")
    assert detect("train", str(config), *overrides) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and set(summary) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    records = read_metrics(run_dir)
    assert [record["iteration"] for record in records] == [4, 8, 12, 16]
    fam_kd = [record["loss_fam_kd"] for record in records]
    assert fam_kd[-1] < 0.8 * fam_kd[0] and fam_kd == sorted(fam_kd, reverse=True), fam_kd
    assert "AP" in records[-1] and "loss_loss_classifier" in records[0]
    assert detect("eval", str(run_dir), "--data", str(coco), "--device", "cpu") == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_run_resumes_exactly(coco: Path, teacher: Path, tmp_path: Path, workers: int) -> None:
    """Ctrl-C mid-epoch, then --resume: the same metrics and weights as the run that was not interrupted, with
    multi-scale training sizes and flips drawn per image (in the data workers when there are some)."""
    common = [*distill_overrides(coco, teacher, tmp_path / "x"), *FAM, "train.iterations=5", "train.log_interval=2"]
    common.append(f"data.workers={workers}")  # flips at the default 0.5, drawn in the workers when there are some
    common.append("data.min_size_train=[48,56,64]")  # multi-scale: each image's size drawn from its key as well
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    train_detection(load_detection_config(None, [*common, f"run.dir={whole}"]))

    def press_ctrl_c(epoch: int, step: int, iteration: int) -> None:
        if iteration == 3:  # mid-epoch (2 batches per epoch) and mid-log-interval
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=f"famkd detect train --resume {interrupted}"):
        train_detection(load_detection_config(None, [*common, f"run.dir={interrupted}"]), on_step=press_ctrl_c)
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["global_step"] == 3
    assert detect("train", "--resume", str(interrupted)) == 0
    runs = (whole, interrupted)
    untimed = [[{k: v for k, v in r.items() if k != "interval_time_s"} for r in read_metrics(d)] for d in runs]
    assert untimed[0] == untimed[1]
    states = [load_checkpoint(d / "checkpoints" / "last.pt") for d in (whole, interrupted)]
    for part in ("student", "heads"):
        assert all(torch.equal(states[0][part][key], states[1][part][key]) for key in states[0][part])


def torchrun_detect(*argv: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m famkd detect train ...` on the CPU (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [*command, "-m", "famkd", "detect", "train", *argv], capture_output=True, text=True, env=env, timeout=300
    )


def test_torchrun_fam_kd_trains_evaluates_and_resumes_on_two_processes(
    coco: Path, teacher: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "ddp"
    config = tmp_path / "fam_kd.yaml"
    config.write_text("train:\n  log_interval: 2\n  eval_batch_size: 1\n")
    overrides = [*distill_overrides(coco, teacher, run_dir), *FAM, "train.batch_size=4", "train.iterations=3"]
    first = torchrun_detect(str(config), *overrides)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 processes sharing the global batch of 4" in first.stdout + first.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] == 3
    assert [record["iteration"] for record in read_metrics(run_dir)] == [2, 3]

    resumed = torchrun_detect("--resume", str(run_dir), "train.iterations=5")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming after iteration 3" in resumed.stdout + resumed.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] == 5
    records = read_metrics(run_dir)
    assert [record["iteration"] for record in records] == [2, 3, 4, 5]
    assert all(math.isfinite(record["loss_fam_kd"]) for record in records)
    assert "AP" in records[1] and "AP" in records[3]  # the whole val split scored at each run's end
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iteration"] == 5
    assert set(summary) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (run_dir / "student_last.pt").is_file()


SIZES = ((16, 24), (8, 12), (4, 6), (2, 3), (1, 2))  # P2..P6 of a 64x96 image


def fixed_outputs(student, images) -> DetectorOutputs:
    """Student FPN maps of the teacher's sizes, two proposals per image and box logits, all fixed."""
    features = {name: torch.randn(2, 256, *size) for name, size in zip(FPN_LEVELS, SIZES)}
    proposals = [torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 5.0, 60.0, 50.0]])] * 2
    return DetectorOutputs({}, features, proposals, torch.randn(4, 4, requires_grad=True), [(64, 96)] * 2)


@pytest.fixture(scope="module")
def detectors():
    torch.manual_seed(0)
    return build_detector("resnet18", 4, 64, 96), build_detector("resnet18", 4, 64, 96).eval()


def per_image_group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int = 32) -> torch.Tensor:
    """GroupNorm written out: each image's groups of C / groups channels normalised over their values."""
    grouped = x.reshape(x.shape[0], groups, -1)
    mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
    normalised = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape(x.shape)
    return normalised * weight[:, None, None] + bias[:, None, None]


def test_fam_kd_term_is_the_pooled_mse_of_its_heads(detectors) -> None:
    student, teacher = detectors
    distiller = create_detection_distiller(
        "fam_kd", student, teacher, {"pool_sizes": [8, 4, 2, 2, 1], "mid_channels": 8}
    )
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    outputs = fixed_outputs(student, images)
    loss = distiller.distill_loss(outputs, images)
    teacher_maps = distiller.teacher_maps(images)[0]
    maps = [outputs.features[name] for name in FPN_LEVELS]
    expected, residual = torch.zeros(()), None
    for head, level in zip(distiller.heads, reversed(range(5))):
        x = head.input_proj(maps[level])
        x = x if head.attention is None else head.attention(x, residual)
        out = per_image_group_norm(head.fam(F.adaptive_avg_pool2d(x, head.size)), head.norm.weight, head.norm.bias)
        expected = expected + ((out - F.adaptive_avg_pool2d(teacher_maps[FPN_LEVELS[level]], head.size)) ** 2).mean()
        residual = x
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(parameter.grad is not None for parameter in distiller.heads.parameters())
    print(f"fam_kd head parameters at the defaults: {default_fam_head_parameters(detectors)}")


def test_fam_kd_heads_treat_each_image_alone(detectors) -> None:
    """In training mode a head's output for an image does not depend on the batch's other images (per-image
    normalisation: batch statistics over the one or two images a process holds blew the gradients up)."""
    student, teacher = detectors
    options = {"pool_sizes": [8, 4, 2, 2, 1], "mid_channels": 8}
    distiller = create_detection_distiller("fam_kd", student, teacher, options).train()
    maps = [torch.randn(2, 256, *size) for size in SIZES]
    together = review_chain(distiller.heads, maps)
    alone = review_chain(distiller.heads, [level[1:] for level in maps])
    for both, second in zip(together, alone):
        torch.testing.assert_close(both[1:], second)


def default_fam_head_parameters(detectors) -> int:
    return create_detection_distiller("fam_kd", *detectors, {}).num_head_parameters()


def test_reviewkd_term_is_hcl_of_its_heads(detectors) -> None:
    student, teacher = detectors
    distiller = create_detection_distiller("reviewkd", student, teacher, {"mid_channels": 16})
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    outputs = fixed_outputs(student, images)
    loss = distiller.distill_loss(outputs, images)
    teacher_maps = distiller.teacher_maps(images)[0]
    heads_out, residual = [], None
    for head, level in zip(distiller.heads, reversed(range(5))):
        out, residual = head(outputs.features[FPN_LEVELS[level]], residual)
        assert out.shape == teacher_maps[FPN_LEVELS[level]].shape
        heads_out.insert(0, out)
    torch.testing.assert_close(loss, hierarchical_context_loss(heads_out, [teacher_maps[n] for n in FPN_LEVELS]))
    loss.backward()
    assert all(parameter.grad is not None for parameter in distiller.heads.parameters())


def test_kd_term_is_kd_loss_of_the_teachers_box_logits(detectors) -> None:
    student, teacher = detectors
    distiller = create_detection_distiller("kd", student, teacher, {"temperature": 2.0})
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    outputs = fixed_outputs(student, images)
    features, sizes = distiller.teacher_maps(images)
    heads = teacher.roi_heads
    with torch.no_grad():
        logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, outputs.proposals, sizes)))
    torch.testing.assert_close(distiller.distill_loss(outputs, images), kd_loss(outputs.class_logits, logits, 2.0))


def test_bad_detection_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'train.iterations'"):
        load_detection_config(None, ["train.iteration=3"])
    with pytest.raises(ConfigError, match="needs teacher.checkpoint"):
        load_detection_config(None, ["method=fam_kd"])
    with pytest.raises(ConfigError, match="unknown detection method 'fitnet'"):
        load_detection_config(None, ["method=fitnet"])


def test_without_pycocotools_famkd_detect_names_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # `import pycocotools` now fails as if not installed
    assert main(["detect", "eval", "run", "--data", "coco"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'famkd[detection]'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("teacher_backbone", "student_backbone"),
    [("resnet101", "resnet18"), ("resnet101", "resnet50"), ("resnet50", "mobilenet_v2")],  # the paper's pairs
)
def test_every_pair_of_backbones_takes_a_fam_kd_step(teacher_backbone: str, student_backbone: str) -> None:
    """Each pair's detectors build (random weights), give 256-channel FPN maps P2..P6 of the image's strides, and
    take a fam_kd training step in which every trainable parameter of the student and the heads gets a gradient."""
    torch.manual_seed(0)
    student = build_detector(student_backbone, 4, 64, 96)
    teacher = build_detector(teacher_backbone, 4, 64, 96).eval()
    distiller = create_detection_distiller(
        "fam_kd", student, teacher, {"pool_sizes": [8, 4, 2, 2, 1], "mid_channels": 8}
    )
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])}] * 2
    _, losses = distiller.train()(images, targets, iteration=1)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "fam_kd"}
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    trainable = [(name, p) for name, p in distiller.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None][:5]
    assert not any(name.startswith("teacher.") for name, _ in trainable)
    maps = distiller.teacher_maps(images)[0]
    assert [tuple(maps[level].shape[1:]) for level in FPN_LEVELS] == [(256, *size) for size in SIZES]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_the_student_backbone_starts_from_a_local_imagenet_file(backbone: str, tmp_path: Path) -> None:
    """train.student_init=PATH: the body holds the file's weights and computes the classifier's stage output."""
    torch.manual_seed(0)
    classifier = getattr(torchvision.models, backbone)().eval()
    with torch.no_grad():  # non-trivial statistics, so that batch norm is checked too
        for module in classifier.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{backbone}.pth"
    torch.save(classifier.state_dict(), path)
    body = fpn_backbone(backbone, str(path)).body.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        if backbone == "resnet18":
            c = classifier
            expected = c.layer4(c.layer3(c.layer2(c.layer1(c.maxpool(c.relu(c.bn1(c.conv1(x))))))))
        else:
            expected = classifier.features[:18](x)  # through the stride-32 stage, before the 1280-channel conv
        torch.testing.assert_close(body(x)["3"], expected, rtol=1e-4, atol=1e-5)


def test_bad_student_init_files_and_an_offline_download_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FamkdError, match="no such file"):
        fpn_backbone("resnet18", str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mv2.pth")
    with pytest.raises(FamkdError, match="not a torchvision resnet18 ImageNet state dict: it lacks conv1.weight"):
        fpn_backbone("resnet18", str(tmp_path / "mv2.pth"))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(FamkdError, match="not a torchvision resnet50 ImageNet state dict"):
        fpn_backbone("resnet50", str(tmp_path / "r34.pth"))  # resnet34 has no bottleneck conv3
    # resnet34 holds every key of resnet18, of the same shapes, and more blocks: refused, not half-loaded
    with pytest.raises(FamkdError, match="it has keys a resnet18 has not: layer1.2.bn1.bias"):
        fpn_backbone("resnet18", str(tmp_path / "r34.pth"))

    def offline(self, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(FamkdError, match="pass train.student_init=PATH"):
        fpn_backbone("resnet18", "imagenet")


def test_a_detectron2_pkl_teacher_distils_inside_the_trainer(coco: Path, tmp_path: Path) -> None:
    """teacher.checkpoint=*.pkl (Detectron2 R-50-FPN layout, the tiny set's 3 classes): the trainer's teacher is
    the import of that file for the run's sizes, and kd trains against it through `famkd detect train`."""
    pkl = write_detectron2_pickle(tmp_path / "model_final.pkl", random_detectron2_weights(50, num_classes=3))
    run_dir = tmp_path / "kd"
    overrides = [*distill_overrides(coco, pkl, run_dir, "kd"), "teacher.name=resnet50", "train.iterations=2"]
    trainer = Trainer(DETECTION, load_detection_config(None, overrides), None, (), None)
    spec = Detectron2Spec(depth=50, num_classes=3, min_size=64, max_size=96)
    expected = import_detectron2_faster_rcnn(pkl, spec).state_dict()
    teacher = trainer.distiller.teacher
    assert teacher is not None and not teacher.training
    assert all(torch.equal(value, expected[key]) for key, value in teacher.state_dict().items())
    summary = trainer.run()
    records = read_metrics(run_dir)
    assert summary["status"] == "completed" and summary["teacher"] == "resnet50"
    assert math.isfinite(records[-1]["loss_kd"]) and records[-1]["loss_kd"] > 0


def test_torchvision_coco_weights_teach_the_datasets_categories(tmp_path: Path) -> None:
    """A torchvision COCO detector file (91 outputs: category ids) loads as the teacher of a dataset with category
    ids (1, 3, 7): its logits and box deltas are the file's model's at outputs 0, 1, 3 and 7."""
    torch.manual_seed(0)
    coco_model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=64, max_size=96
    ).eval()
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(coco_model.state_dict(), path)
    teacher = load_teacher("resnet50", path, (1, 3, 7), 64, 96)
    images = [torch.rand(3, 64, 96)]
    proposals = [torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 5.0, 60.0, 50.0]])]
    features, sizes = teacher_features(teacher, images)
    with torch.no_grad():
        heads = teacher.roi_heads
        logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))
        reference_images, _ = coco_model.transform(images)
        reference_features = coco_model.backbone(reference_images.tensors)
        heads = coco_model.roi_heads
        pooled = heads.box_roi_pool(reference_features, proposals, reference_images.image_sizes)
        reference_logits, reference_deltas = heads.box_predictor(heads.box_head(pooled))
    torch.testing.assert_close(logits, reference_logits[:, [0, 1, 3, 7]])
    torch.testing.assert_close(deltas, reference_deltas.reshape(2, 91, 4)[:, [0, 1, 3, 7]].reshape(2, 16))
    with pytest.raises(FamkdError, match="category id 95"):
        load_teacher("resnet50", path, (1, 95), 64, 96)


# ---- the published recipe: frozen batch norm, L1 box regression, no weight decay on norms --------------------


def batch_norms(module: torch.nn.Module) -> dict[str, type]:
    """Name -> type of every batch norm in `module`, frozen or not."""
    kinds = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    return {name: type(layer) for name, layer in module.named_modules() if isinstance(layer, kinds)}


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_frozen_bn_student_backbones_keep_their_batch_norm_through_training(backbone: str) -> None:
    """train.frozen_bn (the default): every batch norm of the student's body is a FrozenBatchNorm2d and a training
    step changes none of its statistics and affine values; without it MobileNetV2's are trainable BatchNorm2d, and
    a ResNet's too but in its frozen stem and layer1."""
    torch.manual_seed(0)
    student = build_detector(backbone, 4, 64, 96)
    norms = batch_norms(student.backbone.body)
    assert norms and set(norms.values()) == {FrozenBatchNorm2d}
    distiller = create_detection_distiller("vanilla", student, None, {}).train()
    before = {key: value.clone() for key, value in student.backbone.body.state_dict().items()}
    optimizer = build_optimizer(distiller, load_detection_config(None).train)
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])}] * 2
    sum(distiller(images, targets, iteration=1)[1].values()).backward()
    optimizer.step()
    after = student.backbone.body.state_dict()
    frozen = [key for key in before if key.rsplit(".", 1)[0] in norms]
    assert frozen and all(torch.equal(before[key], after[key]) for key in frozen)
    assert any(not torch.equal(before[key], after[key]) for key in before if key not in frozen)  # convs train

    trainable = batch_norms(build_detector(backbone, 4, 64, 96, frozen_bn=False).backbone.body)
    if backbone == "mobilenet_v2":
        assert set(trainable.values()) == {torch.nn.BatchNorm2d}
    else:
        assert {name for name, kind in trainable.items() if kind is FrozenBatchNorm2d} == {
            name for name in trainable if name == "bn1" or name.startswith("layer1.")
        }
        assert trainable["layer2.0.bn1"] is torch.nn.BatchNorm2d


def smooth_l1(difference: torch.Tensor, beta: float) -> torch.Tensor:
    """Smooth L1 written out: 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (beta 0: |d|)."""
    d = difference.abs()
    return torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta) if beta > 0 else d


@pytest.mark.parametrize("beta", [0.0, 1 / 9])
def test_box_losses_are_smooth_l1_of_the_configured_beta(beta: float) -> None:
    """The box head's and the RPN's box losses on hand-made deltas and targets: the sum of smooth L1 at `beta`
    over the positives' deltas (the box head: at each positive's own class), over the proposals' / sampled
    anchors' count; the classification and objectness terms are untouched."""
    torch.manual_seed(0)
    model = build_detector("resnet18", 3, 64, 96, rpn_smooth_l1_beta=beta, box_smooth_l1_beta=beta)
    heads, rpn = model.roi_heads, model.rpn
    assert isinstance(heads, SmoothL1RoIHeads) and isinstance(rpn, SmoothL1RPN)
    # three proposals: labels 2 (positive), 0 (background), 1 (positive); deltas of 3 classes x 4
    labels = [torch.tensor([2, 0, 1])]
    targets = [torch.tensor([[0.05, -0.5, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0], [0.1, 0.2, -0.02, 0.3]])]
    deltas = torch.zeros(3, 12)
    deltas[0, 8:12] = torch.tensor([0.0, 0.0, 0.04, 0.5])  # label 2's deltas: differences -0.05, 0.5, 0.04, -0.5
    deltas[2, 4:8] = torch.tensor([0.1, 0.0, 0.0, 0.0])  # label 1's deltas: differences 0, -0.2, 0.02, -0.3
    logits = torch.randn(3, 3)
    loss_classifier, loss_box = heads.box_losses(logits, deltas, labels, targets)
    differences = torch.cat([deltas[0, 8:12] - targets[0][0], deltas[2, 4:8] - targets[0][2]])
    torch.testing.assert_close(loss_box, smooth_l1(differences, beta).sum() / 3)
    torch.testing.assert_close(loss_classifier, F.cross_entropy(logits, labels[0]))
    if beta == 0:  # L1: each difference counts at its size, small ones too
        torch.testing.assert_close(loss_box, differences.abs().sum() / 3)
    else:  # torchvision's own loss
        torch.testing.assert_close((loss_classifier, loss_box), fastrcnn_loss(logits, deltas, labels, targets))

    # RPN: 4 anchors (1 positive, 2 negative, 1 ignored), all sampled (256 a image)
    anchor_labels = [torch.tensor([1.0, 0.0, -1.0, 0.0])]
    anchor_targets = [torch.tensor([[0.3, -0.05, 0.0, 0.02]] * 4)]
    objectness, anchor_deltas = torch.randn(4, 1), torch.tensor([[0.0, 0.0, 0.1, 0.0]] * 4)
    loss_objectness, loss_rpn_box = rpn.compute_loss(objectness, anchor_deltas, anchor_labels, anchor_targets)
    torch.testing.assert_close(loss_rpn_box, smooth_l1(anchor_deltas[0] - anchor_targets[0][0], beta).sum() / 3)
    sampled = torch.tensor([0, 1, 3])
    torch.testing.assert_close(
        loss_objectness, F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], anchor_labels[0][sampled])
    )
    if beta != 0:
        torch.manual_seed(1)
        ours = rpn.compute_loss(objectness, anchor_deltas, anchor_labels, anchor_targets)
        torch.manual_seed(1)
        theirs = RegionProposalNetwork.compute_loss(rpn, objectness, anchor_deltas, anchor_labels, anchor_targets)
        torch.testing.assert_close(ours, theirs)


def test_the_detectors_own_training_forward_has_famkds_losses() -> None:
    """model(images, targets) in training gives the losses detector_forward gives (the same betas, the images at
    the size given), so both ways of training a famkd detector agree; and the betas are the config's."""
    images = [torch.rand(3, 64, 96), torch.rand(3, 48, 64)]  # two sizes, as multi-scale batches hold
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[10.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
    ]
    torch.manual_seed(0)
    model = build_detector("resnet18", 4, 80, 120, rpn_smooth_l1_beta=0.0, box_smooth_l1_beta=0.5).train()
    torch.manual_seed(1)
    outputs = detector_forward(model, images, targets)
    assert outputs.image_sizes == [(64, 96), (48, 64)]  # not resized to min_size 80
    torch.manual_seed(1)
    losses = model(images, targets)
    assert set(losses) == set(outputs.losses)
    for name, value in losses.items():
        torch.testing.assert_close(value, outputs.losses[name])
    train = load_detection_config(None, ["train.rpn_smooth_l1_beta=0.2", "train.box_smooth_l1_beta=0.3"]).train
    assert (train.rpn_smooth_l1_beta, train.box_smooth_l1_beta) == (0.2, 0.3)
    assert load_detection_config(None).train.rpn_smooth_l1_beta == 0.0


@pytest.mark.parametrize("norm_weight_decay", [False, True])
def test_norm_layers_are_left_undecayed_unless_asked(norm_weight_decay: bool) -> None:
    """train.norm_weight_decay=false (detection's default): the parameters of normalisation layers (here the
    reviewkd heads' BatchNorm and MobileNetV2's trainable BatchNorm) form a group without weight decay and every
    other trained parameter keeps train.weight_decay; true: one group, all decayed."""
    torch.manual_seed(0)
    student = build_detector("mobilenet_v2", 4, 64, 96, frozen_bn=False)
    teacher = build_detector("resnet18", 4, 64, 96).eval()
    distiller = create_detection_distiller("reviewkd", student, teacher, {"mid_channels": 16})
    train = load_detection_config(None, [f"train.norm_weight_decay={norm_weight_decay}"]).train
    optimizer = build_optimizer(distiller, train)
    norm_names = {
        f"{module_name}.{name}"
        for module_name, module in distiller.named_modules()
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
        for name, _ in module.named_parameters(recurse=False)
    }
    names = {id(p): name for name, p in distiller.named_parameters()}
    trained = {name for name, p in distiller.named_parameters() if p.requires_grad and not name.startswith("teacher.")}
    assert any(name.startswith("student.") for name in norm_names) and any(n.startswith("heads.") for n in norm_names)
    groups = [({names[id(p)] for p in group["params"]}, group["weight_decay"]) for group in optimizer.param_groups]
    if norm_weight_decay:
        assert groups == [(trained, 1e-4)]
    else:
        assert groups == [(trained - norm_names, 1e-4), (norm_names, 0.0)]


def test_a_papers_config_trains_multi_scale_with_frozen_bn(coco: Path, teacher: Path, tmp_path: Path) -> None:
    """configs/coco/reviewkd/resnet50_mobilenet_v2.yaml as published (sizes 640..800 drawn per image, evaluation
    at 800 x 1333, frozen BN, L1 box losses, no decay on norms) builds that recipe and takes a step on the tiny
    set (its 64 x 48 images scaled up; the teacher a resnet18 for speed)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "coco" / "reviewkd" / "resnet50_mobilenet_v2.yaml"
    overrides = [
        "teacher.name=resnet18",
        f"teacher.checkpoint={teacher}",
        f"data.root={coco}",
        "data.workers=0",
        "device=cpu",
        "train.student_init=none",
        "train.iterations=1",
        "train.eval_batch_size=2",
        *SCHEDULE,
        f"run.dir={tmp_path / 'run'}",
    ]
    trainer = Trainer(DETECTION, load_detection_config(config, overrides), None, (), None)
    transform = trainer.data.train_set.transform
    assert transform.train_sizes == (640, 672, 704, 736, 768, 800) and transform.max_size == 1333
    student = trainer.distiller.student
    assert set(batch_norms(student.backbone.body).values()) == {FrozenBatchNorm2d}
    assert (student.rpn.box_loss_beta, student.roi_heads.box_loss_beta) == (0.0, 0.0)
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [1e-4, 0.0]  # the heads' BN
    trainer.data.train_loader.set_epoch(0)
    images, _ = next(iter(trainer.data.train_loader))
    assert all(min(image.shape[-2:]) in transform.train_sizes for image in images)
    summary = trainer.run()
    assert summary["status"] == "completed"
    assert all(
        math.isfinite(value) for key, value in read_metrics(tmp_path / "run")[-1].items() if key.startswith("loss")
    )


REVIEW_FAM = ["distill.form=review", "distill.tile_sizes=[8,4,2,2,1]", "distill.mid_channels=16"]


def test_fam_kd_review_form_trains_through_the_cli_and_is_evaluated(coco: Path, teacher: Path, tmp_path: Path) -> None:
    """distill.form=review (ABF + HCL at native resolution, tiled FAM output heads) trains on the tiny COCO through
    `famkd detect train` as the pooled form does, and its term falls."""
    run_dir = tmp_path / "fam_kd_review"
    overrides = [*distill_overrides(coco, teacher, run_dir), *REVIEW_FAM, "data.flip_prob=0", "train.iterations=16"]
    config = tmp_path / "fam_kd_review.yaml"
    config.write_text("train:\n  lr: 0.01\n  log_interval: 4\n")
    assert detect("train", str(config), *overrides) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and set(summary) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    records = read_metrics(run_dir)
    assert [record["iteration"] for record in records] == [4, 8, 12, 16]
    fam_kd = [record["loss_fam_kd"] for record in records]
    assert all(math.isfinite(value) for value in fam_kd) and fam_kd == sorted(fam_kd, reverse=True), fam_kd
    assert fam_kd[-1] < fam_kd[0]  # HCL of BN-normalised heads against the teacher's signed maps falls slowly
    heads = load_checkpoint(run_dir / "checkpoints" / "last.pt")["heads"]
    assert any(key.endswith("output_head.0.fam.global_filter") for key in heads)  # the review form's heads were saved


def batch_norm_written_out(x: torch.Tensor, norm: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Training-mode BatchNorm: each channel normalised over the batch and the map (biased variance)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]


def tiled_fam_written_out(x: torch.Tensor, fam) -> torch.Tensor:
    """FAM on each T x T tile of x, zero-padded at the bottom and right to multiples of T, one tile at a time."""
    tile, (height, width) = fam.size, x.shape[-2:]
    padded = x.new_zeros(*x.shape[:2], -(-height // tile) * tile, -(-width // tile) * tile)
    padded[..., :height, :width] = x
    out = x.new_zeros(x.shape[0], fam.out_channels, *padded.shape[-2:])
    for top in range(0, padded.shape[-2], tile):
        for left in range(0, padded.shape[-1], tile):
            out[..., top : top + tile, left : left + tile] = fam(padded[..., top : top + tile, left : left + tile])
    return out[..., :height, :width]


def test_fam_kd_review_term_is_hcl_of_abf_and_tiled_fam_heads(detectors) -> None:
    """The review form's term, written out: ABF down P6..P2 at native size (the deeper map nearest-upsampled and
    fused through two sigmoid maps), then each level's FAM tile by tile (tile sides that do not divide the maps,
    so padding and cropping are exercised) + training-mode BN, then HCL against the teacher's FPN maps. Every
    head parameter gets a gradient."""
    student, teacher = detectors
    options = {"form": "review", "tile_sizes": [8, 5, 3, 2, 1], "mid_channels": 8}
    distiller = create_detection_distiller("fam_kd", student, teacher, options).train()
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    outputs = fixed_outputs(student, images)
    loss = distiller.distill_loss(outputs, images)
    teacher_maps = distiller.teacher_maps(images)[0]
    heads_out, residual = [], None
    for head, level in zip(distiller.heads, reversed(range(5))):
        x = head.input_proj(outputs.features[FPN_LEVELS[level]])
        if residual is not None:
            up = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            maps = head.attention(torch.cat([x, up], dim=1))
            x = x * maps[:, 0:1] + up * maps[:, 1:2]
        tiled, norm = head.output_head
        out = batch_norm_written_out(tiled_fam_written_out(x, tiled.fam), norm)
        assert out.shape == teacher_maps[FPN_LEVELS[level]].shape
        heads_out.insert(0, out)
        residual = x
    expected = hierarchical_context_loss(heads_out, [teacher_maps[name] for name in FPN_LEVELS])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    named = list(distiller.heads.named_parameters())
    assert named and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in named), [
        n for n, p in named if p.grad is None or not p.grad.abs().sum() > 0
    ]


def test_fam_kd_review_form_with_only_fams_local_branch_is_reviewkd(detectors) -> None:
    """With gamma1 = 0 and gamma2 = 1 a FAM is its 1x1 convolution (+ a bias, which training-mode BN removes), so
    the review form's term equals ReviewKD's detection term whose 3x3 output convolutions hold that 1x1 weight at
    their centre tap, the ABF weights being the same."""
    student, teacher = detectors
    review = create_detection_distiller(
        "fam_kd", student, teacher, {"form": "review", "tile_sizes": [8, 4, 2, 2, 1], "mid_channels": 16}
    ).train()
    reviewkd = create_detection_distiller("reviewkd", student, teacher, {"mid_channels": 16}).train()
    with torch.no_grad():
        for fam_head, conv_head in zip(review.heads, reviewkd.heads):
            fam = fam_head.output_head[0].fam
            fam.gamma1.zero_()
            fam.gamma2.fill_(1.0)
            fam.local.bias.normal_()  # any bias: BN subtracts it with the batch mean
            conv_head.input_proj.load_state_dict(fam_head.input_proj.state_dict())
            if conv_head.attention is not None:
                conv_head.attention.load_state_dict(fam_head.attention.state_dict())
            conv = conv_head.output_head[0]
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = fam.local.weight[:, :, 0, 0]
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    outputs = fixed_outputs(student, images)
    expected = reviewkd.distill_loss(outputs, images)
    torch.testing.assert_close(review.distill_loss(outputs, images), expected, rtol=1e-5, atol=1e-6)


def test_a_bad_fam_kd_form_or_tile_list_is_a_config_error(detectors) -> None:
    with pytest.raises(ConfigError, match=r"distill.form='reveiw' is not allowed \(did you mean 'review'\?\)"):
        create_detection_distiller("fam_kd", *detectors, {"form": "reveiw"})
    with pytest.raises(ConfigError, match="distill.tile_sizes must give one positive side per FPN level"):
        create_detection_distiller("fam_kd", *detectors, {"form": "review", "tile_sizes": [8, 4, 2]})
    with pytest.raises(ConfigError, match="choose one of: pooled, review"):
        load_detection_config(None, ["method=fam_kd", "teacher.checkpoint=t.pt", "distill.form=native"])
