"""Detection as the engine sees it (famkd.engine.task): COCO data, Faster R-CNN distillers, COCO box AP.

`famkd detect train` runs it on the engine's iteration schedule (famkd.engine.schedule): a metrics record
every `train.log_interval` iterations (iteration, global_step (= iteration), epoch (the data epochs
completed), lr (the next iteration's), loss, loss_<term> (the interval's mean of each term, the student's
four detection losses and the method's term), weight_<term>, interval_time_s, and at an evaluation AP,
AP50, AP75, APs, APm, APl), COCO AP every `train.eval_every` iterations and at the end, checkpoints/last.pt
every `train.checkpoint_every` iterations, at every evaluation and on Ctrl-C.

Exact resume: the grouped sampler's batches and each sample's flip follow from (seed, epoch, index), so a
resumed run starts the epoch after the batches already taken (their images are not read) and restores
the RNG states: where the kernels are deterministic (the CPU) the run continues bit for bit, with any
number of data workers.

Several processes (torchrun): each process loads its 1/N of every global batch (the grouped sampler deals
the whole batches out); an evaluation collects each process's share of the val images
(`train.eval_batch_size` images a batch on each process), gathers the detections to every process and
scores them all at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

import torch
import torch.distributed as dist
from tqdm import tqdm

from famkd.data import LoaderSettings, build_datasets, build_loader
from famkd.detection.coco import Batch, CocoDetection, CocoLoader, CocoOptions
from famkd.detection.config import TASK as TASK_NAME
from famkd.detection.config import DetectionConfig, detection_config_with_overrides
from famkd.detection.evaluation import METRICS, collect_detections, evaluate_detections
from famkd.detection.models import build_detector, load_teacher
from famkd.distill import Distiller, create_distiller, needs_teacher
from famkd.engine.distributed import Processes
from famkd.engine.progress import RunState
from famkd.engine.run_dir import timestamped_run_dir
from famkd.engine.task import Autocast, Task, TaskData
from famkd.engine.trainer import train as train_task
from famkd.errors import FamkdError
from famkd.weights import verify_sha256


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an AP without ground truth to score (NaN) is written as null."""
    return value if math.isfinite(value) else None


def evaluate_detector(
    model: torch.nn.Module, dataset: CocoDetection, batch_size: int, workers: int, num_replicas: int = 1, rank: int = 0
) -> dict[str, float]:
    """COCO box AP (percent, METRICS) of `model` on the whole of `dataset`. With several processes each
    detects its share of the images, every process gathers all the detections and scores them (the same
    numbers on every process). Process 0 shows a progress bar on a terminal."""
    device = next(model.parameters()).device
    loader = CocoLoader(
        dataset, batch_size, train=False, workers=workers, device=device, num_replicas=num_replicas, rank=rank
    )
    batches = tqdm(loader, desc="COCO eval", unit="batch", leave=False, disable=None if rank == 0 else True)
    detections = collect_detections(model, batches)
    if num_replicas > 1:
        shares: list[Any] = [None] * num_replicas
        dist.all_gather_object(shares, detections)
        detections = {key: value for share in shares for key, value in share.items()}
    return evaluate_detections(dataset.coco, detections)


class DetectionTask(Task):
    """Lists of images and targets; the distiller's outputs are None (no training metric); AP is the main metric."""

    name = TASK_NAME
    command = "famkd detect train"
    main_metric = "AP"
    loss_dtype = torch.float64  # the interval means of the logged terms, summed as the host would

    def config_with_overrides(self, values: dict, overrides: Iterable[str]) -> DetectionConfig:
        return detection_config_with_overrides(values, overrides)

    def default_run_dir(self, cfg: DetectionConfig) -> str:
        """runs/detection/<method>/<teacher>_<student>-<timestamp> (without a teacher: <student>-<timestamp>)."""
        pair = f"{cfg.teacher.name}_{cfg.student}" if needs_teacher(cfg.method, TASK_NAME) else cfg.student
        return timestamped_run_dir("detection", cfg.method, pair)

    def build_data(self, cfg: DetectionConfig, processes: Processes, device: torch.device) -> TaskData:
        train_set, val_set = build_datasets(cfg.data)
        settings = LoaderSettings(
            seed=cfg.run.seed, device=device, num_replicas=processes.world_size, rank=processes.rank
        )
        loader = build_loader(train_set, cfg.data, processes.batch_share(cfg.train.batch_size), True, settings)
        if len(loader) == 0:
            shared = (
                f" (shared out as whole batches to {processes.world_size} processes)" if processes.distributed else ""
            )
            raise FamkdError(
                f"train.batch_size={cfg.train.batch_size} exceeds every aspect group of {train_set.description}{shared}"
            )
        lines = [f"train data: {train_set.description}"]
        return TaskData(loader, val_set, train_set, lines, train_set.description, processes)

    def build_distiller(self, cfg: DetectionConfig, data: TaskData, resumed: bool) -> Distiller:
        coco = cast(CocoOptions, cfg.data)
        categories, size = data.train_set.categories, (coco.min_size, coco.max_size)
        # A resumed run loads its student from the checkpoint: no ImageNet weights to fetch.
        init = "none" if resumed else cfg.train.student_init
        train = cfg.train
        student = build_detector(
            cfg.student,
            categories.num_classes,
            *size,
            backbone_init=init,
            frozen_bn=train.frozen_bn,
            rpn_smooth_l1_beta=train.rpn_smooth_l1_beta,
            box_smooth_l1_beta=train.box_smooth_l1_beta,
        )
        teacher = None
        if needs_teacher(cfg.method, TASK_NAME):
            if cfg.teacher.sha256:
                verify_sha256(cfg.teacher.checkpoint, cfg.teacher.sha256)
            teacher = load_teacher(cfg.teacher.name, cfg.teacher.checkpoint, categories.ids, *size)
        return create_distiller(cfg.method, task=TASK_NAME, student=student, teacher=teacher, **cfg.distill)

    def step_arguments(self, batch: Batch, position: int) -> tuple[tuple[Any, ...], int]:
        images, targets = batch
        return (images, targets, position), len(images)

    def evaluate(self, cfg: DetectionConfig, distiller: Distiller, data: TaskData, autocast: Autocast) -> dict:
        """COCO AP of the student on the whole val split, the images shared out between the processes."""
        processes, workers = data.processes, cast(CocoOptions, cfg.data).workers
        metrics = evaluate_detector(
            distiller.student,
            data.eval_source,
            cfg.train.eval_batch_size,
            workers,
            processes.world_size,
            processes.rank,
        )
        return {name: finite_or_none(value) for name, value in metrics.items()}

    def metric_text(self, record: dict[str, Any]) -> str:
        return "".join(f"{name} {record[name]}  " for name in METRICS if name in record)

    def summary(self, cfg: DetectionConfig, state: RunState, data: TaskData) -> dict[str, Any]:
        return {
            "iterations": cfg.train.iterations,
            "iteration": state.global_step,
            "best_AP": state.best,
            "best_iteration": state.best_at or None,
            **{name: state.last_eval.get(name) for name in METRICS},
            "data": data.description,
        }

    def student_card(self, cfg: DetectionConfig, train_set: CocoDetection) -> dict[str, Any]:
        categories, coco = train_set.categories, cast(CocoOptions, cfg.data)
        return {
            "task": self.name,
            "arch": cfg.student,
            "num_classes": categories.num_classes,
            "class_names": ["background", *categories.names],  # label 0, then labels 1..C
            "category_ids": [0, *categories.ids],
            "min_size": coco.min_size,  # the model resizes RGB images in [0, 1] of any size itself
            "max_size": coco.max_size,
            "channel_order": "RGB",
            "dataset": cfg.data.dataset,
        }

    def done_line(self, summary: dict[str, Any]) -> str:
        metrics = ", ".join(f"{name} {summary[name]}" for name in METRICS)
        return f"done: {metrics} at iteration {summary['iteration']}; run dir {summary['run_dir']}"


TASK = DetectionTask()
train_detection = partial(train_task, TASK)  # (cfg | None, resume_dir=None, *, overrides=(), on_step=None) -> summary
