"""ImageNet-style image folders, decoded from disk per batch by DataLoader workers.

Accepted layouts under ROOT (the `root` argument):

    ROOT/train/<class>/<image>   one folder per class, named by its wnid (e.g. n01440764); the classes
                                 are the sorted folder names and a label is a position in that list,
                                 as torchvision's ImageFolder numbers them
    ROOT/val/<class>/<image>     the validation images in the same folder layout; every folder must be
                                 a class of train/ (a train class may have no val folder)
    ROOT/val/<image>             or the flat layout the ILSVRC2012 val archive unpacks to, labelled by
                                 Kaggle's LOC_val_solution.csv, in ROOT/val/ or ROOT/ (first found)

Class names: the wnids, or where ROOT holds Kaggle's LOC_synset_mapping.txt (`<wnid> <name>, <synonym>, ...`
per line) each wnid's first name, e.g. `tench` for n01440764.

LOC_val_solution.csv has the header `ImageId,PredictionString` and one row per image: ImageId is the
file name without its extension, the first word of PredictionString the image's wnid (the rest are
boxes), e.g. `ILSVRC2012_val_00008726,n02119789 255 142 454 329`. Images are the files ending in
.JPEG, .jpg, .jpeg or .png (any case) directly inside their folder.

Errors: `DataNotFoundError` when ROOT, ROOT/train or ROOT/val is missing (naming the layout),
`DataFormatError` for a train/ without class folders, an empty class folder (named), val classes
that are not train classes, a flat val/ without its label file or with unlabelled images.

Unreadable images are replaced by the next readable one and counted (famkd.data.folders, which holds
what this module shares with famkd.data.imagefolder).

Transforms are torchvision's: training `RandomResizedCrop(crop_size)` and `RandomHorizontalFlip()`,
evaluation `Resize(resize_size)` and `CenterCrop(crop_size)` (224 and 256 by default), then
`ToTensor()` and `Normalize` with the ImageNet mean and std.

`ImageNetLoader` (famkd.data.folders.ImageFolderLoader) wraps a torch DataLoader over a split and yields
`(images, labels)` on a device like famkd's `BatchLoader` (see its docstring for the sampler, workers and
distributed runs).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from famkd.data.datasets import DataFormatError, DataNotFoundError
from famkd.data.folders import (
    CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_SIZE,
    ImageFolderLoader,
    ImageFolderSplit,
    check_known_classes,
    class_folders,
    eval_transform,
    folder_loader,
    folder_samples,
    image_files,
    subfolders,
    train_transform,
)
from famkd.data.registry import DataOptions, DatasetEntry, register_dataset
from famkd.errors import ConfigError, shown
from famkd.settings import setting

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderSplit",
    "ImageNetLoader",
    "ImageNetOptions",
    "class_names",
    "eval_transform",
    "load_imagenet",
    "read_val_labels",
    "train_transform",
]

ImageNetLoader = ImageFolderLoader  # the loader of every folder dataset, under the name this module has exported
VAL_LABEL_FILE = "LOC_val_solution.csv"
NAMES_FILE = "LOC_synset_mapping.txt"
VAL_LABEL_COLUMNS = ("ImageId", "PredictionString")
LAYOUT = (
    "expected ROOT/train/<class>/*.JPEG (one folder per class) and ROOT/val/<class>/*.JPEG, "
    f"or ROOT/val/*.JPEG labelled by {VAL_LABEL_FILE}"
)


def load_imagenet(
    root: str | os.PathLike, crop_size: int = CROP_SIZE, resize_size: int = RESIZE_SIZE
) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    """(train, val) splits of the folders at `root` (layouts: the module docstring), with their transforms."""
    root = Path(root).expanduser()
    train_dir, val_dir = _split_dirs(root)
    classes = class_folders(train_dir, LAYOUT)
    train_samples = folder_samples(train_dir, classes, classes)
    val_samples = _val_samples(root, val_dir, classes)
    splits = []
    for split, samples, transform in (
        ("train", train_samples, train_transform(crop_size)),
        ("val", val_samples, eval_transform(crop_size, resize_size)),
    ):
        description = f"ImageNet folders at {root}, {split}, {len(samples)} images of {len(classes)} classes"
        splits.append(ImageFolderSplit(samples, classes, transform, crop_size, description, class_names(root, classes)))
    return splits[0], splits[1]


def class_names(root: Path, wnids: tuple[str, ...]) -> tuple[str, ...]:
    """Each wnid's first name from ROOT/LOC_synset_mapping.txt, or the wnids where there is no such file."""
    path = root / NAMES_FILE
    if not path.is_file():
        return wnids
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, words = line.strip().partition(" ")
        names[wnid] = words.split(",")[0].strip() or wnid
    return tuple(names.get(wnid, wnid) for wnid in wnids)


def _split_dirs(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DataNotFoundError(f"ImageNet root {root} does not exist or is not a folder; {LAYOUT}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataNotFoundError(f"{root} has no {split}/ folder; {LAYOUT}")
    return root / "train", root / "val"


def _val_samples(root: Path, val_dir: Path, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """The val split's samples, from the folder layout or from the flat one with its label file."""
    flat_images = image_files(val_dir)
    folders = subfolders(val_dir)
    if flat_images and folders:
        raise DataFormatError(f"{val_dir} holds both images and class folders; use one layout: {LAYOUT}")
    if folders:
        check_known_classes(val_dir, folders, classes)
        return folder_samples(val_dir, folders, classes)
    if not flat_images:
        raise DataFormatError(f"{val_dir} holds no images and no class folders; {LAYOUT}")
    return _flat_samples(root, val_dir, flat_images, classes)


def _flat_samples(root: Path, val_dir: Path, images: list[str], classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, label) of the flat val images, labelled by their wnids in the label file."""
    label_file = next((path for path in (val_dir / VAL_LABEL_FILE, root / VAL_LABEL_FILE) if path.is_file()), None)
    if label_file is None:
        raise DataFormatError(
            f"{val_dir} holds images directly (the flat layout) but neither it nor {root} holds {VAL_LABEL_FILE} "
            "to label them; add that file or sort the images into class folders"
        )
    wnid_of = read_val_labels(label_file)
    unlabelled = [path for path in images if Path(path).stem not in wnid_of]
    if unlabelled:
        raise DataFormatError(f"{label_file} has no row for {len(unlabelled)} val images: {shown(unlabelled)}")
    wnids = [wnid_of[Path(path).stem] for path in images]
    check_known_classes(label_file, wnids, classes)
    label_of = {name: label for label, name in enumerate(classes)}
    return [(path, label_of[wnid]) for path, wnid in zip(images, wnids)]


def read_val_labels(path: Path) -> dict[str, str]:
    """Image id (file name without extension) -> wnid, from a LOC_val_solution.csv file."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or not set(VAL_LABEL_COLUMNS) <= set(reader.fieldnames):
            raise DataFormatError(f"{path}: expected the header {','.join(VAL_LABEL_COLUMNS)}")
        rows = list(reader)
    wnid_of = {}
    for line, row in enumerate(rows, start=2):
        words = (row[VAL_LABEL_COLUMNS[1]] or "").split()
        if not row[VAL_LABEL_COLUMNS[0]] or not words:
            raise DataFormatError(f"{path}, line {line}: expected `<image id>,<wnid> ...`, got {row}")
        wnid_of[row[VAL_LABEL_COLUMNS[0]]] = words[0]
    return wnid_of


@dataclass
class ImageNetOptions(DataOptions):
    """ImageNet folders under data.root (required): `workers` DataLoader processes per training process, the
    side of the training and evaluation crop, and the side evaluation images are resized to before cropping."""

    workers: int = setting(8, minimum=0)
    crop_size: int = setting(CROP_SIZE, minimum=1)
    resize_size: int = setting(RESIZE_SIZE, minimum=1)

    def __post_init__(self) -> None:
        if self.crop_size > self.resize_size:
            raise ConfigError(
                f"data.crop_size={self.crop_size} exceeds data.resize_size={self.resize_size}: evaluation resizes to "
                "resize_size, then crops crop_size from it; raise data.resize_size (the standard ratio is 256/224)"
            )


def load_imagenet_options(options: ImageNetOptions) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    if not options.root:
        raise ConfigError("data.dataset=imagenet needs data.root=<folder holding train/ and val/>")
    return load_imagenet(options.root, options.crop_size, options.resize_size)


register_dataset("imagenet")(
    DatasetEntry(ImageNetOptions, load_imagenet_options, lambda options: options.crop_size, folder_loader)
)
