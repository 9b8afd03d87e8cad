"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard scalars, the progress bar and console lines.

metrics.jsonl holds one JSON object per period: per epoch in an epoch schedule, per log interval in an
iteration schedule (famkd.engine.schedule):
  epoch (epoch schedule: the epoch completed) or iteration, global_step, epoch (iteration schedule: the data
  epochs completed), lr, loss (sum of the terms), loss_<term> (each term's mean over the period, per image),
  weight_<term> (the weight of each term a warm-up scales, at the period's end), the task's training
  metrics (classification: train_acc), the timing (epoch schedule: epoch_time_s, images_per_s,
  data_wait_fraction, the time spent waiting for the loader / training-loop time; iteration schedule:
  interval_time_s), and after an evaluation its fields (classification: test_acc (top-1), test_top5,
  test_loss, test_images; detection: AP, AP50, AP75, APs, APm, APl). Accuracies are percentages.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import timedelta
from typing import Any

from tqdm import tqdm

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
        self._keep_records_up_to(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = {"purge_step": resume_step + 1} if resume_step else {}
            self.writer = SummaryWriter(str(self.run_dir.tensorboard_dir), **purge)

    def _keep_records_up_to(self, global_step: int) -> None:
        """Drop records after `global_step` (written before an interruption), so a resumed run has no duplicates."""
        records = [record for record in read_metrics(self.run_dir.path) if record["global_step"] <= global_step]
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


class ProgressDisplay:
    """A tqdm bar (steps, ETA; loss, the task's training metric, img/s as postfix) on a terminal, and where stderr
    is no terminal (log files, pipes) a plain line at most every `line_every_s` seconds."""

    def __init__(
        self, total: int, description: str, initial: int = 0, line_every_s: float = 60.0, enabled: bool = True
    ):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit="step",
            leave=False,
            dynamic_ncols=True,
            disable=None if enabled else True,
        )
        self.enabled = enabled
        self.total, self.description = total, description
        self.steps = self.first_step = initial
        self.start = self.last_line = time.perf_counter()
        self.line_every_s = line_every_s

    def step(self) -> None:
        self.bar.update(1)
        self.steps += 1

    def show(self, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        """Show the running loss, the task's training metrics (percentages) and the throughput."""
        shown_metrics = {name.removeprefix("train_"): f"{value:.1f}%" for name, value in metrics.items()}
        if not self.bar.disable:
            self.bar.set_postfix({"loss": f"{loss:.4f}", **shown_metrics, "img_s": f"{images_per_s:.0f}"})
            return
        now = time.perf_counter()
        if not self.enabled or now - self.last_line < self.line_every_s:
            return
        self.last_line = now
        seconds_per_step = (now - self.start) / (self.steps - self.first_step)
        metric_text = "".join(f"  {name} {value}" for name, value in shown_metrics.items())
        tqdm.write(
            f"{self.description} step {self.steps}/{self.total}  loss {loss:.4f}{metric_text}  "
            f"{images_per_s:.0f} img/s  ETA {seconds_per_step * (self.total - self.steps):.0f} s"
        )

    def close(self) -> None:
        self.bar.close()


def format_record(record: dict, unit: str, total: int, metric_text: str, seconds_per_step: float) -> str:
    """One console line per record: where, the loss and its terms (and their warm-up weights), the task's
    metrics, the lr and the timing."""
    terms = ", ".join(f"{key[5:]} {value:.4f}" for key, value in record.items() if key.startswith("loss_"))
    weights = ", ".join(f"{key[7:]} {value:.4g}" for key, value in record.items() if key.startswith("weight_"))
    weights = f"  weight {weights}" if weights else ""
    if unit == "epoch":
        timing = (
            f"{record['epoch_time_s']:.1f}s  {record['images_per_s']:.0f} img/s  "
            f"data wait {100 * record['data_wait_fraction']:.1f}%"
        )
    else:
        remaining_s = seconds_per_step * (total - record["iteration"])
        timing = f"{seconds_per_step:.2f} s/it  ETA {timedelta(seconds=round(remaining_s))}"
    return (
        f"{unit} {record[unit]}/{total}  loss {record['loss']:.4f} ({terms}){weights}  {metric_text}"
        f"lr {record['lr']:.4g}  {timing}"
    )
