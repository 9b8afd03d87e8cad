"""Tiny ImageNet-style folder trees of real JPEG and PNG files, for tests of famkd.data.imagenet.

`write_tiny_imagenet(root, val_layout)` writes, with random pixels drawn from `seed`:

    root/train/<wnid>/<wnid>_<i>.JPEG           train_per_class per class, every third one a .png
    root/val/<wnid>/ILSVRC2012_val_<k>.JPEG     val_layout="folder"
    root/val/ILSVRC2012_val_<k>.JPEG            val_layout="flat", labelled by
      + root/val/LOC_val_solution.csv           Kaggle's label file (header ImageId,PredictionString)

The val images are numbered across classes in a shuffled class order, so both layouts written with
the same arguments hold the same files with the same labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
IMAGE_WIDTH, IMAGE_HEIGHT = 48, 40


def write_image(path: Path, rng: np.random.Generator, width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT) -> None:
    """A random RGB image of width x height, in the format its suffix names (PNG for .png, else JPEG)."""
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def write_tiny_imagenet(
    root: Path,
    val_layout: str = "folder",
    wnids: tuple[str, ...] = WNIDS,
    train_per_class: int = 4,
    val_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write the tree described in the module docstring under `root` and return `root`."""
    rng = np.random.default_rng(seed)
    for wnid in wnids:
        for i in range(train_per_class):
            write_image(root / "train" / wnid / f"{wnid}_{i}{'.png' if i % 3 == 2 else '.JPEG'}", rng)
    val_wnids = rng.permutation(np.repeat(wnids, val_per_class))
    rows = []
    for number, wnid in enumerate(val_wnids, start=1):
        stem = f"ILSVRC2012_val_{number:08d}"
        folder = root / "val" / wnid if val_layout == "folder" else root / "val"
        write_image(folder / f"{stem}.JPEG", rng)
        rows.append(f"{stem},{wnid} 1 2 30 35\n")
    if val_layout == "flat":
        (root / "val" / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    return root
