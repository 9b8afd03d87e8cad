"""Datasets held in memory as uint8 tensors, and a loader that augments batches with tensor ops."""

from famkd.data.datasets import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DataFormatError,
    DataNotFoundError,
    ImageDataset,
    build_datasets,
    first_per_class,
    keep_classes,
)
from famkd.data.loader import BatchLoader
from famkd.data.synthetic import SyntheticSpec, synthetic_datasets

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchLoader",
    "DataFormatError",
    "DataNotFoundError",
    "ImageDataset",
    "SyntheticSpec",
    "build_datasets",
    "first_per_class",
    "keep_classes",
    "synthetic_datasets",
]
