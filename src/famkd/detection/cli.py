"""`famkd detect`: train and evaluate Faster R-CNN students on COCO, alone or distilled from a teacher.

    famkd detect train CONFIG [key=value ...]        e.g. configs/coco/fam_kd/resnet101_resnet18.yaml data.root=DIR
    famkd detect train --resume RUN_DIR [key=value ...]
    famkd detect eval CHECKPOINT_OR_RUN_DIR --data DIR [--batch-size N] [--device cpu|cuda|auto]

`eval` scores the student of a run folder (its checkpoints/last.pt) or of a famkd detection checkpoint on
DIR's val2017 split and prints AP, AP50, AP75, APs, APm, APl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import cast

from famkd.errors import FamkdError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="{train,eval}")
    train = actions.add_parser("train", help="train a detector (alone or distilled) on COCO")
    train.add_argument("items", nargs="*", metavar="CONFIG [key=value ...]", help="a YAML config, then overrides")
    train.add_argument("--resume", default="", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    evaluate = actions.add_parser("eval", help="COCO box AP of a run's or a checkpoint's student on val2017")
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR")
    evaluate.add_argument("--data", required=True, metavar="DIR", help="the COCO 2017 root (val2017/, annotations/)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")


def run(args: argparse.Namespace) -> int:
    require_pycocotools()
    from famkd.detection.evaluation import METRICS

    if args.action == "train":
        run_train(args.items, args.resume)  # process 0 prints the final line
    else:
        summary = run_eval(Path(args.checkpoint), args.data, args.batch_size, args.device)
        print(json.dumps({name: summary[name] for name in METRICS}))
    return 0


def require_pycocotools() -> None:
    """A FamkdError naming the extra to install when pycocotools (COCO reading and AP) is missing."""
    try:
        import pycocotools  # noqa: F401
    except ModuleNotFoundError:
        raise FamkdError(
            "famkd detect reads COCO and scores it with pycocotools, which is not installed: "
            "pip install 'famkd[detection]'"
        ) from None


def run_train(items: list[str], resume: str) -> dict:
    """Train from a config (the first item unless it is an override) or resume; returns the summary."""
    from famkd.detection.config import load_detection_config
    from famkd.detection.task import train_detection

    if resume:
        return train_detection(None, resume, overrides=items)
    if not items or "=" in items[0]:
        raise FamkdError(
            "famkd detect train needs a config file first, e.g. configs/coco/fam_kd/resnet101_resnet18.yaml"
        )
    return train_detection(load_detection_config(items[0], items[1:]))


def run_eval(source: Path, data_root: str, batch_size: int, device: str) -> dict:
    """The AP of the student saved in `source` (a run folder or a checkpoint file) on data_root's val split."""
    from famkd.detection.coco import CocoOptions, load_coco
    from famkd.detection.config import detection_config_with_overrides
    from famkd.detection.models import build_detector
    from famkd.detection.task import evaluate_detector, finite_or_none
    from famkd.engine.device import resolve_device
    from famkd.engine.run_dir import RunDir
    from famkd.weights import load_checkpoint

    checkpoint = load_checkpoint(RunDir(source).checkpoint() if source.is_dir() else source)
    if "config" not in checkpoint or "student" not in checkpoint:
        raise FamkdError(f"{source} is not a famkd detection checkpoint (it has no config and student)")
    cfg = detection_config_with_overrides(checkpoint["config"], [f"data.root={data_root}"])
    data = cast(CocoOptions, cfg.data)
    dataset = load_coco(data_root, "val", min_size=data.min_size, max_size=data.max_size)
    student = build_detector(cfg.student, dataset.categories.num_classes, data.min_size, data.max_size)
    student.load_state_dict(checkpoint["student"])
    metrics = evaluate_detector(student.to(resolve_device(device)), dataset, batch_size, workers=0)
    return {name: finite_or_none(value) for name, value in metrics.items()}
