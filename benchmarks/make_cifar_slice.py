"""Copy a class-balanced slice of a CIFAR-100 .npy layout (default: 10,000 training images, 100 per
class, and 2,000 test images) into ./.cifar_slice, in the same .npy layout, for benchmarks/gpu_check.sh.

    python benchmarks/make_cifar_slice.py [--source DIR] [--out .cifar_slice] [--teacher FILE]

--source defaults to $FAMKD_DATA when set, else ../shared/data/cifar100 beside the repository.
The first N images of each class are kept, in the original order. A teacher checkpoint is copied
alongside when one is found (--teacher, default: cifar100_teachers/resnet56.pth beside the source
directory). .cifar_slice/ is git-ignored: never commit data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DEFAULT_SOURCE = os.environ.get("FAMKD_DATA") or str(SHARED_DATA / "cifar100")
TEACHER_BESIDE_SOURCE = Path("cifar100_teachers") / "resnet56.pth"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices (ascending) of the first `per_class` images of every class."""
    kept = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(kept))


def read_split(source: Path, meta: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    shards = [np.load(source / name, mmap_mode="r") for name in meta[f"{split}_image_shards"]]
    labels = np.load(source / f"{split}_fine_labels.npy")
    return np.concatenate(shards), labels


def write_slice(source: Path, out: Path, train_per_class: int, test_per_class: int) -> dict[str, int]:
    meta = json.loads((source / "meta.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = read_split(source, meta, split)
        kept = first_per_class(labels, per_class)
        np.save(out / f"{split}_images_0.npy", np.ascontiguousarray(images[kept]))
        np.save(out / f"{split}_fine_labels.npy", labels[kept].astype(np.int64))
        counts[split] = len(kept)
    sliced_meta = {
        "dataset": f"slice of {meta.get('dataset', 'CIFAR-100')}: the first {train_per_class} train and "
        f"{test_per_class} test images of each class, original order",
        "source": str(source),
        "layout": meta.get("layout", "images: uint8 NHWC (N,32,32,3) RGB; labels: int64"),
        "train_image_shards": ["train_images_0.npy"],
        "test_image_shards": ["test_images_0.npy"],
        "counts": counts,
        "fine_label_names": meta["fine_label_names"],
    }
    (out / "meta.json").write_text(json.dumps(sliced_meta, indent=1) + "\n")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help="a CIFAR-100 .npy layout directory (with meta.json); "
        "default: $FAMKD_DATA, else ../shared/data/cifar100 beside the repository",
    )
    parser.add_argument("--out", default=".cifar_slice")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument(
        "--teacher",
        default="",
        help="teacher checkpoint copied as OUT/teacher.pth if it exists "
        "(default: cifar100_teachers/resnet56.pth beside the source directory)",
    )
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    if not (source / "meta.json").is_file():
        print(
            f"make_cifar_slice: {source} is not a CIFAR-100 .npy layout (no meta.json); pass --source", file=sys.stderr
        )
        return 1
    counts = write_slice(source, out, args.train_per_class, args.test_per_class)
    teacher = Path(args.teacher) if args.teacher else source.resolve().parent / TEACHER_BESIDE_SOURCE
    if teacher.is_file():
        shutil.copyfile(teacher, out / "teacher.pth")
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(
        f"{out}: {counts['train']} train and {counts['test']} test images"
        f"{', teacher.pth' if teacher.is_file() else ''}; {size_mb:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
