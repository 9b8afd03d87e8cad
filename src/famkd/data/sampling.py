"""What every famkd loader shares: its settings, how a global batch is shared out between processes, and
the random draws that follow from (seed, epoch) or (seed, epoch, index) alone, so that an epoch replays
exactly on resume, on any number of processes and in any DataLoader worker."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class LoaderSettings:
    """How a task asks a dataset for a loader: the run's seed and device, the images' memory format, whether
    batches carry the images' positions (`with_indices`), a cap on an epoch's batches (`max_steps`, 0 = none),
    and this process's place among `num_replicas` processes (`rank`)."""

    seed: int = 0
    device: torch.device = torch.device("cpu")
    channels_last: bool = False
    with_indices: bool = False
    max_steps: int = 0
    num_replicas: int = 1
    rank: int = 0


def check_loader_settings(batch_size: int, max_steps: int) -> None:
    """The settings every famkd loader takes: a positive batch size, max_steps >= 0 (0 = the whole epoch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0 (0 = the whole epoch), got {max_steps}")


def replica_and_rank(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(num_replicas, rank): the given values, else torch.distributed's when it is initialised, else (1, 0)."""
    distributed = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if distributed else 1
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    return num_replicas, rank


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch), well mixed for neighbouring values."""
    mixed = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def worker_data_loader(
    dataset: Dataset, *, workers: int, device: torch.device, seed: int, rank: int, **batching: Any
) -> DataLoader:
    """A DataLoader that decodes in `workers` processes (kept across epochs), into pinned memory for CUDA.

    Each of its iterators draws the workers' base seed from a generator of (seed, rank): the global generator,
    which training draws from (and a resumed run restores), stays untouched. `batching`: the DataLoader's
    sampler or batch sampler, batch size, drop_last and collate_fn."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
    persistent, pinned = workers > 0, device.type == "cuda"
    return DataLoader(
        dataset, num_workers=workers, pin_memory=pinned, persistent_workers=persistent, generator=generator, **batching
    )


class SampleKey(NamedTuple):
    """How a loader indexes a dataset whose augmentation is keyed: the dataset index `item` and the (seed, epoch)
    of the batch order."""

    item: int
    seed: int
    epoch: int

    def uniform_draw(self) -> float:
        """The sample's uniform draw in [0, 1) (e.g. for its flip), a function of (seed, epoch, item) alone."""
        return self.uniform_draws(1)[0]

    def uniform_draws(self, count: int) -> list[float]:
        """The sample's first `count` uniform draws in [0, 1) (e.g. its flip, then its training size), a function
        of (seed, epoch, item) alone; the first is `uniform_draw()`."""
        return [float(draw) for draw in np.random.default_rng([self.seed, self.epoch, self.item]).random(count)]


class SkipFirst(Sampler):
    """The items of `sampler` from its `start`-th on: a resumed epoch skips what it has taken without reading it."""

    def __init__(self, sampler: Sampler | range, start: int = 0):
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator:
        iterator = iter(self.sampler)
        for _ in range(self.start):
            next(iterator, None)
        return iterator

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)
        return max(len(self.sampler) - self.start, 0)
