"""`build_datasets` and `build_loader`: from a `DataConfig` to the (train, test) datasets and their loaders."""

from __future__ import annotations

from typing import Any

from famkd.config import DataConfig
from famkd.data.cifar100 import IMAGE_SIZE as CIFAR100_IMAGE_SIZE
from famkd.data.cifar100 import load_cifar100
from famkd.data.datasets import ImageDataset, first_per_class, keep_classes
from famkd.data.imagenet import ImageFolderSplit, ImageNetLoader, load_imagenet
from famkd.data.loader import BatchLoader
from famkd.data.synthetic import IMAGE_SIZE as SYNTHETIC_IMAGE_SIZE
from famkd.data.synthetic import synthetic_datasets_from_config
from famkd.errors import ConfigError

IMAGE_SIZES = {"cifar100": CIFAR100_IMAGE_SIZE, "synthetic": SYNTHETIC_IMAGE_SIZE}  # side of each dataset's images
Dataset = ImageDataset | ImageFolderSplit  # in memory, or image files decoded per batch
Loader = BatchLoader | ImageNetLoader


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, test) for `cfg`: CIFAR-100 (pickle or .npy layout) or the synthetic demo set, then subsets,
    or ImageNet folders (train and val).

    CIFAR-100 is downloaded only when cfg.download is set; see `load_cifar100`.
    """
    _check_known(cfg.dataset)
    if cfg.dataset == "imagenet":
        return _imagenet(cfg)
    if cfg.dataset == "synthetic":
        return synthetic_datasets_from_config(cfg)
    train, test = load_cifar100(cfg.root, download=cfg.download)
    if cfg.classes:
        train, test = keep_classes(train, cfg.classes), keep_classes(test, cfg.classes)
    if cfg.train_per_class:
        train = first_per_class(train, cfg.train_per_class)
    return train, test


def build_loader(dataset: Dataset, cfg: DataConfig, batch_size: int, *, train: bool, **options: Any) -> Loader:
    """The loader of `dataset` with `batch_size` images per batch on this process. `options` are the keyword
    arguments both loaders take: seed, device, max_steps, channels_last, with_indices, and num_replicas /
    rank for one of several processes (see BatchLoader)."""
    if isinstance(dataset, ImageFolderSplit):
        return ImageNetLoader(dataset, batch_size, train=train, workers=cfg.workers, **options)
    return BatchLoader(dataset, batch_size, train=train, **options)


def dataset_image_size(cfg: DataConfig) -> int:
    """The side of the square images `build_datasets(cfg)` gives, known without loading them."""
    _check_known(cfg.dataset)
    return cfg.crop_size if cfg.dataset == "imagenet" else IMAGE_SIZES[cfg.dataset]


def _imagenet(cfg: DataConfig) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    if not cfg.root:
        raise ConfigError("data.dataset=imagenet needs data.root=<folder holding train/ and val/>")
    if cfg.classes or cfg.train_per_class:
        raise ConfigError("data.classes and data.train_per_class select CIFAR subsets; leave them 0 for imagenet")
    return load_imagenet(cfg.root, cfg.crop_size, cfg.resize_size)


def _check_known(dataset: str) -> None:
    known = [*IMAGE_SIZES, "imagenet"]
    if dataset not in known:
        raise ConfigError(f"unknown dataset {dataset!r}: choose {', '.join(known)}")
