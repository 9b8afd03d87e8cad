"""The disk space of each ImageNet and COCO config's training checkpoint, measured by writing one.

    python benchmarks/checkpoint_sizes.py [CONFIG ...]     (default: every configs/imagenet and configs/coco file)

For each config the distiller is built as the run builds it (random weights: sizes do not depend on them; 1000
ImageNet classes, 80 COCO categories), the trainer's SGD takes one step of zero gradients so that its momentum
buffers exist, and `checkpoints/last.pt` is written with famkd's own writer (`save_training_checkpoint`) into a
temporary folder: the student, the heads and the optimiser state, everything else in a run's checkpoint being a
few kilobytes. Printed per config: the student's and the heads' parameters, the file's size, the run folder's
checkpoints with the default `run.keep_checkpoints=2` (last.pt, previous-1.pt and best.pt, a copy of the best
evaluation's last.pt: three files of that size), and the peak while a checkpoint is written (the new file beside
them until it is complete: four).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from famkd.config import load_config
from famkd.detection.config import load_detection_config
from famkd.detection.models import build_detector
from famkd.distill import create_distiller
from famkd.engine.checkpoint import save_training_checkpoint
from famkd.engine.schedule import build_optimizer
from famkd.models import create_model

IMAGENET_CLASSES, COCO_CATEGORIES = 1000, 80
ROOT = Path(__file__).resolve().parent.parent


def classification_distiller(path: Path):
    cfg = load_config(path)
    size = getattr(cfg.data, "crop_size", 224)
    student = create_model(cfg.student, num_classes=IMAGENET_CLASSES, image_size=size)
    teacher = (
        create_model(cfg.teacher.name, num_classes=IMAGENET_CLASSES, image_size=size) if cfg.teacher.name else None
    )
    distiller = create_distiller(cfg.method, student=student, teacher=teacher, image_size=size, **cfg.distill)
    return distiller, cfg.train


def detection_distiller(path: Path):
    cfg = load_detection_config(path, ["teacher.checkpoint=unused.pkl"])  # the teacher is built, not loaded
    size = (cfg.data.min_size, cfg.data.max_size)
    student = build_detector(cfg.student, COCO_CATEGORIES, *size)
    teacher = build_detector(cfg.teacher.name, COCO_CATEGORIES, *size) if cfg.method != "vanilla" else None
    distiller = create_distiller(cfg.method, task="detection", student=student, teacher=teacher, **cfg.distill)
    return distiller, cfg.train


def measure(path: Path) -> dict:
    build = detection_distiller if "coco" in path.parts else classification_distiller
    distiller, train_cfg = build(path)
    optimizer = build_optimizer(distiller, train_cfg)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # creates the momentum buffers
    state = {
        "student": distiller.student.state_dict(),
        "heads": distiller.head_state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "last.pt"
        save_training_checkpoint(file, state, keep=1)
        size = file.stat().st_size
    return {
        "config": str(path.relative_to(ROOT)),
        "student_m": sum(p.numel() for p in distiller.student.parameters()) / 1e6,
        "heads_m": distiller.num_head_parameters() / 1e6,
        "checkpoint_gb": size / 1e9,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.configs or sorted((ROOT / "configs" / "imagenet").rglob("*.yaml")) + sorted(
        (ROOT / "configs" / "coco").rglob("*.yaml")
    )
    print(f"{'config':48} {'student M':>9} {'heads M':>9} {'last.pt GB':>10} {'run GB':>7} {'peak GB':>7}")
    for path in paths:
        row = measure(path.resolve())
        print(
            f"{row['config']:48} {row['student_m']:9.1f} {row['heads_m']:9.1f} {row['checkpoint_gb']:10.2f} "
            f"{3 * row['checkpoint_gb']:7.2f} {4 * row['checkpoint_gb']:7.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
