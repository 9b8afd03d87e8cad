"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard scalars, summary.json, progress bar.

metrics.jsonl holds one JSON object per completed epoch:
  epoch, global_step, lr, loss (sum of the terms), loss_<term> (each term's epoch mean, per image),
  train_acc, test_acc (top-1), test_top5, test_loss, epoch_time_s, images_per_s,
  data_wait_fraction (time spent waiting for the loader / training-loop time).
Accuracies are percentages.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
from tqdm import tqdm

from famkd.config import Config
from famkd.data import Dataset
from famkd.distill import Distiller
from famkd.engine.run_dir import RunDir
from famkd.files import write_text_atomic


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every epoch record of a run's metrics.jsonl, in order ([] when there is none)."""
    path = RunDir(run_dir).metrics_file
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Appends epoch records to metrics.jsonl and mirrors scalars to TensorBoard.

    Every TensorBoard scalar uses the global step as its x axis, so that a resumed run can
    purge the events written after its checkpoint (`resume_step`). A log that is not `enabled` (on
    every training process but the first) writes nothing.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool,
        resume_epoch: int = 0,
        resume_step: int = 0,
        enabled: bool = True,
    ):
        self.run_dir = RunDir(run_dir)
        self.metrics_path = self.run_dir.metrics_file
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        self._keep_epochs_up_to(resume_epoch)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = {"purge_step": resume_step + 1} if resume_epoch or resume_step else {}
            self.writer = SummaryWriter(str(self.run_dir.tensorboard_dir), **purge)

    def _keep_epochs_up_to(self, epoch: int) -> None:
        """Drop records after `epoch` (written before an interruption), so a resumed run has no duplicates."""
        records = [record for record in read_metrics(self.run_dir.path) if record["epoch"] <= epoch]
        write_text_atomic(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))

    def log_epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["global_step"]
            for key, value in record.items():
                if key not in ("epoch", "global_step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, step)
            self.writer.flush()

    def log_scalars(self, scalars: dict[str, float], global_step: int) -> None:
        """Scalars logged at progress-bar intervals (train/loss, train/acc, ...)."""
        if self.writer is not None:
            for key, value in scalars.items():
                if math.isfinite(value):
                    self.writer.add_scalar(key, value, global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class EpochProgressDisplay:
    """Progress of one epoch: a tqdm bar (steps, ETA; loss, acc, img/s as postfix) on a terminal,
    and where stderr is no terminal (log files, pipes) a plain line at most every `line_every_s` seconds.
    """

    def __init__(
        self, total: int, epoch: int, epochs: int, initial: int = 0, line_every_s: float = 60.0, enabled: bool = True
    ):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {epoch}/{epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
            disable=None if enabled else True,
        )
        self.enabled = enabled
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.steps = self.first_step = initial
        self.start = self.last_line = time.perf_counter()
        self.line_every_s = line_every_s

    def step(self) -> None:
        self.bar.update(1)
        self.steps += 1

    def show(self, loss: float, accuracy: float, images_per_s: float) -> None:
        """Show the running loss, train accuracy (%) and throughput."""
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.1f}%", img_s=f"{images_per_s:.0f}")
            return
        now = time.perf_counter()
        if not self.enabled or now - self.last_line < self.line_every_s:
            return
        self.last_line = now
        seconds_per_step = (now - self.start) / (self.steps - self.first_step)
        tqdm.write(
            f"epoch {self.epoch}/{self.epochs} step {self.steps}/{self.total}  loss {loss:.4f}  "
            f"acc {accuracy:.1f}%  {images_per_s:.0f} img/s  ETA {seconds_per_step * (self.total - self.steps):.0f} s"
        )

    def close(self) -> None:
        self.bar.close()


def format_epoch_line(record: dict, epochs: int) -> str:
    """One line per epoch for the console."""
    terms = ", ".join(f"{key[5:]} {value:.4f}" for key, value in record.items() if key.startswith("loss_"))
    return (
        f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f} ({terms})  "
        f"train {record['train_acc']:.2f}%  test {record['test_acc']:.2f}% (top-5 {record['test_top5']:.2f}%)  "
        f"lr {record['lr']:.4g}  {record['epoch_time_s']:.1f}s  {record['images_per_s']:.0f} img/s  "
        f"data wait {100 * record['data_wait_fraction']:.1f}%"
    )


def run_header(
    cfg: Config,
    distiller: Distiller,
    datasets: tuple[Dataset, Dataset],
    device: torch.device,
    steps_per_epoch: int,
    resumed_at: tuple[int, int],
    processes: int = 1,
) -> list[str]:
    """The lines a run prints before training: models, data, device, and where it resumes
    (`resumed_at`: (epoch, step within it) of a mid-epoch checkpoint, (last completed epoch, 0) otherwise)."""
    student_params = sum(p.numel() for p in distiller.student.parameters())
    teacher = f", teacher {cfg.teacher.name or '?'} ({cfg.teacher.checkpoint})" if distiller.teacher is not None else ""
    sharing = f", {processes} processes sharing the global batch of {cfg.train.batch_size}" if processes > 1 else ""
    lines = [
        f"famkd train: method {cfg.method}, student {cfg.student} ({student_params / 1e6:.3f}M params), "
        f"heads {distiller.num_head_parameters() / 1e6:.3f}M params{teacher}",
        f"train data: {datasets[0].description}",
        f"test data: {datasets[1].description}",
        f"device {device}, amp {cfg.amp}, {steps_per_epoch} steps/epoch{sharing}, run dir {cfg.run.dir}",
    ]
    epoch, step = resumed_at
    if step:
        lines.append(f"resuming epoch {epoch} after step {step}")
    elif epoch:
        lines.append(f"resuming after epoch {epoch}")
    return lines
