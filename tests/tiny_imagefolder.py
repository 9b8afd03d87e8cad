"""Tiny image-folder datasets of real JPEG and PNG files, for tests of famkd.data.imagefolder and end-to-end
training on one.

`write_tiny_imagefolder(root, ...)` writes, with random pixels drawn from `seed`, size x size images:

    root/train/<class>/<class>_<i>.jpg    train_per_class per class, every odd i a .png instead
    root/val/<class>/<class>_val_<i>.jpg  val_per_class per class (with_val=True), every odd i a .png

The classes keep the order given; famkd sorts them (labels are positions among the sorted names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiny_imagenet import write_image

CLASSES = ("cat", "dog", "bird")


def image_name(stem: str, index: int) -> str:
    """`<stem>_<index>` with .png for odd indices, .jpg for even ones."""
    return f"{stem}_{index}{'.png' if index % 2 else '.jpg'}"


def write_tiny_imagefolder(
    root: Path,
    classes: tuple[str, ...] = CLASSES,
    train_per_class: int = 6,
    val_per_class: int = 2,
    size: int = 64,
    with_val: bool = True,
    seed: int = 0,
) -> Path:
    """Write the tree described in the module docstring under `root` and return `root`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in classes:
        for i in range(train_per_class):
            write_image(root / "train" / name / image_name(name, i), rng, size, size)
        for i in range(val_per_class if with_val else 0):
            write_image(root / "val" / name / image_name(f"{name}_val", i), rng, size, size)
    return root
