"""A batch loader over an in-memory uint8 dataset: gather, crop, flip and normalise as tensor ops.

The images move to the training device once. Each epoch draws its order, crop offsets and
flips from a CPU generator seeded by (seed, epoch) alone, so an epoch is reproduced exactly
on resume and on any device. No host synchronisation happens inside an epoch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch

from famkd.data.datasets import ImageDataset
from famkd.data.sampling import LoaderSettings, check_loader_settings, epoch_generator
from famkd.data.transforms import crop_offsets, crop_padded, flip_mask, flip_where, normalization_constants, pad_images

CROP_PADDING = 4


class BatchLoader:
    """Yields (float32 normalised images (B, 3, H, W), int64 labels (B,)) on `device`.

    train=True: a shuffled order, random crop (zero padding 4) and horizontal flip, drop_last by
    default. train=False: the dataset order, no augmentation, the last partial batch kept.
    max_steps > 0 stops an epoch after that many batches. With `with_indices`, each batch also
    carries the images' positions in the dataset, int64 (B,): (images, labels, indices).

    One of `num_replicas` processes (this one `rank`, e.g. under torchrun) loads its share, with
    `batch_size` images per process: in training, rank r takes rows [r * batch_size, (r + 1) *
    batch_size) of each global batch of the same (seed, epoch) order, so the processes together see
    exactly the batches one process with batch_size * num_replicas would; in evaluation, rank r takes
    the r-th of num_replicas contiguous parts of the dataset, so together they cover it once.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool | None = None,
        max_steps: int = 0,
        channels_last: bool = False,
        with_indices: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        check_loader_settings(batch_size, max_steps)
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        self.max_steps = max_steps
        self.channels_last = channels_last
        self.with_indices = with_indices
        self.num_replicas, self.rank = num_replicas, rank
        part = math.ceil(len(dataset) / num_replicas)  # evaluation: this process's contiguous part
        self.eval_range = (min(rank * part, len(dataset)), min((rank + 1) * part, len(dataset)))
        self.epoch = self.start = 0
        self.labels = dataset.labels.to(self.device)
        images = dataset.images.to(self.device)
        # Training crops read windows of a once-padded copy; evaluation reads the images as they are.
        self.images = pad_images(images, CROP_PADDING) if train else images
        self.image_size = dataset.images.shape[-1]
        self.scale, self.shift = normalization_constants(dataset.mean, dataset.std, self.device)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose order and augmentation the next iteration replays, from its batch `start` on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches per epoch on this process, after drop_last and max_steps."""
        if self.train:
            count, per_batch = len(self.dataset), self.batch_size * self.num_replicas
        else:
            count, per_batch = self.eval_range[1] - self.eval_range[0], self.batch_size
        batches = count // per_batch if self.drop_last else math.ceil(count / per_batch)
        return min(batches, self.max_steps) if self.max_steps else batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.train:
            order, offsets, flips = self._draw_epoch()
        for step in range(self.start, len(self)):
            if self.train:
                start = (step * self.num_replicas + self.rank) * self.batch_size
                stop = min(start + self.batch_size, len(self.dataset))
            else:
                start = self.eval_range[0] + step * self.batch_size
                stop = min(start + self.batch_size, self.eval_range[1])
            if self.train:
                indices = order[start:stop]
                batch = crop_padded(self.images, indices, offsets[start:stop], self.image_size)
                batch = flip_where(batch, flips[start:stop])
                labels = self.labels[indices]
            else:
                indices = None
                batch, labels = self.images[start:stop], self.labels[start:stop]
            if not self.with_indices:
                yield self._normalize(batch), labels
            elif indices is None:
                yield self._normalize(batch), labels, torch.arange(start, stop, device=self.device)
            else:
                yield self._normalize(batch), labels, indices

    def _draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The epoch's order, crop offsets and flips (one per position), drawn on the CPU, moved once."""
        generator = epoch_generator(self.seed, self.epoch)
        count = len(self.dataset)
        order = torch.randperm(count, generator=generator)
        offsets = crop_offsets(count, CROP_PADDING, generator)
        flips = flip_mask(count, generator)
        return order.to(self.device), offsets.to(self.device), flips.to(self.device)

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = batch.to(torch.float32, memory_format=memory_format)
        return images.mul_(self.scale).add_(self.shift)


def in_memory_loader(
    dataset: ImageDataset, options: Any, batch_size: int, train: bool, settings: LoaderSettings
) -> BatchLoader:
    """The BatchLoader of an in-memory dataset (a DatasetEntry's `loader`)."""
    return BatchLoader(dataset, batch_size, train=train, **dataclasses.asdict(settings))
