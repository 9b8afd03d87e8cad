"""ImageNet-style image folders, decoded from disk per batch by DataLoader workers.

Accepted layouts under ROOT (the `root` argument):

    ROOT/train/<class>/<image>   one folder per class, named by its wnid (e.g. n01440764); the classes
                                 are the sorted folder names and a label is a position in that list,
                                 as torchvision's ImageFolder numbers them
    ROOT/val/<class>/<image>     the validation images in the same folder layout; every folder must be
                                 a class of train/ (a train class may have no val folder)
    ROOT/val/<image>             or the flat layout the ILSVRC2012 val archive unpacks to, labelled by
                                 Kaggle's LOC_val_solution.csv, in ROOT/val/ or ROOT/ (first found)

Class names: the wnids, or where ROOT holds Kaggle's LOC_synset_mapping.txt (`<wnid> <name>, <synonym>, ...`
per line) each wnid's first name, e.g. `tench` for n01440764.

LOC_val_solution.csv has the header `ImageId,PredictionString` and one row per image: ImageId is the
file name without its extension, the first word of PredictionString the image's wnid (the rest are
boxes), e.g. `ILSVRC2012_val_00008726,n02119789 255 142 454 329`. Images are the files ending in
.JPEG, .jpg, .jpeg or .png (any case) directly inside their folder.

Errors: `DataNotFoundError` when ROOT, ROOT/train or ROOT/val is missing (naming the layout),
`DataFormatError` for a train/ without class folders, an empty class folder (named), val classes
that are not train classes, a flat val/ without its label file or with unlabelled images.

Unreadable images: building a split lists the files without opening them (opening ImageNet's 1.28M
training images at start-up would take long). An image that cannot be decoded (PIL raises OSError:
a truncated file, a file that is not an image) is replaced by the next readable image of the split,
with that image's own label and index, so batches keep their size; `ImageNetLoader` counts the
replaced files and, at the end of each epoch that had any, warns once with the count and the first
few names. `MAX_UNREADABLE_IN_A_ROW` unreadable files in a row raise `DataFormatError`.

Transforms are torchvision's: training `RandomResizedCrop(crop_size)` and `RandomHorizontalFlip()`,
evaluation `Resize(resize_size)` and `CenterCrop(crop_size)` (224 and 256 by default), then
`ToTensor()` and `Normalize` with the ImageNet mean and std.

`ImageNetLoader` wraps a torch DataLoader over a split and yields `(images, labels)` on a device
like famkd's `BatchLoader` (see its docstring for the sampler, workers and distributed runs).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler
from torchvision import transforms
from torchvision.datasets.folder import default_loader

from famkd.data.datasets import DataFormatError, DataNotFoundError
from famkd.data.registry import DataOptions, DatasetEntry, register_dataset
from famkd.data.sampling import LoaderSettings, SkipFirst, check_loader_settings, replica_and_rank, worker_data_loader
from famkd.errors import ConfigError, shown
from famkd.settings import setting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SIZE, RESIZE_SIZE = 224, 256
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
VAL_LABEL_FILE = "LOC_val_solution.csv"
NAMES_FILE = "LOC_synset_mapping.txt"
VAL_LABEL_COLUMNS = ("ImageId", "PredictionString")
MAX_UNREADABLE_IN_A_ROW = 10
LAYOUT = (
    "expected ROOT/train/<class>/*.JPEG (one folder per class) and ROOT/val/<class>/*.JPEG, "
    f"or ROOT/val/*.JPEG labelled by {VAL_LABEL_FILE}"
)


class Sample(NamedTuple):
    """One decoded image; `position` is the index of the sample read, `skipped` the unreadable files tried first."""

    image: Tensor
    label: int
    position: int
    skipped: tuple[str, ...]


class ImageFolderSplit(Dataset[Sample]):
    """One split: (path, label) samples, decoded and transformed when indexed.

    classes: the class folder names (wnids) of train/, label i being classes[i]; names: their names (wnids if none).
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
        """The classes' names (LOC_synset_mapping.txt), else their wnids."""
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


def train_transform(crop_size: int = CROP_SIZE) -> transforms.Compose:
    """RandomResizedCrop(crop_size), RandomHorizontalFlip, ToTensor, Normalize(ImageNet mean, std)."""
    return transforms.Compose(
        [transforms.RandomResizedCrop(crop_size), transforms.RandomHorizontalFlip(), *_to_normalized_tensor()]
    )


def eval_transform(crop_size: int = CROP_SIZE, resize_size: int = RESIZE_SIZE) -> transforms.Compose:
    """Resize(resize_size) of the shorter side, CenterCrop(crop_size), ToTensor, Normalize(ImageNet mean, std)."""
    return transforms.Compose(
        [transforms.Resize(resize_size), transforms.CenterCrop(crop_size), *_to_normalized_tensor()]
    )


def _to_normalized_tensor() -> list[Callable]:
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def load_imagenet(
    root: str | os.PathLike, crop_size: int = CROP_SIZE, resize_size: int = RESIZE_SIZE
) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    """(train, val) splits of the folders at `root` (layouts: the module docstring), with their transforms."""
    root = Path(root).expanduser()
    train_dir, val_dir = _split_dirs(root)
    classes = _class_folders(train_dir)
    train_samples = _folder_samples(train_dir, classes, classes)
    val_samples = _val_samples(root, val_dir, classes)
    splits = []
    for split, samples, transform in (
        ("train", train_samples, train_transform(crop_size)),
        ("val", val_samples, eval_transform(crop_size, resize_size)),
    ):
        description = f"ImageNet folders at {root}, {split}, {len(samples)} images of {len(classes)} classes"
        splits.append(ImageFolderSplit(samples, classes, transform, crop_size, description, class_names(root, classes)))
    return splits[0], splits[1]


def class_names(root: Path, wnids: tuple[str, ...]) -> tuple[str, ...]:
    """Each wnid's first name from ROOT/LOC_synset_mapping.txt, or the wnids where there is no such file."""
    path = root / NAMES_FILE
    if not path.is_file():
        return wnids
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, words = line.strip().partition(" ")
        names[wnid] = words.split(",")[0].strip() or wnid
    return tuple(names.get(wnid, wnid) for wnid in wnids)


def _split_dirs(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DataNotFoundError(f"ImageNet root {root} does not exist or is not a folder; {LAYOUT}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataNotFoundError(f"{root} has no {split}/ folder; {LAYOUT}")
    return root / "train", root / "val"


def _class_folders(directory: Path) -> tuple[str, ...]:
    """The sorted names of the folders in `directory`."""
    classes = tuple(sorted(entry.name for entry in os.scandir(directory) if entry.is_dir()))
    if not classes:
        raise DataFormatError(f"{directory} holds no class folders; {LAYOUT}")
    return classes


def _image_files(directory: Path) -> list[str]:
    """The sorted paths of the image files directly in `directory`."""
    return sorted(
        entry.path
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _folder_samples(directory: Path, folders: tuple[str, ...], classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, label) of every image in `directory`/<folder>, folders in order, labels their positions in `classes`."""
    label_of = {name: label for label, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    empty = []
    for folder in folders:
        files = _image_files(directory / folder)
        if not files:
            empty.append(folder)
        samples.extend((path, label_of[folder]) for path in files)
    if empty:
        raise DataFormatError(
            f"{directory}: empty class folder(s) {shown(empty)}: no {', '.join(IMAGE_EXTENSIONS)} image in them; "
            "add their images or remove the folders"
        )
    return samples


def _check_known_classes(directory: Path, found: tuple[str, ...] | list[str], classes: tuple[str, ...]) -> None:
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataFormatError(
            f"{directory}: val classes not in train/: {shown(unknown)}; every val class must have a "
            "folder in train/ (labels are positions among train/'s sorted class folders)"
        )


def _val_samples(root: Path, val_dir: Path, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """The val split's samples, from the folder layout or from the flat one with its label file."""
    flat_images = _image_files(val_dir)
    folders = tuple(sorted(entry.name for entry in os.scandir(val_dir) if entry.is_dir()))
    if flat_images and folders:
        raise DataFormatError(f"{val_dir} holds both images and class folders; use one layout: {LAYOUT}")
    if folders:
        _check_known_classes(val_dir, folders, classes)
        return _folder_samples(val_dir, folders, classes)
    if not flat_images:
        raise DataFormatError(f"{val_dir} holds no images and no class folders; {LAYOUT}")
    return _flat_samples(root, val_dir, flat_images, classes)


def _flat_samples(root: Path, val_dir: Path, images: list[str], classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, label) of the flat val images, labelled by their wnids in the label file."""
    label_file = next((path for path in (val_dir / VAL_LABEL_FILE, root / VAL_LABEL_FILE) if path.is_file()), None)
    if label_file is None:
        raise DataFormatError(
            f"{val_dir} holds images directly (the flat layout) but neither it nor {root} holds {VAL_LABEL_FILE} "
            "to label them; add that file or sort the images into class folders"
        )
    wnid_of = read_val_labels(label_file)
    unlabelled = [path for path in images if Path(path).stem not in wnid_of]
    if unlabelled:
        raise DataFormatError(f"{label_file} has no row for {len(unlabelled)} val images: {shown(unlabelled)}")
    wnids = [wnid_of[Path(path).stem] for path in images]
    _check_known_classes(label_file, wnids, classes)
    label_of = {name: label for label, name in enumerate(classes)}
    return [(path, label_of[wnid]) for path, wnid in zip(images, wnids)]


def read_val_labels(path: Path) -> dict[str, str]:
    """Image id (file name without extension) -> wnid, from a LOC_val_solution.csv file."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or not set(VAL_LABEL_COLUMNS) <= set(reader.fieldnames):
            raise DataFormatError(f"{path}: expected the header {','.join(VAL_LABEL_COLUMNS)}")
        rows = list(reader)
    wnid_of = {}
    for line, row in enumerate(rows, start=2):
        words = (row[VAL_LABEL_COLUMNS[1]] or "").split()
        if not row[VAL_LABEL_COLUMNS[0]] or not words:
            raise DataFormatError(f"{path}, line {line}: expected `<image id>,<wnid> ...`, got {row}")
        wnid_of[row[VAL_LABEL_COLUMNS[0]]] = words[0]
    return wnid_of


def collate_samples(samples: list[Sample]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Stacked images, int64 labels and indices, and the unreadable files the samples replaced."""
    return (
        torch.stack([sample.image for sample in samples]),
        torch.tensor([sample.label for sample in samples], dtype=torch.int64),
        torch.tensor([sample.position for sample in samples], dtype=torch.int64),
        [path for sample in samples for path in sample.skipped],
    )


class ImageNetLoader:
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


@dataclass
class ImageNetOptions(DataOptions):
    """ImageNet folders under data.root (required): `workers` DataLoader processes per training process, the
    side of the training and evaluation crop, and the side evaluation images are resized to before cropping."""

    workers: int = setting(8, minimum=0)
    crop_size: int = setting(CROP_SIZE, minimum=1)
    resize_size: int = setting(RESIZE_SIZE, minimum=1)

    def __post_init__(self) -> None:
        if self.crop_size > self.resize_size:
            raise ConfigError(
                f"data.crop_size={self.crop_size} exceeds data.resize_size={self.resize_size}: evaluation resizes to "
                "resize_size, then crops crop_size from it; raise data.resize_size (the standard ratio is 256/224)"
            )


def load_imagenet_options(options: ImageNetOptions) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    if not options.root:
        raise ConfigError("data.dataset=imagenet needs data.root=<folder holding train/ and val/>")
    return load_imagenet(options.root, options.crop_size, options.resize_size)


def imagenet_loader(
    dataset: ImageFolderSplit, options: ImageNetOptions, batch_size: int, train: bool, settings: LoaderSettings
) -> ImageNetLoader:
    return ImageNetLoader(dataset, batch_size, train=train, workers=options.workers, **dataclasses.asdict(settings))


register_dataset("imagenet")(
    DatasetEntry(ImageNetOptions, load_imagenet_options, lambda options: options.crop_size, imagenet_loader)
)
