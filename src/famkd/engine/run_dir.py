"""The layout of a run folder: one object that knows where each file of a run lives.

config.yaml                 the merged config, every method option included
metrics.jsonl               one record per completed epoch (see famkd.engine.run_log)
summary.json                best/last accuracy, epochs, wall time, parameter counts, status
tensorboard/                TensorBoard scalars (when run.tensorboard)
checkpoints/last.pt         full training state after every epoch (or after Ctrl-C, marked
                            with `partial_epoch`); see famkd.engine.checkpoint
checkpoints/best.pt         the same, for the epoch with the best test top-1 so far
student_last.pt, student_best.pt
                            the student alone as a plain state dict (load it with
                            create_model(name).load_state_dict(torch.load(path)))
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from famkd.config import Config, config_with_overrides
from famkd.distill import needs_teacher
from famkd.engine.checkpoint import load_checkpoint
from famkd.files import write_text_atomic

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
LAST_CHECKPOINT = "checkpoints/last.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"
STUDENT_LAST = "student_last.pt"
STUDENT_BEST = "student_best.pt"


class RunDir:
    """The files of the run folder at `path` (nothing is created until something is written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def checkpoint(self, best: bool = False) -> Path:
        """checkpoints/best.pt or checkpoints/last.pt."""
        return self.path / (BEST_CHECKPOINT if best else LAST_CHECKPOINT)

    def student(self, best: bool = False) -> Path:
        """The exported student: student_best.pt or student_last.pt."""
        return self.path / (STUDENT_BEST if best else STUDENT_LAST)

    def has_checkpoint(self) -> bool:
        return self.checkpoint().is_file()

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json (pretty-printed, atomically)."""
        write_text_atomic(self.summary_file, json.dumps(summary, indent=2) + "\n")


def default_run_dir(cfg: Config) -> str:
    """runs/<method>/<teacher>_<student>-<timestamp> (runs/vanilla/<student>-<timestamp> for teachers)."""
    distils = needs_teacher(cfg.method) and cfg.teacher.name
    pair = f"{cfg.teacher.name}_{cfg.student}" if distils else cfg.student
    return str(Path("runs") / cfg.method / f"{pair}-{datetime.now():%Y%m%d-%H%M%S}")


def resume_point(run_dir: str | os.PathLike, overrides: Iterable[str] = ()) -> tuple[Config, dict[str, Any]]:
    """The last checkpoint of `run_dir` (read once) and its saved config with `overrides` applied."""
    checkpoint = load_checkpoint(RunDir(run_dir).checkpoint())
    cfg = config_with_overrides(checkpoint["config"], overrides)
    cfg.run.dir = str(run_dir)
    return cfg, checkpoint


def resume_config(run_dir: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """The config saved in `run_dir`'s last checkpoint, with `key=value` overrides applied."""
    return resume_point(run_dir, overrides)[0]
