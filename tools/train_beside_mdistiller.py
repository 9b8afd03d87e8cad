"""Train resnet56 -> resnet20 with DKD or ReviewKD in famkd and in mdistiller's published code, side by
side on the same slice of CIFAR-100, and print each run's test top-1 after every epoch (docs/method.md,
"Training beside mdistiller").

    PYTHONPATH=src python tools/train_beside_mdistiller.py --mdistiller CHECKOUT --data CIFAR100_NPY \\
        --teacher resnet56.pth --method dkd reviewkd --seed 0 1 --epochs 5 --train-per-class 128 --out DIR

CHECKOUT is megvii-research/mdistiller's files (e.g. `git --git-dir=... archive HEAD | tar -x`), outside
this repository. Its modules are imported from there, unmodified, and nothing of them is copied here:
the distillers (`mdistiller/distillers/DKD.py`, `ReviewKD.py`), the CIFAR models
(`mdistiller/models/cifar`), the dataset class and transforms (`mdistiller/dataset/cifar100.py`) and the
trainer's helpers (`mdistiller/engine/utils.py`: `adjust_learning_rate`, `accuracy`, `AverageMeter`).
The package `__init__` files are not run (they import the trainer, tensorboardX, yacs and wandb).

The mdistiller side is a CPU copy of `BaseTrainer.train_epoch` / `train_iter` (`mdistiller/engine/trainer.py`)
and `validate` (`mdistiller/engine/utils.py`) without the `.cuda()` calls, DataParallel, logging and
checkpoints. Its settings are the published ones: `mdistiller/engine/cfg.py`'s defaults (checked against
that file's text below, since yacs is not needed otherwise) merged with the pair's published config. The
famkd side is `python -m famkd train configs/cifar100/<method>/resnet56_resnet20.yaml` with the overrides
listed in `famkd_command`. Both read the first --train-per-class training images of every class and the
whole test split of --data (famkd's .npy layout), in their original order.

Where the two recipes differ, both use one value (docs/method.md lists them): ReviewKD's loss weight
(--reviewkd-weight, default 5, mdistiller's `configs/cifar100/reviewkd.yaml`; famkd's config for this pair
says 0.6). Each run gets one thread (--threads). Runs go --jobs at a time; a run whose results are already
in --out is not run again. Each run's per-epoch records are in OUT/<method>/<framework>-seed<S>/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import published_checkout  # tools/, the script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("mdistiller", "famkd")
FAMKD_CONFIG = "configs/cifar100/{method}/resnet56_resnet20.yaml"
# The published configs of the pair: DKD has one per pair; ReviewKD's only CIFAR-100 config is this one
# (written for resnet32x4 -> resnet8x4: its SOLVER and REVIEWKD_WEIGHT are taken, the shapes and channels
# are the pair's own, found from the models as in tools/make_baseline_fixtures.py).
MDISTILLER_CONFIG = {"dkd": "configs/cifar100/dkd/res56_res20.yaml", "reviewkd": "configs/cifar100/reviewkd.yaml"}
# mdistiller/engine/cfg.py's defaults that these runs use (checked against the file's text in `published_cfg`).
MDISTILLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "SOLVER": {
        "BATCH_SIZE": 64,
        "EPOCHS": 240,
        "LR": 0.05,
        "LR_DECAY_STAGES": [150, 180, 210],
        "LR_DECAY_RATE": 0.1,
        "WEIGHT_DECAY": 0.0001,
        "MOMENTUM": 0.9,
        "TYPE": "SGD",
    },
    "DATASET.TEST": {"BATCH_SIZE": 64},
    "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20},
    "REVIEWKD": {
        "CE_WEIGHT": 1.0,
        "REVIEWKD_WEIGHT": 1.0,
        "WARMUP_EPOCHS": 20,
        "STU_PREACT": False,
        "MAX_MID_CHANNEL": 512,
    },
}


def import_mdistiller(checkout: Path) -> dict[str, Any]:
    """The published modules these runs use."""
    packages = ("mdistiller.models", "mdistiller.distillers", "mdistiller.dataset", "mdistiller.engine")
    modules = {
        "models": "mdistiller.models.cifar",
        "dkd": "mdistiller.distillers.DKD",
        "reviewkd": "mdistiller.distillers.ReviewKD",
        "cifar100": "mdistiller.dataset.cifar100",
        "utils": "mdistiller.engine.utils",
    }
    return published_checkout.import_mdistiller(checkout, packages, modules)


def ns(values: dict[str, Any]) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in values.items()})


def published_cfg(checkout: Path, method: str, reviewkd_weight: float) -> dict[str, Any]:
    """cfg.py's defaults merged with the pair's published config (as `cfg.merge_from_file` does)."""
    import yaml

    cfg_text = (checkout / "mdistiller" / "engine" / "cfg.py").read_text()
    cfg: dict[str, Any] = {}
    for section, values in MDISTILLER_DEFAULTS.items():
        for key, value in values.items():
            written = json.dumps(value) if isinstance(value, str) else repr(value)
            line = rf"^CFG\.{re.escape(section)}\.{key} = {re.escape(written)}\s*(#.*)?$"
            if not re.search(line, cfg_text, flags=re.MULTILINE):
                raise SystemExit(f"mdistiller/engine/cfg.py no longer sets CFG.{section}.{key} = {value!r}")
            node = cfg
            for part in section.split("."):
                node = node.setdefault(part, {})
            node[key] = value
    published = yaml.safe_load((checkout / MDISTILLER_CONFIG[method]).read_text())
    for section in ("SOLVER", "DKD", "REVIEWKD"):
        for key, value in (published.get(section) or {}).items():
            assert key in cfg[section], f"{section}.{key}"
            cfg[section][key] = value
    if method == "reviewkd":
        cfg["REVIEWKD"]["REVIEWKD_WEIGHT"] = reviewkd_weight
    return cfg


def reviewkd_shapes(student: Any, teacher: Any) -> dict[str, list[int]]:
    """The pair's SHAPES / OUT_SHAPES (deepest first) and IN_CHANNELS / OUT_CHANNELS (shallow to deep):
    the last three stages and the pooled vector, as tools/make_baseline_fixtures.py finds them."""
    import torch

    with torch.no_grad():
        x = torch.zeros(2, 3, 32, 32)
        _, s = student.eval()(x)
        _, t = teacher.eval()(x)
    student.train()
    s_levels = [(f.shape[1], f.shape[2]) for f in s["feats"][-3:]] + [(s["pooled_feat"].shape[1], 1)]
    t_levels = [(f.shape[1], f.shape[2]) for f in t["preact_feats"][-3:]] + [(t["pooled_feat"].shape[1], 1)]
    return {
        "SHAPES": [size for _, size in s_levels][::-1],
        "OUT_SHAPES": [size for _, size in t_levels][::-1],
        "IN_CHANNELS": [channels for channels, _ in s_levels],
        "OUT_CHANNELS": [channels for channels, _ in t_levels],
    }


def load_split(data: Path, split: str, per_class: int) -> tuple[Any, Any]:
    """uint8 NHWC images and int64 labels of a split of famkd's .npy layout; the first `per_class` images
    of every class in their original order (all when 0), as famkd's data.train_per_class keeps them."""
    import numpy as np

    meta = json.loads((data / "meta.json").read_text())
    images = np.concatenate([np.load(data / name) for name in meta[f"{split}_image_shards"]])
    labels = np.load(data / f"{split}_fine_labels.npy").astype(np.int64)
    if per_class:
        kept = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
        images, labels = images[kept], labels[kept]
    return np.ascontiguousarray(images), labels


def mdistiller_dataset(cls: type, images: Any, labels: Any, transform: Any) -> Any:
    """An instance of the published dataset class (torchvision's CIFAR100 underneath) holding these images:
    its __getitem__ (PIL image -> transform, and for CIFAR100Instance the index) runs unmodified."""
    dataset = cls.__new__(cls)
    dataset.root, dataset.train = "", True
    dataset.data, dataset.targets = images, [int(label) for label in labels]
    dataset.transform, dataset.target_transform, dataset.transforms = transform, None, None
    return dataset


def run_mdistiller(args: argparse.Namespace, seed: int, out: Path) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(args.threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    checkout = args.mdistiller.resolve()
    md = import_mdistiller(checkout)
    cfg = published_cfg(checkout, args.method, args.reviewkd_weight)
    student = md["models"].resnet20(num_classes=100)
    teacher = md["models"].resnet56(num_classes=100)
    # tools/train.py: model_teacher.load_state_dict(load_checkpoint(pretrain_model_path)["model"])
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True)["model"])
    if args.method == "dkd":
        distiller = md["dkd"].DKD(student, teacher, ns(cfg))
    else:
        cfg["REVIEWKD"].update(reviewkd_shapes(student, teacher))
        distiller = md["reviewkd"].ReviewKD(student, teacher, ns(cfg))
    cifar = md["cifar100"]
    train_images, train_labels = load_split(args.data, "train", args.train_per_class)
    test_images, test_labels = load_split(args.data, "test", 0)
    # get_cifar100_dataloaders: shuffled training batches, no drop_last; num_workers 0 keeps one thread.
    train_loader = DataLoader(
        mdistiller_dataset(cifar.CIFAR100Instance, train_images, train_labels, cifar.get_cifar100_train_transform()),
        batch_size=cfg["SOLVER"]["BATCH_SIZE"],
        shuffle=True,
        num_workers=0,
    )
    test_loader = DataLoader(
        mdistiller_dataset(cifar.datasets.CIFAR100, test_images, test_labels, cifar.get_cifar100_test_transform()),
        batch_size=cfg["DATASET"]["TEST"]["BATCH_SIZE"],
        shuffle=False,
        num_workers=0,
    )
    utils = md["utils"]

    def validate(forward: Any) -> tuple[float, float]:  # utils.validate without .cuda()
        top1, top5 = utils.AverageMeter(), utils.AverageMeter()
        with torch.no_grad():
            for image, target in test_loader:
                output = forward(image.float())
                acc1, acc5 = utils.accuracy(output, target, topk=(1, 5))
                top1.update(acc1[0], image.size(0))
                top5.update(acc5[0], image.size(0))
        return float(top1.avg), float(top5.avg)

    solver = cfg["SOLVER"]
    optimizer = torch.optim.SGD(  # BaseTrainer.init_optimizer
        distiller.get_learnable_parameters(),
        lr=solver["LR"],
        momentum=solver["MOMENTUM"],
        weight_decay=solver["WEIGHT_DECAY"],
    )
    teacher.eval()
    teacher_top1, _ = validate(lambda image: teacher(image)[0])  # the loaded teacher, checked once
    header = {
        "framework": "mdistiller",
        "commit": args.mdistiller_commit or published_checkout.commit_of(checkout),
        "seed": seed,
        "train_images": len(train_labels),
        "test_images": len(test_labels),
        "teacher_test_acc": teacher_top1,
        "cfg": cfg,
    }
    (out / "run.json").write_text(json.dumps(header, indent=1) + "\n")
    print(f"mdistiller {args.method} seed {seed}: teacher test top-1 {teacher_top1:.2f}%", flush=True)
    records = out / "epochs.jsonl"
    records.unlink(missing_ok=True)
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        lr = utils.adjust_learning_rate(epoch, ns(cfg), optimizer)
        losses_meter, train_top1 = utils.AverageMeter(), utils.AverageMeter()
        distiller.train()
        for image, target, _index in train_loader:  # BaseTrainer.train_iter
            optimizer.zero_grad()
            image = image.float()
            preds, losses_dict = distiller(image=image, target=target, epoch=epoch)
            loss = sum([term.mean() for term in losses_dict.values()])
            loss.backward()
            optimizer.step()
            acc1 = utils.accuracy(preds, target, topk=(1,))[0]
            losses_meter.update(float(loss.detach()), image.size(0))
            train_top1.update(float(acc1[0]), image.size(0))
        train_time = time.time() - start
        distiller.eval()
        test_top1, test_top5 = validate(lambda image: distiller(image=image))
        record = {
            "epoch": epoch,
            "lr": float(lr),
            "train_loss": losses_meter.avg,
            "train_acc": train_top1.avg,
            "test_acc": test_top1,
            "test_top5": test_top5,
            "train_time_s": round(train_time, 1),
        }
        with records.open("a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"mdistiller {args.method} seed {seed} " + json.dumps(record), flush=True)


def famkd_command(args: argparse.Namespace, method: str, seed: int, out: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "famkd",
        "train",
        str(ROOT / FAMKD_CONFIG.format(method=method)),
        f"teacher.checkpoint={args.teacher}",
        f"data.root={args.data}",
        f"data.train_per_class={args.train_per_class}",
        f"train.epochs={args.epochs}",
        f"train.threads={args.threads}",
        f"run.seed={seed}",
        f"run.dir={out}",
        "run.tensorboard=false",
        "run.resume=never",
    ]
    if method == "reviewkd":
        command.append(f"distill.loss_weight={args.reviewkd_weight}")
    return command


def epochs_of(framework: str, out: Path) -> list[dict[str, Any]]:
    """The run's per-epoch records: its epochs.jsonl (mdistiller side) or metrics.jsonl (famkd)."""
    path = out / ("epochs.jsonl" if framework == "mdistiller" else "metrics.jsonl")
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if "test_acc" in r and "epoch" in r]
    for record in records:  # famkd's metrics.jsonl calls the epoch's mean training loss "loss"
        record.setdefault("train_loss", record.get("loss"))
    return records


def run_all(args: argparse.Namespace) -> int:
    runs = []
    for method in args.method:
        for seed in args.seed:
            for framework in FRAMEWORKS:
                out = args.out / method / f"{framework}-seed{seed}"
                if len(epochs_of(framework, out)) >= args.epochs:
                    continue
                out.mkdir(parents=True, exist_ok=True)
                for stale in ("metrics.jsonl", "epochs.jsonl"):
                    (out / stale).unlink(missing_ok=True)
                if framework == "famkd":
                    command = famkd_command(args, method, seed, out)
                else:
                    command = [sys.executable, __file__, *one_run_arguments(args, method, seed, out)]
                runs.append((f"{method} {framework} seed {seed}", command, out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    running: list[tuple[str, subprocess.Popen[bytes], float, Any]] = []
    failed = []
    while runs or running:
        while runs and len(running) < args.jobs:
            name, command, out = runs.pop(0)
            log = (out / "log.txt").open("wb")
            print(f"start {name}: {' '.join(command)}", flush=True)
            running.append(
                (name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), time.time(), log)
            )
        time.sleep(2)
        for entry in list(running):
            name, process, started, log = entry
            if process.poll() is not None:
                log.close()
                running.remove(entry)
                print(f"done {name}: exit {process.returncode}, {time.time() - started:.0f} s", flush=True)
                if process.returncode:
                    failed.append(name)
    print_tables(args)
    return 1 if failed else 0


def one_run_arguments(args: argparse.Namespace, method: str, seed: int, out: Path) -> list[str]:
    return [
        "--one-run",
        f"--mdistiller={args.mdistiller}",
        f"--data={args.data}",
        f"--teacher={args.teacher}",
        f"--method={method}",
        f"--seed={seed}",
        f"--epochs={args.epochs}",
        f"--train-per-class={args.train_per_class}",
        f"--threads={args.threads}",
        f"--reviewkd-weight={args.reviewkd_weight}",
        f"--out={out}",
        *([f"--mdistiller-commit={args.mdistiller_commit}"] if args.mdistiller_commit else []),
    ]


def print_tables(args: argparse.Namespace) -> None:
    """Per method: test top-1 after each epoch, then the epoch's mean training loss (CE + distillation
    term), one column per run; with two seeds, each framework's seed-to-seed spread and the gap between the
    frameworks' two-seed means."""
    columns = [(framework, seed) for framework in FRAMEWORKS for seed in args.seed]
    metrics = [("test_acc", "test top-1 (%) after each epoch"), ("train_loss", "mean training loss of each epoch")]
    for method in args.method:
        results = {c: epochs_of(c[0], args.out / method / f"{c[0]}-seed{c[1]}") for c in columns}
        for key, title in metrics:
            print(f"\n{method}: resnet56 -> resnet20, {title}")
            print("| epoch | " + " | ".join(f"{f} seed {s}" for f, s in columns) + " |")
            print("|---:|" + "---:|" * len(columns))
            for epoch in range(1, args.epochs + 1):
                cells = []
                for column in columns:
                    found = [r[key] for r in results[column] if r["epoch"] == epoch]
                    cells.append(
                        f"{found[0]:.2f}" if found and key == "test_acc" else f"{found[0]:.4f}" if found else "-"
                    )
                print(f"| {epoch} | " + " | ".join(cells) + " |")
            if len(args.seed) == 2 and all(len(r) >= args.epochs for r in results.values()):
                print_spread(args, {c: [r[key] for r in results[c][: args.epochs]] for c in columns})


def print_spread(args: argparse.Namespace, values: dict[tuple[str, int], list[float]]) -> None:
    a, b = args.seed
    noise = {f: [abs(x - y) for x, y in zip(values[(f, a)], values[(f, b)])] for f in FRAMEWORKS}
    mean = {f: [(x + y) / 2 for x, y in zip(values[(f, a)], values[(f, b)])] for f in FRAMEWORKS}
    gaps = [y - x for x, y in zip(mean["mdistiller"], mean["famkd"])]
    print(
        f"|seed {a} - seed {b}| per epoch: "
        + "; ".join(
            f"{f} " + " ".join(f"{n:.2f}" for n in noise[f]) + f" (max {max(noise[f]):.2f})" for f in FRAMEWORKS
        )
    )
    print(
        "famkd - mdistiller (two-seed means) per epoch: "
        + " ".join(f"{g:+.2f}" for g in gaps)
        + f" (max |gap| {max(abs(g) for g in gaps):.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdistiller", type=Path, required=True, help="a checkout of megvii-research/mdistiller")
    parser.add_argument("--mdistiller-commit", default=None, help="its commit, if the checkout is no git work tree")
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-100 in famkd's .npy layout (meta.json)")
    parser.add_argument("--teacher", type=Path, required=True, help="resnet56 checkpoint, {'model': state_dict}")
    parser.add_argument("--method", nargs="+", choices=("dkd", "reviewkd"), default=["dkd", "reviewkd"])
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=128)
    parser.add_argument("--reviewkd-weight", type=float, default=5.0, help="ReviewKD's loss weight on both sides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--out", type=Path, required=True, help="a directory for the runs (outside the repository)")
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the runs in --out")
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data, args.teacher, args.out = args.data.resolve(), args.teacher.resolve(), args.out.resolve()
    if args.mdistiller.resolve().is_relative_to(ROOT):
        parser.error(f"{args.mdistiller} is inside this repository: use a checkout outside it")
    if args.one_run:
        args.method, args.seed = args.method[0], args.seed[0]
        run_mdistiller(args, args.seed, args.out)
        return 0
    if args.tables_only:
        print_tables(args)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
