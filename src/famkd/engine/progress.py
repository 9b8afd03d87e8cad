"""Progress of a training epoch and stop requests: what the trainer accumulates between host syncs.

`EpochProgress` keeps an epoch's running loss sums, accuracy and first non-finite step on the
device, so that training steps never wait for the host; it is saved in a mid-epoch checkpoint.
`StopRequest` turns Ctrl-C into a request to stop at the next step boundary.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from famkd.engine.distributed import all_reduce_sum
from famkd.errors import NonFiniteLossError


@dataclasses.dataclass
class EpochProgress:
    """Running totals of one epoch, kept on the device so that steps never wait for the host.

    loss_sums: per term, the sum over images of the term (batch mean x batch size).
    first_bad_step: per term, the first global step (from 1) whose value was not finite, else -1.
    """

    epoch: int
    steps_done: int = 0
    images_seen: int = 0
    loss_sums: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    first_bad_step: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    correct: Tensor | None = None
    wait_s: float = 0.0
    elapsed_s: float = 0.0

    def add(self, logits: Tensor, labels: Tensor, losses: dict[str, Tensor], global_step: int) -> None:
        """Accumulate one step (device ops only)."""
        batch = labels.shape[0]
        for name, value in losses.items():
            value = value.detach().float()
            if name not in self.loss_sums:
                self.loss_sums[name] = torch.zeros((), device=value.device)
                self.first_bad_step[name] = torch.full((), -1, dtype=torch.int64, device=value.device)
            self.loss_sums[name] += value * batch
            first_bad = self.first_bad_step[name]
            newly_bad = ~torch.isfinite(value) & (first_bad < 0)
            self.first_bad_step[name] = torch.where(newly_bad, global_step, first_bad)
        correct = (logits.argmax(dim=1) == labels).sum()
        self.correct = correct if self.correct is None else self.correct + correct
        self.images_seen += batch
        self.steps_done += 1

    def read(self) -> dict[str, float]:
        """Epoch means so far, loss_<term> and train_acc, over every training process (one host sync)."""
        assert self.correct is not None, "read() before the first step"
        names = list(self.loss_sums)
        images = torch.tensor(float(self.images_seen), device=self.correct.device)
        totals = all_reduce_sum(torch.stack([self.loss_sums[n] for n in names] + [self.correct.float(), images]))
        *sums, correct, images_seen = totals.tolist()
        means = {f"loss_{n}": v / images_seen for n, v in zip(names, sums)}
        means["train_acc"] = 100.0 * correct / images_seen
        return means

    def first_non_finite(self, means: dict[str, float] | None = None) -> tuple[str, float, int] | None:
        """(term, its epoch mean, the global step it first went bad) of the earliest term that became NaN
        or infinite, or None; `means` are those of `read()` when already read."""
        means = self.read() if means is None else means
        bad = [name for name in self.loss_sums if not math.isfinite(means[f"loss_{name}"])]
        if not bad:
            return None
        first_steps = {name: int(self.first_bad_step[name]) for name in bad}
        name = min(bad, key=lambda term: first_steps[term])
        return name, means[f"loss_{name}"], first_steps[name]

    def raise_if_non_finite(
        self, means: dict[str, float] | None, global_step: int, steps_per_epoch: int, kept: str
    ) -> None:
        """NonFiniteLossError naming the first term that went bad, where in the epoch, and `kept` (what
        the run keeps), when a term is NaN or infinite; `global_step` is the step just taken."""
        bad = self.first_non_finite(means)
        if bad is None:
            return
        name, value, bad_step = bad
        step_in_epoch = bad_step - (global_step - self.steps_done)
        raise NonFiniteLossError(
            f"loss term {name!r} became {'nan' if math.isnan(value) else 'infinite'} at epoch {self.epoch}, "
            f"step {step_in_epoch} of {steps_per_epoch} (global step {bad_step}); training stopped and "
            f"{kept}. Try a lower train.lr or distill option weight, or amp=off."
        )

    def state_dict(self) -> dict[str, Any]:
        assert self.correct is not None, "state_dict() before the first step"
        return {
            "epoch": self.epoch,
            "steps_done": self.steps_done,
            "images_seen": self.images_seen,
            "loss_sums": {n: v.cpu() for n, v in self.loss_sums.items()},
            "first_bad_step": {n: v.cpu() for n, v in self.first_bad_step.items()},
            "correct": self.correct.cpu(),
            "wait_s": self.wait_s,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        def to_device(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {name: value.to(device) for name, value in tensors.items()}

        return cls(
            epoch=state["epoch"],
            steps_done=state["steps_done"],
            images_seen=state["images_seen"],
            loss_sums=to_device(state["loss_sums"]),
            first_bad_step=to_device(state["first_bad_step"]),
            correct=state["correct"].to(device),
            wait_s=state["wait_s"],
            elapsed_s=state["elapsed_s"],
        )


@dataclasses.dataclass
class RunState:
    """Where a run stands, saved in every checkpoint: the last completed epoch (from 1), the optimiser steps
    taken, the best and last test top-1, the teacher's, and the wall time of the run's earlier sessions."""

    epoch: int = 0
    global_step: int = 0
    best_acc: float = -math.inf
    best_epoch: int = 0
    last_acc: float | None = None
    teacher_acc: float | None = None
    wall_time_s: float = 0.0

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> RunState:
        return cls(**{field.name: checkpoint[field.name] for field in dataclasses.fields(cls)})


def timed_batches(batches: Iterator[tuple[Tensor, ...]], progress: EpochProgress) -> Iterator[tuple[Tensor, ...]]:
    """Yield from `batches`, adding the time spent waiting for each batch to progress.wait_s."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        progress.wait_s += time.perf_counter() - start
        yield batch


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next step boundary; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "\nCtrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to abort without saving)",
            file=sys.stderr,
        )

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
