"""What the image-folder datasets (famkd.data.imagenet, famkd.data.imagefolder) share: reading class folders,
the split that decodes its images when indexed, the transforms and the DataLoader-backed loader.

A class folder holds its images directly: the files ending in .JPEG, .jpg, .jpeg or .png (any case),
sorted by path. Classes are the sorted names of the class folders and a label is a position in that
list, as torchvision's ImageFolder numbers them.

Unreadable images: building a split lists the files without opening them (opening ImageNet's 1.28M
training images at start-up would take long). An image that cannot be decoded (PIL raises OSError:
a truncated file, a file that is not an image) is replaced by the next readable image of the split,
with that image's own label and index, so batches keep their size; `ImageFolderLoader` counts the
replaced files and, at the end of each epoch that had any, warns once with the count and the first
few names. `MAX_UNREADABLE_IN_A_ROW` unreadable files in a row raise `DataFormatError`.

Transforms are torchvision's: training `RandomResizedCrop(crop_size)` and `RandomHorizontalFlip()`,
evaluation `Resize(resize_size)` of the shorter side and `CenterCrop(crop_size)` (224 and 256 by default),
then `ToTensor()` and `Normalize` with the ImageNet mean and std.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler
from torchvision import transforms
from torchvision.datasets.folder import default_loader

from famkd.data.datasets import DataFormatError
from famkd.data.sampling import LoaderSettings, SkipFirst, check_loader_settings, replica_and_rank, worker_data_loader
from famkd.errors import shown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SIZE, RESIZE_SIZE = 224, 256  # the standard ImageNet input side and evaluation resize
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MAX_UNREADABLE_IN_A_ROW = 10


class Sample(NamedTuple):
    """One decoded image; `position` is the index of the sample read, `skipped` the unreadable files tried first."""

    image: Tensor
    label: int
    position: int
    skipped: tuple[str, ...]


class ImageFolderSplit(Dataset[Sample]):
    """One split: (path, label) samples, decoded and transformed when indexed.

    classes: the class folder names, label i being classes[i]; names: their names (the folder names if none).
    image_size: the side of the square images `transform` gives.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes: tuple[str, ...],
        transform: Callable[..., Tensor],
        image_size: int,
        description: str,
        names: tuple[str, ...] = (),
    ):
        self.samples = samples
        self.classes = classes
        self.names = names or classes
        self.transform = transform
        self.image_size = image_size
        self.description = description

    mean, std = IMAGENET_MEAN, IMAGENET_STD  # the normalisation the transforms apply, of pixel / 255

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes' names, else their folder names."""
        return self.names

    @property
    def labels(self) -> Tensor:
        """Every sample's label, int64 (N,)."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        """The sample at `index`, or the first readable one after it (wrapping round)."""
        skipped: list[str] = []
        for offset in range(MAX_UNREADABLE_IN_A_ROW):
            current = (index + offset) % len(self.samples)
            path, label = self.samples[current]
            try:
                image = default_loader(path)
            except OSError:
                skipped.append(path)
                continue
            return Sample(self.transform(image), label, current, tuple(skipped))
        raise DataFormatError(
            f"{len(skipped)} image files in a row cannot be decoded, from {skipped[0]}: {shown(skipped)}; "
            "the copy of the dataset looks corrupt"
        )


# ---- transforms ---------------------------------------------------------------------------------


def train_transform(crop_size: int = CROP_SIZE) -> transforms.Compose:
    """RandomResizedCrop(crop_size), RandomHorizontalFlip, ToTensor, Normalize(ImageNet mean, std)."""
    return transforms.Compose(
        [transforms.RandomResizedCrop(crop_size), transforms.RandomHorizontalFlip(), *to_normalized_tensor()]
    )


def eval_transform(crop_size: int = CROP_SIZE, resize_size: int = RESIZE_SIZE) -> transforms.Compose:
    """Resize(resize_size) of the shorter side, CenterCrop(crop_size), ToTensor, Normalize(ImageNet mean, std)."""
    return transforms.Compose(
        [transforms.Resize(resize_size), transforms.CenterCrop(crop_size), *to_normalized_tensor()]
    )


def to_normalized_tensor() -> list[Callable]:
    """ToTensor, then Normalize with the ImageNet mean and std."""
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


# ---- reading folders ----------------------------------------------------------------------------


def subfolders(directory: Path) -> tuple[str, ...]:
    """The sorted names of the folders in `directory`."""
    return tuple(sorted(entry.name for entry in os.scandir(directory) if entry.is_dir()))


def class_folders(directory: Path, layout: str) -> tuple[str, ...]:
    """The sorted names of the folders in `directory`, or DataFormatError (ending with `layout`) if there are none."""
    classes = subfolders(directory)
    if not classes:
        raise DataFormatError(f"{directory} holds no class folders; {layout}")
    return classes


def image_files(directory: Path) -> list[str]:
    """The sorted paths of the image files directly in `directory`."""
    return sorted(
        entry.path
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def folder_samples(directory: Path, folders: tuple[str, ...], classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, label) of every image in `directory`/<folder>, folders in order, labels their positions in `classes`;
    DataFormatError naming the folders without an image."""
    label_of = {name: label for label, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    empty = []
    for folder in folders:
        files = image_files(directory / folder)
        if not files:
            empty.append(folder)
        samples.extend((path, label_of[folder]) for path in files)
    if empty:
        raise DataFormatError(
            f"{directory}: empty class folder(s) {shown(empty)}: no {', '.join(IMAGE_EXTENSIONS)} image in them; "
            "add their images or remove the folders"
        )
    return samples


def check_known_classes(directory: Path, found: tuple[str, ...] | list[str], classes: tuple[str, ...]) -> None:
    """DataFormatError naming the classes of `found` (read from `directory`) that are not train classes."""
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataFormatError(
            f"{directory}: val classes not in train/: {shown(unknown)}; every val class must have a "
            "folder in train/ (labels are positions among train/'s sorted class folders)"
        )


# ---- loading --------------------------------------------------------------------------------------


def collate_samples(samples: list[Sample]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Stacked images, int64 labels and indices, and the unreadable files the samples replaced."""
    return (
        torch.stack([sample.image for sample in samples]),
        torch.tensor([sample.label for sample in samples], dtype=torch.int64),
        torch.tensor([sample.position for sample in samples], dtype=torch.int64),
        [path for sample in samples for path in sample.skipped],
    )


class ImageFolderLoader:
    """Yields (float32 normalised images (B, 3, S, S), int64 labels (B,)) on `device`, like `BatchLoader`.

    A torch DataLoader over `dataset` decodes and transforms the images in `workers` processes
    (persistent across epochs when workers > 0), into pinned memory when `device` is CUDA; the
    batches move to `device` without blocking. A DistributedSampler always picks this process's
    share: `num_replicas` and `rank` when given, else torch.distributed's when initialised, else
    the whole split (one replica). train=True shuffles in an order set by (seed, epoch) alone, the
    same on every process (`set_epoch`), and drops the last partial batch by default; train=False
    keeps the split's order and every batch. With several replicas the sampler pads the split with
    repeated samples to a multiple of num_replicas: an evaluation pass then counts up to
    num_replicas - 1 samples twice.
    max_steps > 0 stops an epoch after that many batches. With `with_indices`, each batch also
    carries the images' positions in the split, int64 (B,): (images, labels, indices).

    Unreadable image files are replaced (see the module docstring); `skipped` lists those of the
    last epoch and a warning names them at its end.
    """

    def __init__(
        self,
        dataset: ImageFolderSplit,
        batch_size: int,
        *,
        train: bool,
        workers: int = 8,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool | None = None,
        max_steps: int = 0,
        channels_last: bool = False,
        with_indices: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        check_loader_settings(batch_size, max_steps)
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.max_steps = max_steps
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.with_indices = with_indices
        self.epoch = 0
        self.skipped: list[str] = []
        num_replicas, rank = replica_and_rank(num_replicas, rank)
        # Training: each process a shuffled share (padded to equal shares); evaluation: every rank-th
        # image, no padding, so that the processes together see each image once.
        self.sampler: DistributedSampler[Sample] | range = (
            DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
            if train
            else range(rank, len(dataset), num_replicas)
        )
        self.drop_last = train if drop_last is None else drop_last
        self.resumed = SkipFirst(self.sampler)  # the epoch's samples from the first batch not yet taken
        self.loader = worker_data_loader(
            dataset,
            workers=workers,
            device=self.device,
            seed=seed,
            rank=rank,
            batch_size=batch_size,
            sampler=self.resumed,
            drop_last=self.drop_last,
            collate_fn=collate_samples,
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose order the next iteration follows, from its batch `start` on (the batches before
        it are not read)."""
        self.epoch, self.resumed.start = epoch, start * self.batch_size
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this process (counting those before `start`), after drop_last and max_steps."""
        samples = len(self.sampler)
        batches = samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)
        return min(batches, self.max_steps) if self.max_steps else batches

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        skipped: list[str] = []
        remaining = len(self) - self.resumed.start // self.batch_size
        for images, labels, indices, batch_skipped in itertools.islice(self.loader, max(remaining, 0)):
            skipped.extend(batch_skipped)
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            if self.with_indices:
                yield images, labels, indices.to(self.device, non_blocking=True)
            else:
                yield images, labels
        self.skipped = skipped
        if skipped:
            warnings.warn(
                f"famkd: {len(skipped)} unreadable image file(s) in {self.dataset.description}, epoch {self.epoch}, "
                f"each replaced by the next readable image: {shown(skipped)}",
                stacklevel=2,
            )


class WorkerOptions(Protocol):
    """The options of a folder dataset: how many DataLoader processes decode its images."""

    workers: int


def folder_loader(
    dataset: ImageFolderSplit, options: WorkerOptions, batch_size: int, train: bool, settings: LoaderSettings
) -> ImageFolderLoader:
    """The registry's loader of a folder split: an ImageFolderLoader with `options.workers` processes."""
    return ImageFolderLoader(dataset, batch_size, train=train, workers=options.workers, **dataclasses.asdict(settings))
