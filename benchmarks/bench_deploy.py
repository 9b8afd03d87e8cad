"""Exported size and CPU latency (batch 1) of students as `famkd export` writes them: onnxruntime vs eager PyTorch.

    python benchmarks/bench_deploy.py [--models resnet8x4:32:100,resnet20:32:100,...] [--runs 50] [--threads 2]

Each model (random weights: the cost does not depend on them) is exported to ONNX, TorchScript and
safetensors through famkd.deploy (each export checked against the model), then one image at a time is
classified by onnxruntime and by the eager PyTorch model, alternating, after a warm-up; the table gives each
file's size and the median latency of each. One process, one run: the ratio is what to read on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from famkd.deploy.export import check_export
from famkd.deploy.formats import SUFFIXES, read_export, write_export
from famkd.deploy.student import Student
from famkd.models import create_model

MODELS = "resnet8x4:32:100,resnet20:32:100,MobileNetV2:32:100,resnet18:224:1000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="name:side:classes, comma-separated")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, median of {args.runs} runs after {args.warmup}")
    print("\n| student | input | ONNX MiB | TorchScript MiB | safetensors MiB | onnxruntime ms | PyTorch ms | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for spec in args.models.split(","):
        name, side, classes = spec.split(":")
        print(row(name, int(side), int(classes), args))


def row(name: str, side: int, classes: int, args: argparse.Namespace) -> str:
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).eval()
    card = {"task": "classification", "arch": name, "num_classes": classes, "class_names": [], "input_size": side}
    student = Student(model, card, Path(name), None)
    image = torch.randn(1, 3, side, side)
    sizes = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt, suffix in SUFFIXES.items():
            path = Path(folder) / f"{name}{suffix}"
            write_export(student, fmt, path, image, 18, True)
            check_export(read_export(path)[0], student, torch.randn(4, 3, side, side), "4 random images")
            sizes.append(path.stat().st_size / 2**20)
        onnx_predict = read_export(Path(folder) / f"{name}.onnx")[0]
        times: dict[str, list[float]] = {"onnx": [], "torch": []}
        with torch.no_grad():
            for index in range(args.warmup + args.runs):
                for key, predict in (("onnx", onnx_predict), ("torch", model)):
                    start = time.perf_counter()
                    predict(image)
                    if index >= args.warmup:
                        times[key].append(1000 * (time.perf_counter() - start))
    onnx_ms, torch_ms = statistics.median(times["onnx"]), statistics.median(times["torch"])
    return (
        f"| {name} | {side}x{side}, {classes} classes | {sizes[0]:.1f} | {sizes[1]:.1f} | {sizes[2]:.1f} | "
        f"{onnx_ms:.2f} | {torch_ms:.2f} | {onnx_ms / torch_ms:.2f} |"
    )


if __name__ == "__main__":
    main()
