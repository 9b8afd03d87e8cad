"""Progress of a training period, where a run stands, and stop requests: what the trainer keeps between host syncs.

`PeriodProgress` keeps a period's running loss sums, task counts and first non-finite step on the
device, so that training steps never wait for the host; it is saved in a checkpoint taken mid-period.
`RunState` is the rest of a run's bookkeeping. `StopRequest` turns Ctrl-C into a request to stop at the
next step boundary.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from famkd.engine.distributed import all_reduce_sum
from famkd.errors import NonFiniteLossError


@dataclasses.dataclass
class PeriodProgress:
    """Running totals of one period (an epoch, or a log interval of an iteration schedule), kept on the device
    so that steps never wait for the host.

    loss_sums: per term, the sum over images of the term (batch mean x batch size), in `dtype`;
    counts: per task metric, its running count (e.g. "correct": top-1 hits on the training batches);
    first_bad_step: per term, the first global step (from 1) whose value was not finite, else -1.
    """

    epoch: int
    steps_done: int = 0
    images_seen: int = 0
    loss_sums: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    counts: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    first_bad_step: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    wait_s: float = 0.0
    elapsed_s: float = 0.0
    dtype: torch.dtype = torch.float32

    def add(self, losses: dict[str, Tensor], counts: dict[str, Tensor], images: int, global_step: int) -> None:
        """Accumulate one step of `images` images (device ops only)."""
        for name, value in losses.items():
            value = value.detach().to(self.dtype)
            if name not in self.loss_sums:
                self.loss_sums[name] = torch.zeros((), dtype=self.dtype, device=value.device)
                self.first_bad_step[name] = torch.full((), -1, dtype=torch.int64, device=value.device)
            self.loss_sums[name] += value * images
            first_bad = self.first_bad_step[name]
            newly_bad = ~torch.isfinite(value) & (first_bad < 0)
            self.first_bad_step[name] = torch.where(newly_bad, global_step, first_bad)
        for name, count in counts.items():
            self.counts[name] = count if name not in self.counts else self.counts[name] + count
        self.images_seen += images
        self.steps_done += 1

    def totals(self) -> tuple[dict[str, float], dict[str, float], float]:
        """(loss sums, counts, images) so far over every training process (one host sync)."""
        names, count_names = list(self.loss_sums), list(self.counts)
        device = next(iter(self.loss_sums.values())).device
        stacked = [self.loss_sums[n].double() for n in names] + [self.counts[n].double() for n in count_names]
        stacked.append(torch.tensor(float(self.images_seen), dtype=torch.float64, device=device))
        *sums, images = all_reduce_sum(torch.stack(stacked)).tolist()
        return dict(zip(names, sums)), dict(zip(count_names, sums[len(names) :])), images

    def read(self) -> tuple[dict[str, float], dict[str, float], float]:
        """(loss_<term> means per image, counts, images) so far over every training process (one host sync)."""
        assert self.steps_done, "read() before the first step"
        sums, counts, images = self.totals()
        return {f"loss_{n}": v / images for n, v in sums.items()}, counts, images

    def first_non_finite(self, means: dict[str, float]) -> tuple[str, float, int] | None:
        """(term, its mean, the global step it first went bad) of the earliest term that became NaN or infinite,
        or None; `means` are those of `read()`."""
        bad = [name for name in self.loss_sums if not math.isfinite(means[f"loss_{name}"])]
        if not bad:
            return None
        first_steps = {name: int(self.first_bad_step[name]) for name in bad}
        name = min(bad, key=lambda term: first_steps[term])
        return name, means[f"loss_{name}"], first_steps[name]

    def raise_if_non_finite(self, means: dict[str, float], where: Callable[[int], str], kept: str) -> None:
        """NonFiniteLossError naming the first term that went bad, `where(its global step)` and `kept` (what the
        run keeps), when a term is NaN or infinite."""
        bad = self.first_non_finite(means)
        if bad is None:
            return
        name, value, bad_step = bad
        raise NonFiniteLossError(
            f"loss term {name!r} became {'nan' if math.isnan(value) else 'infinite'} at {where(bad_step)}; "
            f"training stopped and {kept}. Try a lower train.lr or distill option weight, or amp=off."
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "steps_done": self.steps_done,
            "images_seen": self.images_seen,
            "loss_sums": {n: v.cpu() for n, v in self.loss_sums.items()},
            "counts": {n: v.cpu() for n, v in self.counts.items()},
            "first_bad_step": {n: v.cpu() for n, v in self.first_bad_step.items()},
            "wait_s": self.wait_s,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def for_process(cls, state: dict[str, Any], rank: int, world_size: int, device: torch.device) -> PeriodProgress:
        """This process's progress from a checkpoint's `partial_period`: with several processes it holds each one's
        (`processes`, by rank), so that a resume on as many processes continues each process's own sums and ends
        exactly like the uninterrupted run; on another number of processes the totals are shared out evenly."""
        shares = state.get("processes")
        if not shares:  # one process wrote it (or an older famkd, which saved shares made even)
            return cls.from_state_dict(state, device)
        if len(shares) == world_size:
            return cls.from_state_dict(shares[rank], device)
        even = dict(shares[0])
        for key in ("loss_sums", "counts"):
            even[key] = {name: sum(share[key][name] for share in shares) / world_size for name in shares[0][key]}
        even["first_bad_step"] = {
            name: torch.tensor(earliest_bad([int(share["first_bad_step"][name]) for share in shares]))
            for name in shares[0]["first_bad_step"]
        }
        even["images_seen"] = round(sum(share["images_seen"] for share in shares) / world_size)
        return cls.from_state_dict(even, device)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> PeriodProgress:
        def to_device(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {name: value.to(device) for name, value in tensors.items()}

        sums = to_device(state["loss_sums"])
        dtype = next(iter(sums.values())).dtype if sums else torch.float32
        return cls(
            epoch=state["epoch"],
            steps_done=state["steps_done"],
            images_seen=state["images_seen"],
            loss_sums=sums,
            counts=to_device(state["counts"]),
            first_bad_step=to_device(state["first_bad_step"]),
            wait_s=state["wait_s"],
            elapsed_s=state["elapsed_s"],
            dtype=dtype,
        )


def earliest_bad(steps: list[int]) -> int:
    """The earliest of `steps` that went bad (-1: none did)."""
    bad = [step for step in steps if step >= 0]
    return min(bad) if bad else -1


@dataclasses.dataclass
class RunState:
    """Where a run stands, saved in every checkpoint: the epochs completed and the batches taken of the next one,
    the optimiser steps taken, the best value of the task's main metric and where it was reached (epoch or
    iteration, 0: none yet), the last evaluation, the teacher's, and the wall time of the earlier sessions."""

    epoch: int = 0
    epoch_steps: int = 0
    global_step: int = 0
    best: float | None = None
    best_at: int = 0
    last_eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher_eval: dict[str, Any] | None = None
    wall_time_s: float = 0.0

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> RunState:
        return cls(**{field.name: checkpoint[field.name] for field in dataclasses.fields(cls)})


def timed_batches(batches: Iterator[Any], progress: Callable[[], PeriodProgress]) -> Iterator[Any]:
    """Yield from `batches`, adding the time spent waiting for each batch to the wait_s of `progress()` (the
    period the batch belongs to)."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        progress().wait_s += time.perf_counter() - start
        yield batch


PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")  # what schedulers send before they stop a job (SLURM: --signal)


class StopRequest:
    """Turns the first Ctrl-C, or one of `signals` (a scheduler's preemption), into a request to stop at the next
    step boundary; a second Ctrl-C aborts. The handlers found are put back on exit (where no other was set since)."""

    def __init__(self, signals: tuple[str, ...] = PREEMPTION_SIGNALS) -> None:
        self.requested = False
        self.by_signal = ""  # the preemption signal that asked, "" for Ctrl-C
        self.signals = tuple(getattr(signal, name) for name in ("SIGINT", *signals) if hasattr(signal, name))
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.signals}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGINT:
            self.requested, self.by_signal = True, signal.Signals(signum).name
            tqdm.write(f"\n{self.by_signal}: stopping after this step and saving a checkpoint", file=sys.stderr)
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "\nCtrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to abort without saving)",
            file=sys.stderr,
        )

    @property
    def code(self) -> int:
        """0: no request; 1: Ctrl-C; 2, 3, ...: the preemption signal that asked (its place in `signals`, from 2),
        so that processes agree on a request and on what asked by taking the largest code."""
        if not self.requested:
            return 0
        names = [signal.Signals(number).name for number in self.signals]
        return names.index(self.by_signal) + 1 if self.by_signal else 1

    def adopt(self, code: int) -> None:
        """Take the request another process received (`code`, as `code` says), where this one has none."""
        if code and not self.requested:
            self.requested = True
            self.by_signal = signal.Signals(self.signals[code - 1]).name if code > 1 else ""

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            if previous is not None and signal.getsignal(number) == self._handle:  # not replaced since
                signal.signal(number, previous)
