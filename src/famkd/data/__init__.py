"""Datasets and their loaders: CIFAR-100 and the synthetic set held in memory as uint8 tensors and
augmented batched with tensor ops; ImageNet folders decoded per batch by DataLoader workers.

Submodules import their siblings directly, never this package, and form no cycle: datasets and
transforms import no sibling; cifar100, synthetic, imagenet and loader import those; build imports
cifar100, synthetic, imagenet, loader and datasets.
"""

from famkd.data.build import Dataset, Loader, build_datasets, build_loader, dataset_image_size
from famkd.data.datasets import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DataFormatError,
    DataNotFoundError,
    ImageDataset,
    first_per_class,
    keep_classes,
)
from famkd.data.loader import BatchLoader
from famkd.data.synthetic import SyntheticSpec, synthetic_datasets

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchLoader",
    "Dataset",
    "Loader",
    "DataFormatError",
    "DataNotFoundError",
    "ImageDataset",
    "SyntheticSpec",
    "build_datasets",
    "build_loader",
    "dataset_image_size",
    "first_per_class",
    "keep_classes",
    "synthetic_datasets",
]
