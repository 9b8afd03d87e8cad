"""Datasets held in memory as uint8 tensors, and a loader that augments batches with tensor ops.

Submodules import their siblings directly, never this package, and form no cycle: datasets and
transforms import no sibling; cifar100, synthetic and loader import those; build imports
cifar100, synthetic and datasets.
"""

from famkd.data.build import build_datasets, dataset_image_size
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
    "DataFormatError",
    "DataNotFoundError",
    "ImageDataset",
    "SyntheticSpec",
    "build_datasets",
    "dataset_image_size",
    "first_per_class",
    "keep_classes",
    "synthetic_datasets",
]
