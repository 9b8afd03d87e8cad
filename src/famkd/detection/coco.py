"""MS-COCO 2017 detection data: instances annotations read with pycocotools, images decoded per sample.

Layout under ROOT (the `root` argument), as the COCO 2017 archives unpack:

    ROOT/train2017/*.jpg                        the images of a split, named by the `file_name` of their
    ROOT/val2017/*.jpg                          entry in the split's annotation file
    ROOT/annotations/instances_train2017.json   the instances annotations: images (id, file_name, width,
    ROOT/annotations/instances_val2017.json     height), annotations (image_id, category_id, bbox
                                                [x, y, w, h] in pixels, iscrowd) and categories (id, name)

Only the split asked for must be there (evaluating needs val2017/ and its annotation file alone).

Label space (torchvision's): the C categories of the annotation file, sorted by category id, get the
contiguous labels 1..C and 0 is the background, so a torchvision detector for them is built with
num_classes = C + 1 (81 for COCO's 80 categories, whose ids run from 1 to 90 with gaps).
`CocoCategories` maps labels to category ids and back. torchvision's COCO-pretrained weights predict
category ids instead (num_classes=91); famkd.detection.models.torchvision_coco_state maps them to these.

Samples are (image, target) in torchvision's detection format: image float32 (3, H, W) RGB in [0, 1];
target `boxes` float32 (N, 4) as x1, y1, x2, y2 in pixels of the returned image (COCO's x, y, w, h
converted and clipped to the image), `labels` int64 (N,), `image_id` int64 (), `orig_size` int64 (2,):
the height and width of the image file. Crowd annotations (iscrowd=1) and degenerate boxes (width or
height <= 1 pixel after clipping) are left out of every target, as torchvision's references do. The
train split also leaves out the images with no annotation left (nothing to learn from); the val split
keeps every image, since COCO's metric counts detections on images without objects. The metric reads
the annotation file itself, where crowd regions are areas whose detections are ignored.

Transforms (`DetectionTransform`): resize so that the shorter side is `min_size` (800), or the longer
side `max_size` (1333) where the shorter side at `min_size` would make it longer (sizes rounded half up
to whole pixels as Detectron2's ResizeShortestEdge rounds them; antialiased bilinear, as its PIL
resize; boxes scaled by the same per-axis factors), then, for training, a horizontal flip with
probability 0.5 (image and boxes: x1' = W - x2). Multi-scale training (`train_sizes`, e.g. Detectron2's
(640, 672, 704, 736, 768, 800)): each training image's shorter side is drawn from the list, uniformly,
per image, as Detectron2's ResizeShortestEdge with sample_style "choice" draws it; the longer side is
still at most `max_size`. A loader indexes the dataset with `SampleKey`s, and a sample's flip and size
follow from its key's (seed, epoch, index) alone (`SampleKey.uniform_draws`: the flip's draw first, the
size's second): the same in any worker process, on any number of processes, and again when a run resumes
mid-epoch. Indexed with a plain int, the dataset draws them from torch's generator instead.

famkd resizes here, not in the model: the teacher and the student of a distillation run see one image
and one set of boxes, made the way Detectron2 (whose teachers famkd imports) makes them. Build
torchvision detectors with the same `min_size` and `max_size` for their GeneralizedRCNNTransform: its
resize factor is then exactly 1 (the shorter side is already `min_size`, or the longer `max_size`, and
neither bound is passed), an exact identity, so the model's boxes are in pixels of the image it was
given; `famkd.detection.evaluation.collect_detections` maps them to the image file's pixels with
`orig_size`.

Batches (`GroupedBatchSampler`, `CocoLoader`): the images of a batch share one aspect group (wide:
width > height; tall: the others, as Detectron2 groups them), so that padding them to the batch's
largest image wastes little. An epoch's batches follow from (seed, epoch) alone, the same on every
process, each process taking its share of them (see `GroupedBatchSampler`).

Errors: `DataNotFoundError` when ROOT, the split's image folder or its annotation file is missing
(naming the layout); `DataFormatError` for an annotation file that is not COCO instances JSON, an
annotation of an unknown category, or an image file that cannot be decoded or whose size is not the
one its annotation entry gives.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from famkd.data.datasets import DataFormatError, DataNotFoundError
from famkd.data.registry import DataOptions, DatasetEntry, register_dataset
from famkd.data.sampling import LoaderSettings, SampleKey, check_loader_settings, replica_and_rank, worker_data_loader
from famkd.errors import ConfigError, shown
from famkd.settings import setting

SPLITS = ("train", "val")
MIN_SIZE, MAX_SIZE = 800, 1333
# Detectron2's multi-scale training sizes (Base-RCNN-FPN; mdistiller's detection/configs/Base-Distillation.yaml
# INPUT.MIN_SIZE_TRAIN), each image's shorter side drawn from them ("choice").
MULTI_SCALE_MIN_SIZES = (640, 672, 704, 736, 768, 800)
FLIP_PROB = 0.5
WIDE, TALL = 0, 1
LAYOUT = (
    "expected ROOT/train2017/*.jpg, ROOT/val2017/*.jpg and ROOT/annotations/instances_{train,val}2017.json "
    "(the split used must be there), as the COCO 2017 archives train2017.zip, val2017.zip and "
    "annotations_trainval2017.zip unpack"
)
ANNOTATION_KEYS = ("images", "annotations", "categories")

Target = dict[str, Tensor]
Sample = tuple[Tensor, Target]
Batch = tuple[list[Tensor], list[Target]]


@dataclass(frozen=True)
class CocoCategories:
    """The label space of an annotation file: label i in 1..C is category `ids[i - 1]`; label 0 is the background."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, coco: COCO) -> CocoCategories:
        """The categories of `coco`'s annotation file, sorted by id."""
        categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda category: category["id"])
        if not categories:
            raise DataFormatError("the annotation file lists no categories; a COCO instances file lists 80")
        return cls(tuple(category["id"] for category in categories), tuple(category["name"] for category in categories))

    @property
    def num_classes(self) -> int:
        """C + 1: the `num_classes` of a torchvision detector over these categories (background included)."""
        return len(self.ids) + 1

    def label(self, category_id: int) -> int:
        """The contiguous label (1..C) of a COCO category id."""
        return self.ids.index(category_id) + 1

    def category_ids(self, labels: Tensor) -> Tensor:
        """The COCO category ids of contiguous labels, int64 on the CPU."""
        labels = labels.cpu()
        if len(labels) and not 1 <= int(labels.min()) <= int(labels.max()) <= len(self.ids):
            raise DataFormatError(
                f"detection labels must lie in 1..{len(self.ids)} (famkd's contiguous labels of the "
                f"{len(self.ids)} categories, 0 = background), got [{int(labels.min())}, {int(labels.max())}]; "
                f"build the detector with num_classes={self.num_classes} (torchvision's COCO-pretrained "
                "weights predict category ids instead: convert them with torchvision_coco_state)"
            )
        return torch.tensor((0, *self.ids), dtype=torch.int64)[labels]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is min_size, or the longer side max_size if that is smaller.

    Rounded half up, as Detectron2's ResizeShortestEdge rounds them (its sizes, for the teachers it
    trained). Rounding keeps the limiting side exactly at its bound and the other within its own, so a
    GeneralizedRCNNTransform with the same min_size and max_size finds a resize factor of exactly 1.
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@dataclass(frozen=True)
class DetectionTransform:
    """Resize (see `resized_size`), then a horizontal flip with probability `flip_prob`, of an image and its boxes.

    The shorter side is `min_size`, or, where `train_sizes` lists sizes (multi-scale training), the one of them
    the sample's size draw picks (each equally likely)."""

    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE
    flip_prob: float = 0.0
    train_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for size in (self.min_size, *self.train_sizes):
            if not 1 <= size <= self.max_size:
                raise ValueError(f"need 1 <= min_size <= max_size, got min_size={size}, max_size={self.max_size}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must lie in [0, 1], got {self.flip_prob}")

    def shorter_side(self, size_draw: float) -> int:
        """The shorter side for a size draw uniform in [0, 1): train_sizes[floor(draw * count)], or min_size."""
        if not self.train_sizes:
            return self.min_size
        return self.train_sizes[min(int(size_draw * len(self.train_sizes)), len(self.train_sizes) - 1)]

    def __call__(self, image: Tensor, boxes: Tensor, flip_draw: float, size_draw: float = 0.0) -> tuple[Tensor, Tensor]:
        """uint8 (3, H, W) image and float (N, 4) xyxy boxes -> float image in [0, 1] and boxes, both transformed;
        the image is flipped when `flip_draw` (uniform in [0, 1)) is below flip_prob, and its shorter side is
        `shorter_side(size_draw)`."""
        height, width = image.shape[-2:]
        new_height, new_width = resized_size(height, width, self.shorter_side(size_draw), self.max_size)
        if (new_height, new_width) != (height, width):
            image = TF.resize(image, [new_height, new_width], antialias=True)
            boxes = boxes * torch.tensor([new_width / width, new_height / height] * 2)
        if flip_draw < self.flip_prob:
            image = image.flip(-1)
            boxes = torch.stack([new_width - boxes[:, 2], boxes[:, 1], new_width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image.float() / 255, boxes


def clipped_box(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] box as x1, y1, x2, y2, clipped to a width x height image."""
    x, y, w, h = bbox
    return (min(max(x, 0), width), min(max(y, 0), height), min(max(x + w, 0), width), min(max(y + h, 0), height))


def is_usable(annotation: dict[str, Any], width: int, height: int) -> bool:
    """Not a crowd region, and its box clipped to the image is wider and taller than one pixel."""
    x1, y1, x2, y2 = clipped_box(annotation["bbox"], width, height)
    return not annotation.get("iscrowd", 0) and x2 - x1 > 1 and y2 - y1 > 1


class CocoDetection(Dataset[Sample]):
    """One split: the images `image_ids` of `coco`'s annotation file, decoded and transformed when indexed."""

    def __init__(
        self,
        coco: COCO,
        image_dir: Path,
        image_ids: list[int],
        categories: CocoCategories,
        transform: DetectionTransform,
        description: str,
    ):
        self.coco = coco
        self.image_dir = image_dir
        self.image_ids = image_ids
        self.categories = categories
        self.transform = transform
        self.description = description

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """The sample at an index (flip and size drawn from torch's generator) or at a SampleKey (from the key)."""
        if isinstance(key, SampleKey):
            index, (flip_draw, size_draw) = key.item, key.uniform_draws(2)
        else:
            index, (flip_draw, size_draw) = key, torch.rand(2).tolist()
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        width, height = info["width"], info["height"]
        annotations = [ann for ann in self.coco.imgToAnns[image_id] if is_usable(ann, width, height)]
        boxes = torch.tensor([clipped_box(ann["bbox"], width, height) for ann in annotations], dtype=torch.float32)
        labels = [self.categories.label(ann["category_id"]) for ann in annotations]
        image, boxes = self.transform(self._read_image(info), boxes.reshape(-1, 4), flip_draw, size_draw)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        return image, target

    def _read_image(self, info: dict[str, Any]) -> Tensor:
        """The uint8 RGB (3, H, W) image of an annotation file's image entry."""
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as file:
                image = TF.pil_to_tensor(file.convert("RGB"))
        except OSError as error:
            raise DataFormatError(
                f"cannot read image {path} ({error}); the copy of {self.image_dir} looks incomplete"
            ) from error
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise DataFormatError(
                f"image {path} is {image.shape[2]}x{image.shape[1]} pixels but its annotation entry says "
                f"{info['width']}x{info['height']}; the image and annotation files do not belong together"
            )
        return image

    def aspect_groups(self) -> list[int]:
        """Each image's aspect group, WIDE (width > height) or TALL, from the annotation file (no image is read)."""
        sizes = (self.coco.imgs[image_id] for image_id in self.image_ids)
        return [WIDE if info["width"] > info["height"] else TALL for info in sizes]


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a split under `root`, both checked to exist."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"COCO root {root} does not exist or is not a folder; {LAYOUT}")
    image_dir, annotation_file = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    if not image_dir.is_dir():
        raise DataNotFoundError(f"{root} has no {split}2017/ image folder; {LAYOUT}")
    if not annotation_file.is_file():
        raise DataNotFoundError(f"{root} has no annotations/{annotation_file.name}; {LAYOUT}")
    return image_dir, annotation_file


def read_annotations(path: Path) -> COCO:
    """pycocotools' index of an instances annotation file (its progress messages silenced)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (ValueError, AssertionError, KeyError, TypeError) as error:
        raise DataFormatError(f"{path} is not COCO instances JSON ({error!r}); {LAYOUT}") from error
    missing = [key for key in ANNOTATION_KEYS if key not in coco.dataset]
    if missing:
        raise DataFormatError(f"{path} has no {', '.join(missing)}; COCO instances JSON holds {ANNOTATION_KEYS}")
    return coco


def load_coco(
    root: str | os.PathLike,
    split: str,
    *,
    min_size: int = MIN_SIZE,
    max_size: int = MAX_SIZE,
    flip_prob: float | None = None,
    train_sizes: Sequence[int] = (),
) -> CocoDetection:
    """The `split` ("train" or "val") of the COCO 2017 folders at `root` (layout: the module docstring).

    flip_prob: of the horizontal flip; None is FLIP_PROB for train, 0 for val. train_sizes: the shorter sides
    a training image is resized to, one drawn per image (empty: min_size). Training keeps only the images
    with a usable annotation; images are in the order of their ids.
    """
    image_dir, annotation_file = coco_paths(root, split)
    coco = read_annotations(annotation_file)
    categories = CocoCategories.from_coco(coco)
    unknown = sorted({ann["category_id"] for ann in coco.dataset["annotations"]} - set(categories.ids))
    if unknown:
        listed = shown([str(category_id) for category_id in unknown])
        raise DataFormatError(f"{annotation_file}: annotations of category ids its categories do not list: {listed}")
    image_ids = sorted(coco.getImgIds())
    if split == "train":
        image_ids = [image_id for image_id in image_ids if _has_usable_annotation(coco, image_id)]
    if flip_prob is None:
        flip_prob = FLIP_PROB if split == "train" else 0.0
    description = f"COCO 2017 at {root}, {split}, {len(image_ids)} images of {len(categories.ids)} categories"
    transform = DetectionTransform(min_size, max_size, flip_prob, tuple(train_sizes))
    return CocoDetection(coco, image_dir, image_ids, categories, transform, description)


def _has_usable_annotation(coco: COCO, image_id: int) -> bool:
    info = coco.imgs[image_id]
    return any(is_usable(ann, info["width"], info["height"]) for ann in coco.imgToAnns[image_id])


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each from one group, an epoch's batches shared out between processes.

    group_ids[i] is the group of index i (e.g. `CocoDetection.aspect_groups()`). Every process forms the
    same batches of the whole dataset: it takes the indices in an order drawn from (seed, epoch) alone
    (shuffle=True) or in index order, appends each to its group's open batch and emits that batch once
    it holds batch_size indices; the groups' last, partial batches follow at the end, or are dropped with
    drop_last. Process `rank` of `num_replicas` takes batches rank, rank + num_replicas, ...; with
    drop_last the batches are first cut to a multiple of num_replicas so that every process runs the same
    number of steps, as DistributedDataParallel needs. Without drop_last the processes' batches together
    hold every index exactly once (as evaluation needs) and their counts differ by at most one.

    It does not wrap a DistributedSampler: grouping each process's share separately leaves the processes
    with different batch counts, which torchvision's GroupedBatchSampler evens out by repeating images.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        check_loader_settings(batch_size, max_steps=0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose batches the next iteration yields, from this process's batch `start` on
        (a resumed run skips the batches it has taken without reading their images)."""
        self.epoch, self.start = epoch, start

    def epoch_batches(self) -> list[list[int]]:
        """All processes' batches of the current epoch, in the order they are shared out."""
        count = len(self.group_ids)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(count) if self.shuffle else range(count)
        open_batches: dict[int, list[int]] = {}
        batches = []
        for index in order:
            group = self.group_ids[index]
            batch = open_batches.setdefault(group, [])
            batch.append(int(index))
            if len(batch) == self.batch_size:
                batches.append(open_batches.pop(group))
        if not self.drop_last:
            batches.extend(open_batches.values())
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        if self.drop_last:
            batches = batches[: len(batches) // self.num_replicas * self.num_replicas]
        return iter(batches[self.rank :: self.num_replicas][self.start :])

    def __len__(self) -> int:
        """This process's batches per epoch (counting those before `start`)."""
        sizes = Counter(self.group_ids).values()
        if self.drop_last:
            return sum(size // self.batch_size for size in sizes) // self.num_replicas
        total = sum(-(-size // self.batch_size) for size in sizes)
        return len(range(self.rank, total, self.num_replicas))


class KeyedBatches(Sampler[list[SampleKey]]):
    """The batches of a GroupedBatchSampler as SampleKeys of its seed and current epoch."""

    def __init__(self, batches: GroupedBatchSampler):
        self.batches = batches

    def __iter__(self) -> Iterator[list[SampleKey]]:
        seed, epoch = self.batches.seed, self.batches.epoch
        return ([SampleKey(index, seed, epoch) for index in batch] for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate_detections(samples: list[Sample]) -> Batch:
    """(images, targets) as two lists: detection images differ in size and are not stacked."""
    return [image for image, _ in samples], [target for _, target in samples]


class CocoLoader:
    """Yields (images, targets) batches of a `CocoDetection`, as lists of tensors on `device`.

    A torch DataLoader decodes and transforms the samples in `workers` processes (persistent across
    epochs when workers > 0), into pinned memory when `device` is CUDA, and the batches move to
    `device` without blocking. Its batch sampler is a `GroupedBatchSampler` over the dataset's aspect
    groups: train=True shuffles by (seed, epoch) (`set_epoch`) and drops partial batches, so that every
    process runs the same number of steps; train=False keeps the order and every image, each process
    taking its share. Samples are fetched by `SampleKey`, so their flips follow from (seed, epoch, index).
    `num_replicas` and `rank`: as given, else torch.distributed's when initialised, else one process.
    """

    def __init__(
        self,
        dataset: CocoDetection,
        batch_size: int,
        *,
        train: bool,
        workers: int = 4,
        seed: int = 0,
        device: torch.device | str = "cpu",
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        num_replicas, rank = replica_and_rank(num_replicas, rank)
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_sampler = GroupedBatchSampler(
            dataset.aspect_groups(),
            batch_size,
            shuffle=train,
            drop_last=train,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )
        self.loader = worker_data_loader(
            dataset,
            workers=workers,
            device=self.device,
            seed=seed,
            rank=rank,
            batch_sampler=KeyedBatches(self.batch_sampler),
            collate_fn=collate_detections,
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose batches the next iteration yields, from this process's batch `start` on."""
        self.batch_sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        """Batches per epoch on this process."""
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Batch]:
        for images, targets in self.loader:
            yield (
                [image.to(self.device, non_blocking=True) for image in images],
                [
                    {key: value.to(self.device, non_blocking=True) for key, value in target.items()}
                    for target in targets
                ],
            )


@dataclass
class CocoOptions(DataOptions):
    """COCO 2017 under data.root (train2017/, val2017/, annotations/), the resize both models use (shorter side
    `min_size`, longer at most `max_size`), the training sizes, the training flip's probability and the
    DataLoader workers.

    min_size_train: the shorter sides of training images, one drawn per image (multi-scale training, as
    Detectron2's INPUT.MIN_SIZE_TRAIN with "choice" sampling; the paper's configs give
    MULTI_SCALE_MIN_SIZES); empty (the default), or one value equal to min_size: every training image at
    min_size. Evaluation is always at min_size (Detectron2's MIN_SIZE_TEST)."""

    dataset: str = "coco"
    min_size: int = setting(MIN_SIZE, minimum=1)
    max_size: int = setting(MAX_SIZE, minimum=1)
    min_size_train: list[int] = setting(factory=list)
    flip_prob: float = setting(FLIP_PROB, minimum=0.0)
    workers: int = setting(4, minimum=0)

    def __post_init__(self) -> None:
        if self.min_size > self.max_size:
            raise ConfigError(f"data.min_size={self.min_size} must not exceed data.max_size={self.max_size}")
        bad = [size for size in self.min_size_train if not 1 <= size <= self.max_size]
        if bad:
            raise ConfigError(
                f"data.min_size_train={self.min_size_train}: every size must lie in 1..data.max_size={self.max_size}"
            )


def load_coco_splits(options: CocoOptions) -> tuple[CocoDetection, CocoDetection]:
    """(train, val) of the COCO folders `options` name, with the same categories."""
    min_size, max_size = options.min_size, options.max_size
    train = load_coco(
        options.root,
        "train",
        min_size=min_size,
        max_size=max_size,
        flip_prob=options.flip_prob,
        train_sizes=options.min_size_train,
    )
    val = load_coco(options.root, "val", min_size=min_size, max_size=max_size)
    if val.categories != train.categories:
        raise DataFormatError(f"the train and val annotation files of {options.root} list different categories")
    return train, val


def coco_loader(
    dataset: CocoDetection, options: CocoOptions, batch_size: int, train: bool, settings: LoaderSettings
) -> CocoLoader:
    return CocoLoader(
        dataset,
        batch_size,
        train=train,
        workers=options.workers,
        seed=settings.seed,
        device=settings.device,
        num_replicas=settings.num_replicas,
        rank=settings.rank,
    )


register_dataset("coco")(DatasetEntry(CocoOptions, load_coco_splits, lambda _: None, coco_loader))
