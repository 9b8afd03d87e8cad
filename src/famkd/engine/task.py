"""The seam between the engine and a task: what differs between classification and detection.

A task (famkd.classification.TASK, famkd.detection.task.TASK) builds its data and its distiller, says what
its batches hand the distiller and what its training metrics count, evaluates the student, and names the
fields of its summary. The engine (famkd.engine.trainer) owns everything else: the loop over epochs or
iterations, the step, mixed precision, the optimiser and schedule, the non-finite check, device-side
accumulation, logs, TensorBoard, checkpoints, exact resume, Ctrl-C, DDP and the run folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from famkd.data import Loader
from famkd.distill import Distiller
from famkd.engine.distributed import Processes
from famkd.engine.progress import RunState

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass
class TaskData:
    """A task's data as the engine sees it: the training loader, what evaluation reads (`eval_source`: a loader
    or a dataset), the training set (its size and labels size a distiller's memory), the header lines that
    describe the data, the training data's description for the summary, and the processes sharing it."""

    train_loader: Loader
    eval_source: Any
    train_set: Any
    lines: list[str] = field(default_factory=list)
    description: str = ""
    processes: Processes = field(default_factory=Processes)


class Task:
    """What a task provides (see the module docstring); `cfg` is the task's root config. The methods that
    raise must be given; the others default to a task without training metrics, teacher evaluation or
    per-epoch extras."""

    name: str  # "classification", "detection": checkpoints record it
    command: str  # the command that trains it, for resume hints ("famkd train")
    main_metric: str  # the evaluation's key whose highest value is the best (checkpoints/best.pt)
    loss_dtype: torch.dtype = torch.float32  # of the device-side loss sums

    def config_with_overrides(self, values: dict, overrides: Iterable[str]) -> Any:
        """The task's config from a saved dict (a checkpoint's) with `key=value` overrides."""
        raise NotImplementedError

    def default_run_dir(self, cfg: Any) -> str:
        raise NotImplementedError

    def check(self, cfg: Any) -> None:
        """What must hold before anything is built (e.g. a teacher checkpoint for a distillation method)."""

    def build_data(self, cfg: Any, processes: Processes, device: torch.device) -> TaskData:
        raise NotImplementedError

    def build_distiller(self, cfg: Any, data: TaskData, resumed: bool) -> Distiller:
        """The distiller on the CPU; `resumed`: its weights come from a checkpoint (nothing to fetch)."""
        raise NotImplementedError

    def step_arguments(self, batch: Any, position: int) -> tuple[tuple[Any, ...], int]:
        """(the distiller's forward arguments for `batch` at `position`, the batch's images on this process)."""
        raise NotImplementedError

    def train_counts(self, outputs: Any, batch: Any) -> dict[str, Tensor]:
        """Device-side counts of one step for the training metrics (e.g. top-1 hits)."""
        return {}

    def train_metrics(self, counts: dict[str, float], images: float) -> dict[str, float]:
        """The training metrics of a period from its summed counts."""
        return {}

    def evaluate(self, cfg: Any, distiller: Distiller, data: TaskData, autocast: Autocast) -> dict[str, Any]:
        """The student's evaluation as record fields (the same numbers on every process)."""
        raise NotImplementedError

    def evaluate_teacher(
        self, cfg: Any, distiller: Distiller, data: TaskData, autocast: Autocast, say: Callable[[str], None]
    ) -> dict[str, Any] | None:
        """The teacher's evaluation before training (None: the task has none), saying what it does first."""
        return None

    def metric_text(self, record: dict[str, Any]) -> str:
        """The task's metrics of a record for its console line."""
        raise NotImplementedError

    def epoch_extras(
        self, cfg: Any, distiller: Distiller, data: TaskData, run_dir: Any, epoch: int, main: bool
    ) -> dict[str, Any]:
        """Extra fields of epoch `epoch`'s record (and files beside it written by `main`), e.g. FAM gammas."""
        return {}

    def summary(self, cfg: Any, state: RunState, data: TaskData) -> dict[str, Any]:
        """The task's fields of summary.json."""
        raise NotImplementedError

    def student_card(self, cfg: Any, train_set: Any) -> dict[str, Any]:
        """What running the trained student needs (its architecture, classes and their names, input size,
        normalisation), written to the run folder's student.json for `famkd export` and `famkd predict`."""
        return {}

    def done_line(self, summary: dict[str, Any]) -> str:
        """The line process 0 prints when the run completes."""
        raise NotImplementedError
