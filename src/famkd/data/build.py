"""`build_datasets`, the one entry point from a `DataConfig` to the (train, test) datasets."""

from __future__ import annotations

from famkd.config import DataConfig
from famkd.data.cifar100 import IMAGE_SIZE as CIFAR100_IMAGE_SIZE
from famkd.data.cifar100 import load_cifar100
from famkd.data.datasets import ImageDataset, first_per_class, keep_classes
from famkd.data.synthetic import IMAGE_SIZE as SYNTHETIC_IMAGE_SIZE
from famkd.data.synthetic import synthetic_datasets_from_config
from famkd.errors import ConfigError

IMAGE_SIZES = {"cifar100": CIFAR100_IMAGE_SIZE, "synthetic": SYNTHETIC_IMAGE_SIZE}  # side of each dataset's images


def build_datasets(cfg: DataConfig) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) for `cfg`: CIFAR-100 (pickle or .npy layout) or the synthetic demo set, then subsets.

    CIFAR-100 is downloaded only when cfg.download is set; see `load_cifar100`.
    """
    _check_known(cfg.dataset)
    if cfg.dataset == "synthetic":
        return synthetic_datasets_from_config(cfg)
    train, test = load_cifar100(cfg.root, download=cfg.download)
    if cfg.classes:
        train, test = keep_classes(train, cfg.classes), keep_classes(test, cfg.classes)
    if cfg.train_per_class:
        train = first_per_class(train, cfg.train_per_class)
    return train, test


def dataset_image_size(cfg: DataConfig) -> int:
    """The side of the square images `build_datasets(cfg)` gives, known without loading them."""
    _check_known(cfg.dataset)
    return IMAGE_SIZES[cfg.dataset]


def _check_known(dataset: str) -> None:
    if dataset not in IMAGE_SIZES:
        raise ConfigError(f"unknown dataset {dataset!r}: choose {' or '.join(IMAGE_SIZES)}")
