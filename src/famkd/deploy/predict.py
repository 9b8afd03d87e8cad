"""`famkd predict MODEL IMAGE_OR_FOLDER... [--top-k 5] [--csv PATH]`: the top-k classes of image files.

MODEL is a run folder (its best student) or an exported file (.onnx, .torchscript, .safetensors). Each image is
read as RGB and prepared as the card says: resized (shorter side) and centre-cropped for an ImageNet-style
student, resized to the input size otherwise (with a note, once, when an image's size differs), then
normalised. Unreadable files are skipped and counted. A folder's images are read in name order.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import functional as TF
from tqdm import tqdm

from famkd.deploy.formats import Predictor, no_grad, read_export
from famkd.deploy.student import load_student
from famkd.errors import FamkdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a run folder or an exported file")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--csv", default="", metavar="PATH", help="also write image, rank, class, probability rows")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    predictor, card = load_predictor(Path(args.model))
    if card.get("task") == "detection":
        raise FamkdError(f"{args.model} is a detection student: famkd predict classifies images")
    files = image_files([Path(item) for item in args.images])
    rows, skipped = predict_files(predictor, card, files, args.top_k, args.batch_size)
    for path, ranked in rows:
        print(f"{path}: " + "  ".join(f"{name} {probability:.3f}" for name, probability in ranked))
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:5])
        print(f"famkd: skipped {len(skipped)} unreadable image file(s): {shown}", file=sys.stderr)
    if args.csv:
        write_csv(Path(args.csv), rows)
    return 0


def load_predictor(model: Path) -> tuple[Predictor, dict[str, Any]]:
    if model.is_dir():
        student = load_student(model, "best")
        return no_grad(student.model), student.card
    return read_export(model)


def image_files(items: list[Path]) -> list[Path]:
    """The image files named, and those directly in the folders named (in name order)."""
    files = []
    for item in items:
        if item.is_dir():
            files += sorted(path for path in item.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            files.append(item)
        else:
            raise FamkdError(f"{item}: no such file or folder")
    if not files:
        raise FamkdError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, items))}")
    return files


def predict_files(
    predictor: Predictor, card: dict[str, Any], files: list[Path], top_k: int, batch_size: int
) -> tuple[list[tuple[Path, list[tuple[str, float]]]], list[Path]]:
    """((file, [(class name, probability)] * top_k) for each readable file, the unreadable files)."""
    names = card["class_names"] or [str(label) for label in range(card["num_classes"])]
    prepare = Preparation(card)
    rows: list[tuple[Path, list[tuple[str, float]]]] = []
    for batch_files, images in tqdm(batches(files, prepare, batch_size), desc="predict", unit="batch", disable=None):
        probabilities = torch.softmax(torch.as_tensor(predictor(images)).float(), dim=1)
        values, labels = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        for path, row_values, row_labels in zip(batch_files, values.tolist(), labels.tolist()):
            rows.append((path, [(names[label], value) for label, value in zip(row_labels, row_values)]))
    return rows, prepare.unreadable


def batches(files: list[Path], prepare: Preparation, batch_size: int) -> Iterator[tuple[list[Path], Tensor]]:
    for start in range(0, len(files), batch_size):
        read = [(path, prepare(path)) for path in files[start : start + batch_size]]
        kept = [(path, image) for path, image in read if image is not None]
        if kept:
            yield [path for path, _ in kept], torch.stack([image for _, image in kept])


class Preparation:
    """An image file as the student takes it (see the module docstring); None for an unreadable file."""

    def __init__(self, card: dict[str, Any]):
        self.card = card
        self.side = card["input_size"]
        self.unreadable: list[Path] = []
        self.noted = False

    def __call__(self, path: Path) -> Tensor | None:
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, UnidentifiedImageError):
            self.unreadable.append(path)
            return None
        if self.card.get("resize"):
            image = TF.center_crop(TF.resize(image, self.card["resize"]), [self.side, self.side])
        elif image.size != (self.side, self.side):
            if not self.noted:
                print(f"note: images of another size than {self.side}x{self.side} are resized to it", file=sys.stderr)
                self.noted = True
            image = TF.resize(image, [self.side, self.side])
        return TF.normalize(TF.to_tensor(image), self.card["mean"], self.card["std"])


def write_csv(path: Path, rows: list[tuple[Path, list[tuple[str, float]]]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "rank", "class", "probability"])
        for image, ranked in rows:
            writer.writerows([str(image), rank, name, f"{value:.6f}"] for rank, (name, value) in enumerate(ranked, 1))
