"""Tiny CIFAR-100 copies in both real on-disk formats, for tests of the real loading code.

`tiny_cifar_arrays` makes the reference arrays (random uint8 NHWC pixels, shuffled labels);
`write_tiny_cifar(root, fmt)` writes them either as a `cifar-100-python` directory (the pickles
torchvision downloads) or in the `.npy` layout of ../shared/data/cifar100, and returns the path
to give as `data.root`. Both formats written with the same arguments hold the same images.

Only labels 0 .. num_classes-1 carry images, but the label-name lists have all 100 entries as in
the real files, so a loaded dataset reports num_classes=100 unless `data.classes` is set.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from famkd.data import ImageDataset

TOTAL_CLASSES = 100
FINE_LABEL_NAMES = [f"fine_class_{i:02d}" for i in range(TOTAL_CLASSES)]
COARSE_LABEL_NAMES = [f"coarse_class_{i:02d}" for i in range(20)]


def tiny_cifar_arrays(
    num_classes: int = 10, train_per_class: int = 6, test_per_class: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """Reference data: {train,test}_images uint8 (N, 32, 32, 3) NHWC, {train,test}_labels int64 (N,).

    Each split has per_class images of every label < num_classes, in a seeded shuffled order.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), per_class))
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    return arrays


def write_tiny_cifar(
    root: str | Path, fmt: str, num_classes: int = 10, train_per_class: int = 6, test_per_class: int = 3, seed: int = 0
) -> Path:
    """Write `tiny_cifar_arrays(...)` under `root` in format `fmt` and return `root` (for data.root).

    fmt "pickle": root/cifar-100-python/{train,test,meta}, pickled dicts with bytes keys as in the
    published files (b"data" uint8 (N, 3072) CHW rows, b"fine_labels", b"coarse_labels", ...).
    fmt "npy": root/meta.json, uint8 NHWC shards (train split in two shards), int64 label files.
    """
    root = Path(root)
    arrays = tiny_cifar_arrays(num_classes, train_per_class, test_per_class, seed)
    if fmt == "pickle":
        _write_pickle_dir(root / "cifar-100-python", arrays)
    elif fmt == "npy":
        _write_npy_layout(root, arrays)
    else:
        raise ValueError(f"fmt must be 'pickle' or 'npy', got {fmt!r}")
    return root


def _coarse(labels: np.ndarray) -> np.ndarray:
    return labels % len(COARSE_LABEL_NAMES)


def _write_pickle_dir(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        content = {
            b"filenames": [f"{split}_{i:05d}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": _coarse(labels).tolist(),
            b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1).copy(),
        }
        (directory / split).write_bytes(pickle.dumps(content, protocol=2))
    meta = {
        b"fine_label_names": [name.encode() for name in FINE_LABEL_NAMES],
        b"coarse_label_names": [name.encode() for name in COARSE_LABEL_NAMES],
    }
    (directory / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def _write_npy_layout(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[str]] = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        pieces = np.array_split(images, 2) if split == "train" else [images]
        shards[split] = []
        for index, piece in enumerate(pieces):
            name = f"{split}_images_{index}.npy"
            np.save(directory / name, piece)
            shards[split].append(name)
        np.save(directory / f"{split}_fine_labels.npy", labels)
        np.save(directory / f"{split}_coarse_labels.npy", _coarse(labels))
    meta = {
        "dataset": "tiny random stand-in for CIFAR-100 (test fixture)",
        "layout": "images: uint8 NHWC (N,32,32,3) RGB; labels: int64",
        "train_image_shards": shards["train"],
        "test_image_shards": shards["test"],
        "counts": {"train": len(arrays["train_labels"]), "test": len(arrays["test_labels"])},
        "fine_label_names": FINE_LABEL_NAMES,
        "coarse_label_names": COARSE_LABEL_NAMES,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))


def tiny_datasets(
    num_classes: int = 10, train_per_class: int = 4, test_per_class: int = 2
) -> tuple[ImageDataset, ImageDataset]:
    """In-memory (train, test) ImageDatasets of random 32x32 images, labels cycling over the classes, for
    tests that replace the trainer's `build_datasets`."""
    generator = torch.Generator().manual_seed(0)

    def split(per_class: int) -> ImageDataset:
        labels = torch.arange(num_classes).repeat(per_class)
        images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8, generator=generator)
        return ImageDataset(images, labels, num_classes, (0.5,) * 3, (0.25,) * 3, "random test images")

    return split(train_per_class), split(test_per_class)
