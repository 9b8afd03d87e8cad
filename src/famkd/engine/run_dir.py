"""The layout of a run folder: one object that knows where each file of a run lives.

config.yaml                 the merged config, every method option included
student.json                what running the student needs: architecture, classes and their names,
                            input size, normalisation (famkd.deploy reads it)
metrics.jsonl               one record per epoch or log interval (see famkd.engine.run_log)
summary.json                status, best/last metrics, progress, wall time, parameter counts
tensorboard/                TensorBoard scalars (when run.tensorboard)
checkpoints/last.pt         full training state after every epoch or evaluation, every
                            train.checkpoint_every steps and after Ctrl-C (then with
                            `partial_period`); see famkd.engine.checkpoint
checkpoints/last.pt.sha256  its SHA-256, checked at resume
checkpoints/previous-1.pt   the checkpoint before it (run.keep_checkpoints - 1 of them are kept)
checkpoints/best.pt         the same, at the evaluation with the best main metric so far
                            (classification: test top-1; detection: AP)
student_last.pt, student_best.pt
                            the student alone as a plain state dict (load it with
                            create_model(name).load_state_dict(torch.load(path)))
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from famkd.files import write_text_atomic

CONFIG_FILE = "config.yaml"
STUDENT_CARD = "student.json"
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
    def student_card(self) -> Path:
        return self.path / STUDENT_CARD

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


def timestamped_run_dir(*parts: str) -> str:
    """runs/<parts...>-<timestamp>, e.g. runs/fam_kd/resnet56_resnet20-20261207-211500."""
    *folders, name = parts
    return str(Path("runs", *folders) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}")
