"""`famkd export RUN_DIR_OR_CHECKPOINT --format onnx|torchscript|safetensors [--out PATH] [--which best|last]`.

Writes the student in the format (with its card inside and in PATH.json), loads the file back and compares its
outputs with the PyTorch student on a fixed batch of the run's test images (random ones where the data is not
at hand): it prints the largest absolute difference and the top-1 agreement, and fails above the tolerance.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from famkd.deploy.formats import SUFFIXES, Predictor, check_format, read_export, write_export
from famkd.deploy.student import Student, check_images, load_student
from famkd.errors import FamkdError

TOLERANCE = 1e-4  # largest absolute difference, relative to the largest output magnitude when that exceeds 1
CHECK_IMAGES = 16
DEFAULT_OPSET = 18


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT", help="a famkd run folder or training checkpoint")
    parser.add_argument("--format", required=True, help=f"one of: {', '.join(SUFFIXES)}")
    parser.add_argument("--out", default="", metavar="PATH", help="default: RUN_DIR/export/student_<which><suffix>")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="the run's best or last student")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--static-batch", action="store_true", help="ONNX: a fixed batch size instead of a dynamic one")


def run(args: argparse.Namespace) -> int:
    name = check_format(args.format)
    source = Path(args.source)
    student = load_student(source, args.which)
    out = Path(args.out) if args.out else default_path(source, student, args.which, name)
    images, what = check_images(student, CHECK_IMAGES)
    write_export(student, name, out, images[:1], args.opset, not args.static_batch)
    size_mb = out.stat().st_size / 2**20
    card = student.card
    print(f"wrote {out} ({size_mb:.1f} MiB) and {out}.json ({card['arch']}, {card['num_classes']} classes)")
    predictor, read_card = read_export(out)
    if read_card != card:
        raise FamkdError(f"{out}: the card read back differs from the one written")
    print(check_export(predictor, student, images, what))
    return 0


def default_path(source: Path, student: Student, which: str, name: str) -> Path:
    folder = source / "export" if source.is_dir() else source.parent / "export"
    stem = f"student_{which}" if source.is_dir() else source.stem
    return folder / f"{stem}{SUFFIXES[name]}"


def check_export(predictor: Predictor, student: Student, images: Tensor, what: str) -> str:
    """One line comparing the export's outputs with the student's on `images`; a FamkdError above the tolerance."""
    exported, reference = outputs_of(predictor, student, images), outputs_of(student.model, student, images)
    if exported.shape != reference.shape:
        raise FamkdError(
            f"the export's outputs have shape {tuple(exported.shape)}, the student's {tuple(reference.shape)}"
        )
    difference = float((exported - reference).abs().max()) if reference.numel() else 0.0
    tolerance = TOLERANCE * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)
    agree = top_agreement(exported, reference, student.card)
    line = f"largest absolute difference {difference:.2e} (tolerance {tolerance:.1e}), {agree}, on {what}"
    if not difference <= tolerance:
        raise FamkdError(f"the export does not compute the student: {line}")
    return f"checked against the PyTorch student: {line}"


def outputs_of(model: Any, student: Student, images: Tensor) -> Tensor:
    """Classification: the logits. Detection: each detection's box, score and label, in one (N, 6) tensor."""
    if student.card.get("task") != "detection":
        with torch.no_grad():
            return model(images).float()
    student.model.eval()
    with torch.no_grad():
        result = model(list(images))
    detections = result[1] if isinstance(result, tuple) else result  # scripted detectors return (losses, detections)
    found = detections[0]
    return torch.cat([found["boxes"], found["scores"][:, None], found["labels"][:, None].float()], dim=1)


def top_agreement(exported: Tensor, reference: Tensor, card: dict[str, Any]) -> str:
    if card.get("task") == "detection":
        return f"{len(reference)} detections"
    same = int((exported.argmax(1) == reference.argmax(1)).sum())
    return f"top-1 agreement {same}/{len(reference)}"
