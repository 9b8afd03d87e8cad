"""Datasets and their loaders, one registered entry per dataset (famkd.data.registry): CIFAR-100 and the
synthetic set held in memory as uint8 tensors and augmented batched with tensor ops; ImageNet folders and any
other image folders (`imagefolder`: your own classes and images) decoded per batch by DataLoader workers.
Importing the package registers these four.

Submodules import their siblings directly, never this package, and form no cycle: sampling, transforms and
registry import no sibling; datasets imports registry; loader imports datasets, sampling and transforms;
folders imports datasets and sampling; cifar100, synthetic, imagenet and imagefolder import those (the last
two: folders too) and register themselves.
"""

from famkd.data import cifar100, imagefolder, imagenet, synthetic  # noqa: F401  (register the datasets)
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
from famkd.data.registry import (
    DataOptions,
    DatasetEntry,
    Loader,
    build_datasets,
    build_loader,
    data_options,
    dataset_image_size,
    register_dataset,
)
from famkd.data.sampling import LoaderSettings
from famkd.data.synthetic import SyntheticSpec, synthetic_datasets

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchLoader",
    "DataFormatError",
    "DataNotFoundError",
    "DataOptions",
    "DatasetEntry",
    "ImageDataset",
    "Loader",
    "LoaderSettings",
    "SyntheticSpec",
    "build_datasets",
    "build_loader",
    "data_options",
    "dataset_image_size",
    "first_per_class",
    "keep_classes",
    "register_dataset",
    "synthetic_datasets",
]
