"""Any dataset of images sorted into class folders (`data.dataset=imagefolder data.root=DIR`), decoded per batch
by DataLoader workers like ImageNet (famkd.data.folders).

Layouts under DIR:

    DIR/train/<class>/<image>   the training images, one folder per class; the classes are the sorted
    DIR/val/<class>/<image>     folder names of train/ and a label is a position in that list; every val
                                folder must be a class of train/ (a train class may have no val folder)

    DIR/train/<class>/<image>   or, with no val/ and data.val_fraction in (0, 1), the validation images
    DIR/<class>/<image>         are taken out of the training folders: where DIR has no train/ folder,
                                the folders of DIR itself are the classes

The val_fraction split is the same on every run, whatever the seed: of the n sorted files of a class,
v = round(n * val_fraction), at least 1 and at most n - 1 (each class keeps a training image), go to
validation, those at positions i * n // v for i < v (evenly spread). A class of one image stays in training.

Images: the files ending in .JPEG, .jpg, .jpeg or .png (any case) directly inside their class folder, of any
size. Training augmentation (`augment`): "imagenet", RandomResizedCrop(image_size) and a horizontal flip; or
"cifar", the shorter side resized to image_size and a centre crop of image_size, then RandomCrop(image_size,
padding=image_size // 8) and a horizontal flip. Evaluation: the shorter side resized to resize_size, then a
centre crop of image_size. Both then normalise with the ImageNet mean and std (the splits' `mean`, `std`).

Errors, raised before any image is decoded: `DataNotFoundError` for a missing DIR (naming the layouts) or a
missing val/ without val_fraction, `DataFormatError` for no class folders, an empty class folder and val
classes not in train/, `ConfigError` for a val/ folder together with val_fraction. An unreadable image is
replaced by the next readable one and counted per epoch, as for ImageNet (famkd.data.folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchvision import transforms

from famkd.data.datasets import DataNotFoundError
from famkd.data.folders import (
    CROP_SIZE,
    RESIZE_SIZE,
    ImageFolderSplit,
    check_known_classes,
    class_folders,
    eval_transform,
    folder_loader,
    folder_samples,
    subfolders,
    to_normalized_tensor,
    train_transform,
)
from famkd.data.registry import DataOptions, DatasetEntry, register_dataset
from famkd.errors import ConfigError
from famkd.settings import setting

Samples = list[tuple[str, int]]
LAYOUT = (
    "expected DIR/train/<class>/<images> and DIR/val/<class>/<images>, or DIR/train/<class>/ or DIR/<class>/ "
    "alone with data.val_fraction (images: .jpg, .jpeg, .png)"
)


@dataclass
class ImageFolderOptions(DataOptions):
    """Image folders under data.root (required; layouts in famkd.data.imagefolder): the side of the square network
    input, the side evaluation resizes the shorter side to before its centre crop (0: image_size * 256 / 224
    rounded for imagenet augmentation, image_size for cifar; the effective value is stored), the training
    augmentation, the share of each class's training images held out for validation where there is no val/ folder
    (0: use DIR/val/), and the DataLoader processes per training process."""

    image_size: int = setting(CROP_SIZE, minimum=1)
    resize_size: int = setting(0, minimum=0)
    augment: str = setting("imagenet", choices=("imagenet", "cifar"))
    val_fraction: float = setting(0.0, minimum=0.0)
    workers: int = setting(4, minimum=0)

    def __post_init__(self) -> None:
        if self.val_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction={self.val_fraction} must be below 1: it is the share of each class's images "
                "held out for validation, e.g. 0.1"
            )
        if not self.resize_size:
            self.resize_size = default_resize_size(self.image_size, self.augment)
        if self.image_size > self.resize_size:
            raise ConfigError(
                f"data.image_size={self.image_size} exceeds data.resize_size={self.resize_size}: evaluation resizes "
                "to resize_size, then crops image_size from it; raise data.resize_size, or set it to 0 for the "
                "default"
            )


def default_resize_size(image_size: int, augment: str) -> int:
    """The evaluation resize that goes with `image_size`: ImageNet's 256/224 ratio, or none for cifar augmentation."""
    return round(image_size * RESIZE_SIZE / CROP_SIZE) if augment == "imagenet" else image_size


def cifar_train_transform(image_size: int) -> transforms.Compose:
    """Resize(image_size), CenterCrop(image_size), RandomCrop(image_size, padding=image_size // 8),
    RandomHorizontalFlip, ToTensor, Normalize(ImageNet mean, std)."""
    return transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.RandomCrop(image_size, padding=image_size // 8),
            transforms.RandomHorizontalFlip(),
            *to_normalized_tensor(),
        ]
    )


def load_image_folders(options: ImageFolderOptions) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    """(train, val) splits of the folders at options.root, with their transforms."""
    if not options.root:
        raise ConfigError("data.dataset=imagefolder needs data.root=<folder holding train/ and val/>")
    root = Path(options.root).expanduser()
    classes, train_samples, val_samples = read_samples(root, options.val_fraction)
    augment = cifar_train_transform if options.augment == "cifar" else train_transform
    splits = []
    for split, samples, transform in (
        ("train", train_samples, augment(options.image_size)),
        ("val", val_samples, eval_transform(options.image_size, options.resize_size)),
    ):
        description = f"image folders at {root}, {split}, {len(samples)} images of {len(classes)} classes"
        splits.append(ImageFolderSplit(samples, classes, transform, options.image_size, description))
    return splits[0], splits[1]


def read_samples(root: Path, val_fraction: float) -> tuple[tuple[str, ...], Samples, Samples]:
    """(classes, train samples, val samples) of the folders at `root`, listed without opening an image."""
    if not root.is_dir():
        raise DataNotFoundError(f"image folder root {root} does not exist or is not a folder; {LAYOUT}")
    has_val = (root / "val").is_dir()
    if has_val and val_fraction:
        raise ConfigError(
            f"{root} has a val/ folder and data.val_fraction={val_fraction} is set: pick one, "
            "data.val_fraction=0 to validate on val/, or move val/ away to hold out a share of train/"
        )
    if not has_val and not val_fraction:
        raise DataNotFoundError(
            f"{root} has no val/ folder: add {root / 'val'}/<class>/ with validation images, "
            "or set data.val_fraction (e.g. 0.1) to hold out a share of each class's training images"
        )
    train_dir = root / "train" if has_val or (root / "train").is_dir() else root
    if not train_dir.is_dir():
        raise DataNotFoundError(f"{root} has no train/ folder; {LAYOUT}")
    classes = class_folders(train_dir, LAYOUT)
    samples = folder_samples(train_dir, classes, classes)
    if not has_val:
        return classes, *held_out(samples, val_fraction)
    val_folders = subfolders(root / "val")
    check_known_classes(root / "val", val_folders, classes)
    return classes, samples, folder_samples(root / "val", val_folders, classes)


def held_out(samples: Samples, val_fraction: float) -> tuple[Samples, Samples]:
    """(train, val): `samples` (sorted files, grouped by class) with each class's share `val_fraction` moved to val
    at the positions `held_out_positions` gives."""
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    train: Samples = []
    val: Samples = []
    for label, paths in by_class.items():
        chosen = held_out_positions(len(paths), val_fraction)
        for position, path in enumerate(paths):
            (val if position in chosen else train).append((path, label))
    return train, val


def held_out_positions(count: int, val_fraction: float) -> set[int]:
    """The positions of a class's `count` sorted files that go to val: round(count * val_fraction) of them, at least
    one and at most count - 1, spread evenly (i * count // held for each i below that number held)."""
    held = min(max(round(count * val_fraction), 1), count - 1)
    return {i * count // held for i in range(held)}


register_dataset("imagefolder")(
    DatasetEntry(ImageFolderOptions, load_image_folders, lambda options: options.image_size, folder_loader)
)
