"""In-memory image datasets, the errors of the data package, and class/per-class subsets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from famkd.data.registry import DataOptions
from famkd.errors import ConfigError, FamkdError
from famkd.settings import setting

# The CIFAR-100 normalisation of the published code, in [0, 1] units: mdistiller's mdistiller/dataset/cifar100.py and
# RepDistiller's dataset/cifar100.py (docs/method.md, "Training schedule"). The community teachers were trained with
# it. It is within 2e-4 of the 50000 train images' own per-channel mean and std, not equal to them.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


class DataNotFoundError(FamkdError, FileNotFoundError):
    """No dataset where we looked and none was downloaded; the message lists the places and the fix."""


class DataFormatError(FamkdError, ValueError):
    """A dataset directory was found but its files are not what the format requires."""


@dataclass
class ImageDataset:
    """Decoded images held in memory.

    images: uint8 (N, 3, H, W), contiguous, on the CPU; labels: int64 (N,) in [0, num_classes).
    mean/std: per-channel normalisation constants in [0, 1] units.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got [{self.labels.min()}, {self.labels.max()}]"
            )
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SubsetOptions(DataOptions):
    """Options of an in-memory labelled dataset: keep only the labels < `classes` (0 = all), and the first
    `train_per_class` training images of each class (0 = all)."""

    train_per_class: int = setting(0, minimum=0)
    classes: int = setting(0, minimum=0)


def subsets(train: ImageDataset, test: ImageDataset, options: SubsetOptions) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) reduced to `options.classes` classes and `options.train_per_class` training images each."""
    if options.classes:
        train, test = keep_classes(train, options.classes), keep_classes(test, options.classes)
    if options.train_per_class:
        train = first_per_class(train, options.train_per_class)
    return train, test


def keep_classes(dataset: ImageDataset, classes: int) -> ImageDataset:
    """The images with label < `classes`, in their original order; num_classes becomes `classes`."""
    if classes > dataset.num_classes:
        raise ConfigError(f"data.classes={classes} but the dataset has only {dataset.num_classes} classes")
    keep = torch.nonzero(dataset.labels < classes).squeeze(1)
    return _subset(dataset, keep, num_classes=classes, note=f"classes 0-{classes - 1}")


def first_per_class(dataset: ImageDataset, per_class: int) -> ImageDataset:
    """The first `per_class` images of every class (all of a smaller class), in their original order."""
    labels = dataset.labels
    largest = int(torch.bincount(labels, minlength=dataset.num_classes).max()) if len(labels) else 0
    if per_class > largest:
        raise ConfigError(
            f"data.train_per_class={per_class} but the largest class has {largest} training images; "
            f"choose at most {largest}, or 0 for all"
        )
    by_class = torch.argsort(labels, stable=True)
    class_start = torch.searchsorted(labels[by_class], torch.arange(dataset.num_classes))
    rank_in_class = torch.arange(len(labels)) - class_start[labels[by_class]]
    keep = torch.sort(by_class[rank_in_class < per_class]).values
    return _subset(dataset, keep, num_classes=dataset.num_classes, note=f"first {per_class} per class")


def _subset(dataset: ImageDataset, keep: torch.Tensor, num_classes: int, note: str) -> ImageDataset:
    head, _, _ = dataset.description.rpartition(", ")
    return ImageDataset(
        images=dataset.images[keep],
        labels=dataset.labels[keep],
        num_classes=num_classes,
        mean=dataset.mean,
        std=dataset.std,
        description=f"{head}, {note}, {len(keep)} images",
        class_names=dataset.class_names[:num_classes],
    )
