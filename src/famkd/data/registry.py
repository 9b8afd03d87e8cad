"""The dataset registry: each dataset is one registered `DatasetEntry`, with its own options.

    @register_dataset("name")  # on a DatasetEntry (see famkd.data.cifar100 for one)

A config's `data:` section is the options class of the dataset `data.dataset` names: `DataOptions`
(`dataset`, `root`) and the fields the dataset declares, each with its default and rules (famkd.settings).
Adding a dataset is one module that registers its entry; nothing else lists the datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from famkd.data.sampling import LoaderSettings
from famkd.errors import ConfigError
from famkd.registry import Registry, closest
from famkd.settings import setting, settings_from_dict


class Loader(Protocol):
    """What the engine needs of a loader: batches of an epoch from its `start`-th on, and their count."""

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass
class DataOptions:
    """What every dataset's options hold: which dataset (a registered name) and where its files lie
    ("" -> the dataset's own default, e.g. $FAMKD_DATA then ./data for CIFAR-100)."""

    dataset: str = "cifar100"
    root: str = setting("", path=True)

    @classmethod
    def variant_for(cls, values: dict) -> type[DataOptions]:
        """The options class of the dataset `values["dataset"]` names (famkd.settings.section_class)."""
        return dataset_entry(values.get("dataset", cls.dataset)).options


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: its `options` class, `load(options) -> (train, test)`, the side of its square images
    (`image_size(options)`, None where sizes vary) and `loader(dataset, options, batch_size, train, settings)`."""

    options: type[DataOptions]
    load: Callable[[Any], tuple[Any, Any]]
    image_size: Callable[[Any], int | None]
    loader: Callable[[Any, Any, int, bool, LoaderSettings], Loader]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetEntry], DatasetEntry]:
    """Register a DatasetEntry under `name` (the value of data.dataset)."""
    return DATASETS.register(name)


def dataset_entry(name: Any) -> DatasetEntry:
    """The entry of dataset `name`, or a ConfigError naming the registered ones."""
    if not isinstance(name, str) or name not in DATASETS:
        known = DATASETS.names(sort=False)
        near = closest(str(name), known)
        hint = f" (did you mean {near!r}?)" if near else ""
        raise ConfigError(f"data.dataset={name!r} is not allowed{hint}; choose one of: {', '.join(known)}")
    return DATASETS.get(name)


def data_options(dataset: str = "cifar100", **values: Any) -> DataOptions:
    """The options of `dataset` with `values` set (checked as the config checks them)."""
    return settings_from_dict(dataset_entry(dataset).options, {"dataset": dataset, **values})


def build_datasets(options: DataOptions) -> tuple[Any, Any]:
    """(train, test) of the dataset `options` describe."""
    return dataset_entry(options.dataset).load(options)


def dataset_image_size(options: DataOptions) -> int | None:
    """The side of the square images the dataset gives (None: sizes vary), known without loading them."""
    return dataset_entry(options.dataset).image_size(options)


def build_loader(dataset: Any, options: DataOptions, batch_size: int, train: bool, settings: LoaderSettings) -> Loader:
    """The loader of `dataset` with `batch_size` images per batch on this process."""
    return dataset_entry(options.dataset).loader(dataset, options, batch_size, train, settings)
