"""Time the training iteration of famkd's detection distillers (Faster R-CNN + FPN) side by side.

    PYTHONPATH=src python benchmarks/bench_detection.py --threads 2 --steps 10
    PYTHONPATH=src python benchmarks/bench_detection.py --methods reviewkd,fam_kd,fam_kd:form=review \
        --min-size 800 --max-size 1333 --batch-size 1

A method may carry options, each after a colon: `method:key=value:key=value` (e.g. `fam_kd:form=review`);
the values are read as a config override's are.

Every method trains its own student (same seed) and heads against one shared, randomly initialised
teacher, on one fixed synthetic batch: B images of (3, min_size, max_size), uniform in [0, 1], so that the
detector's transform does not resize them, each with a few random boxes and labels 1..num_classes-1.
The step is the trainer's: the distiller's summed loss terms, zero_grad, backward and SGD (momentum 0.9,
weight decay 1e-4) over the trainable parameters, but at lr 0, which costs the same and keeps every step
the same work: the random teacher's FPN maps are huge, so at any lr > 0 the feature methods' students
diverge within a few steps and their proposals collapse (the box head then sees a handful of RoIs, not 512
per image). Steps run round-robin across the methods, each round starting one method later, as in `famkd
bench`; the first --warmup rounds are not timed, and a step is timed from its start until the device has
finished it. Reported per method: the median ms per iteration, images/s, the ratio to vanilla's median
(when vanilla is timed), the heads' parameters and the peak memory (MiB): on cpu the max RSS of a fresh
process running only that method for two steps; on cuda the peak allocated during the timed steps, the
other methods' tensors excluded (as `famkd bench` measures them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from famkd.bench import MEMORY_CHILD_STEPS, max_rss_mb, resident_bytes
from famkd.detection.config import TASK, DetectionTrainConfig
from famkd.detection.models import build_detector
from famkd.distill import Distiller, create_distiller, needs_teacher
from famkd.distill.registry import distiller_class
from famkd.engine.device import resolve_device
from famkd.engine.host_memory import retain_freed_memory
from famkd.engine.schedule import build_optimizer
from famkd.engine.step import optimizer_step
from famkd.errors import FamkdError

BOXES_PER_IMAGE = 3
MIN_BOX_SIDE = 8  # pixels


@dataclass
class DetectionRun:
    """One method's distiller, its optimiser, its step times (seconds) and its cuda peak (bytes)."""

    method: str
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    times_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet101")
    parser.add_argument("--student", default="resnet18")
    parser.add_argument(
        "--methods",
        default="vanilla,kd,reviewkd,fam_kd",
        help="comma-separated detection methods, each optionally with options: fam_kd:form=review",
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=128, help="image height")
    parser.add_argument("--max-size", type=int, default=192, help="image width")
    parser.add_argument("--num-classes", type=int, default=81, help="classes including the background")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the settings and results here")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)  # settings as JSON on stdin
    args = parser.parse_args(argv)
    if args.memory_child:
        return argparse.Namespace(**json.loads(sys.stdin.read()))
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not args.methods or len(set(args.methods)) != len(args.methods):
        parser.error(f"--methods must list distinct methods, got {args.methods}")
    if min(args.batch_size, args.steps, args.warmup + 1) < 1:
        parser.error("--batch-size and --steps must be >= 1, --warmup >= 0")
    if args.num_classes < 2 or not MIN_BOX_SIDE < args.min_size <= args.max_size:
        parser.error(f"need --num-classes >= 2 and {MIN_BOX_SIDE} < --min-size <= --max-size")
    return args


def method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'fam_kd:form=review:mid_channels=32' -> ('fam_kd', {'form': 'review', 'mid_channels': 32}) (YAML values)."""
    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FamkdError(f"--methods: {spec!r}: options are written method:key=value, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return name, options


def synthetic_batch(
    batch_size: int, height: int, width: int, num_classes: int, device: torch.device
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images uniform in [0, 1] and torchvision targets: BOXES_PER_IMAGE boxes (x1 < x2, y1 < y2, at least
    MIN_BOX_SIDE pixels, inside the image) with labels in 1..num_classes-1."""
    images, targets = [], []
    for _ in range(batch_size):
        corner = torch.rand(BOXES_PER_IMAGE, 2) * torch.tensor([width - MIN_BOX_SIDE, height - MIN_BOX_SIDE])
        room = torch.tensor([width, height]) - corner - MIN_BOX_SIDE
        boxes = torch.cat([corner, corner + MIN_BOX_SIDE + torch.rand(BOXES_PER_IMAGE, 2) * room], dim=1)
        labels = torch.randint(1, num_classes, (BOXES_PER_IMAGE,))
        images.append(torch.rand(3, height, width).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def build_run(
    args: argparse.Namespace, method: str, teacher: torch.nn.Module | None, device: torch.device
) -> DetectionRun:
    """The method's distiller around a fresh student (seeded), with the trainer's SGD at lr 0 (see the module
    docstring)."""
    torch.manual_seed(args.seed)
    student = build_detector(args.student, args.num_classes, args.min_size, args.max_size)
    name, options = method_spec(method)
    distiller = create_distiller(name, task=TASK, student=student, teacher=teacher, **options)
    distiller = distiller.to(device).train()
    optimizer = build_optimizer(distiller, DetectionTrainConfig(lr=0.0))
    return DetectionRun(method, distiller, optimizer)


def training_step(
    method_run: DetectionRun, images: list[Tensor], targets: list[dict[str, Tensor]], iteration: int
) -> None:
    """One optimiser step as the trainer takes it."""
    optimizer_step(
        method_run.distiller, method_run.optimizer, None, contextlib.nullcontext, (images, targets, iteration)
    )


def benchmark(args: argparse.Namespace, device: torch.device) -> list[DetectionRun]:
    """Every method's step times, round-robin (and its cuda peak over the timed steps)."""
    torch.manual_seed(args.seed)
    images, targets = synthetic_batch(args.batch_size, args.min_size, args.max_size, args.num_classes, device)
    teacher = None  # built only for the methods that need it, so that vanilla's memory child has none
    if any(needs_teacher(method_spec(method)[0], TASK) for method in args.methods):
        teacher = build_detector(args.teacher, args.num_classes, args.min_size, args.max_size).to(device).eval()
    runs = [build_run(args, method, teacher, device) for method in args.methods]
    batch_bytes = sum(image.nbytes for image in images)
    for round_index in range(args.warmup + args.steps):
        timed, shift = round_index >= args.warmup, round_index % len(runs)
        for method_run in runs[shift:] + runs[:shift]:
            if device.type == "cuda":
                resident_before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            training_step(method_run, images, targets, round_index + 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if timed:
                method_run.times_s.append(elapsed)
            if timed and device.type == "cuda":
                own = resident_bytes(method_run) + batch_bytes
                peak = torch.cuda.max_memory_allocated(device) - resident_before + own
                method_run.peak_bytes = max(method_run.peak_bytes, peak)
    return runs


def child_max_rss_mb(args: argparse.Namespace, method: str) -> float:
    """Max RSS (MiB) of a fresh process that builds `method` alone and runs MEMORY_CHILD_STEPS steps."""
    settings = dict(vars(args), methods=[method], steps=MEMORY_CHILD_STEPS, warmup=0, memory_child=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child"]
    completed = subprocess.run(command, input=json.dumps(settings), capture_output=True, text=True)
    if completed.returncode != 0:
        raise FamkdError(f"the memory measurement of {method!r} failed:\n{completed.stderr.strip()}")
    return float(completed.stdout.split()[-1])


def run(args: argparse.Namespace) -> dict:
    """Benchmark the methods of `args`; returns {"settings": ..., "results": one dict per method}."""
    for method in args.methods:
        distiller_class(method_spec(method)[0], TASK)  # a ConfigError naming the nearest method
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = benchmark(args, device)
    medians = {method_run.method: statistics.median(method_run.times_s) for method_run in runs}
    results = []
    for method_run in runs:
        median = medians[method_run.method]
        if not args.memory:
            peak = None
        elif device.type == "cuda":
            peak = method_run.peak_bytes / 2**20
        else:
            peak = child_max_rss_mb(args, method_run.method)
        results.append(
            {
                "method": method_run.method,
                "ms_per_iter": 1000.0 * median,
                "times_ms": [1000.0 * elapsed for elapsed in method_run.times_s],
                "images_per_s": args.batch_size / median,
                "ratio_to_vanilla": median / medians["vanilla"] if "vanilla" in medians else None,
                "head_params": method_run.distiller.num_head_parameters(),
                "peak_mem_mb": peak,
            }
        )
    settings = {
        "teacher": args.teacher,
        "student": args.student,
        "batch_size": args.batch_size,
        "image_size": [args.min_size, args.max_size],
        "num_classes": args.num_classes,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return {"settings": settings, "results": results}


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"torch {s['torch']}, {s['threads']} threads, device {s['device']}, {s['teacher']} -> {s['student']}, "
        f"images {s['image_size'][0]}x{s['image_size'][1]}, batch {s['batch_size']}, {s['num_classes']} classes, "
        f"median of {s['steps']} steps after {s['warmup']} warm-up rounds",
        "",
        "| method | ms/iter (median) | images/s | x vanilla | head params (M) | peak MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        ratio = "-" if r["ratio_to_vanilla"] is None else f"{r['ratio_to_vanilla']:.2f}"
        peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(
            f"| {r['method']} | {r['ms_per_iter']:.1f} | {r['images_per_s']:.2f} | {ratio} "
            f"| {r['head_params'] / 1e6:.3f} | {peak} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    retain_freed_memory()  # as the famkd command does
    if args.memory_child:
        if args.threads:
            torch.set_num_threads(args.threads)
        benchmark(args, torch.device("cpu"))
        print(max_rss_mb())
        return 0
    try:
        report = run(args)
    except FamkdError as error:
        sys.exit(f"error: {error}")
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
