"""A tiny COCO 2017 copy of real JPEG files and instances JSON, for tests of famkd.detection.

`write_tiny_coco(root)` writes

    root/train2017/<12-digit image id>.jpg        the images of TRAIN, then VAL: coloured rectangles (one
    root/val2017/<12-digit image id>.jpg          per annotation, in its category's colour) on noise
    root/annotations/instances_train2017.json     images, annotations (bbox [x, y, w, h], area = w * h,
    root/annotations/instances_val2017.json       iscrowd, category_id, a box polygon) and CATEGORIES

The category ids 1, 3, 7 are not contiguous and listed out of order, to exercise the label mapping
(labels 1, 2, 3). Image 13 holds only a crowd region and a degenerate box and image 14 nothing: the
train split leaves both out. Image 15 has a box crossing the right edge, a box 0.5 pixel high and a
crowd region. The val images hold no degenerate box, so their targets plus the crowd regions are the
whole ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CATEGORIES = ({"id": 7, "name": "blue box"}, {"id": 1, "name": "red box"}, {"id": 3, "name": "green box"})
COLOURS = {1: (220, 30, 30), 3: (30, 200, 30), 7: (30, 30, 220)}
WIDE, TALL = (64, 48), (48, 64)  # (width, height)

# image id -> ((width, height), [(category id, [x, y, w, h], iscrowd), ...])
TRAIN: dict[int, tuple[tuple[int, int], list[tuple[int, list[float], int]]]] = {
    11: (WIDE, [(1, [4, 6, 20, 10], 0), (7, [30, 20, 25, 22], 0)]),
    12: (TALL, [(3, [5, 5, 30, 40], 0)]),
    13: (WIDE, [(1, [10, 10, 12, 12], 1), (3, [40, 8, 1, 20], 0)]),
    14: (TALL, []),
    15: (WIDE, [(7, [50, 30, 20, 15], 0), (3, [4, 4, 16, 0.5], 0), (1, [20, 20, 15, 15], 1)]),
    16: (TALL, [(1, [8, 12, 24, 30], 0), (1, [20, 40, 10, 12], 0)]),
}
VAL: dict[int, tuple[tuple[int, int], list[tuple[int, list[float], int]]]] = {
    21: (WIDE, [(1, [6, 8, 20, 14], 0), (3, [36, 18, 22, 24], 0)]),
    22: (TALL, [(7, [10, 10, 28, 36], 0)]),
    23: (WIDE, [(3, [8, 6, 30, 30], 0), (7, [40, 10, 18, 18], 1)]),
    24: (TALL, []),
}


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def instances(images: dict, first_annotation_id: int = 1) -> dict[str, Any]:
    """The instances JSON content of `images` (shaped like TRAIN)."""
    annotations = []
    for image_id, (_, boxes) in images.items():
        for category_id, (x, y, w, h), iscrowd in boxes:
            annotations.append(
                {
                    "id": first_annotation_id + len(annotations),
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": iscrowd,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    return {
        "info": {"description": "famkd tiny COCO"},
        "images": [
            {"id": image_id, "file_name": file_name(image_id), "width": width, "height": height}
            for image_id, ((width, height), _) in images.items()
        ],
        "annotations": annotations,
        "categories": [dict(category, supercategory="box") for category in CATEGORIES],
    }


def write_image(path: Path, size: tuple[int, int], boxes: list, rng: np.random.Generator) -> None:
    """A JPEG of `size` (width, height): noise with each box filled in its category's colour."""
    width, height = size
    pixels = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    for category_id, (x, y, w, h), _ in boxes:
        pixels[int(y) : int(y + h), int(x) : int(x + w)] = COLOURS[category_id]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def write_tiny_coco(root: Path, seed: int = 0) -> Path:
    """Write the tree described in the module docstring under `root` and return `root`."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, images, first_annotation_id in (("train", TRAIN, 1), ("val", VAL, 1001)):
        for image_id, (size, boxes) in images.items():
            write_image(root / f"{split}2017" / file_name(image_id), size, boxes, rng)
        content = instances(images, first_annotation_id)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
    return root
