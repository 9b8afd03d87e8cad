"""`famkd detect train`: an iteration-based detection training run with checkpoints, exact resume and COCO AP.

The run folder (famkd.engine.run_dir.RunDir) holds config.yaml, metrics.jsonl (one record per log interval
and per evaluation: iteration, global_step (= iteration), epoch, lr, loss, loss_<term> (the interval's
mean of each term), interval_time_s, and at an evaluation AP, AP50, AP75, APs, APm, APl), TensorBoard
scalars, checkpoints/last.pt (every `train.checkpoint_every` iterations, at the end and on Ctrl-C),
student_last.pt (the student's state dict, a torchvision FasterRCNN's) and summary.json.

Exact resume: a checkpoint holds the model, head, optimiser and schedule states, the RNG states, the data
epoch and the number of its batches already taken, and the partial sums of the current log interval. The
grouped sampler's batches and each sample's flip follow from (seed, epoch, index), so a resumed run starts
the epoch after the batches already taken (their images are not read) and restores the RNG states: where the
kernels are deterministic (the CPU) the run continues bit for bit, with any number of data workers.

Several processes: under `torchrun --nproc_per_node N -m famkd detect train ...` each process joins the
group (famkd.engine.distributed), takes the GPU of its local rank, loads its 1/N of every global batch
(`train.batch_size` is the global batch: it must divide by N; the grouped sampler deals the whole batches
out) and trains a DistributedDataParallel copy of the student and the heads, the frozen teacher left out.
The logged loss terms are the means over the processes' images; process 0 alone prints and writes the run
folder, every process resumes from checkpoints/last.pt. An evaluation collects each process's share of
the val images (`train.eval_batch_size` images a batch on each process), gathers the detections to every
process and scores them all at once. Ctrl-C is agreed between the processes at the log intervals.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from famkd.config import config_to_dict, dump_config
from famkd.detection.coco import Batch, CocoDetection, CocoLoader, load_coco
from famkd.detection.config import (
    DetectionConfig,
    detection_config_with_overrides,
)
from famkd.detection.distill import DetectionDistiller, create_detection_distiller, needs_teacher
from famkd.detection.evaluation import METRICS, collect_detections, evaluate_detections
from famkd.detection.models import build_detector, count_parameters, load_teacher
from famkd.engine.checkpoint import (
    capture_rng_state,
    library_versions,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from famkd.engine.device import resolve_device
from famkd.engine.distributed import (
    all_reduce_sum,
    join_processes,
    leave_processes,
    process_device,
    wrap_for_training,
)
from famkd.engine.progress import StopRequest
from famkd.engine.run_dir import RunDir
from famkd.engine.run_log import RunLog, read_metrics
from famkd.engine.seeding import seed_everything
from famkd.engine.step import optimizer_step
from famkd.errors import FamkdError, NonFiniteLossError, TrainingInterrupted
from famkd.files import write_text_atomic

StepHook = Callable[[int], None]
NO_LOGITS = torch.empty(0)


class IterationRunLog(RunLog):
    """RunLog whose records are kept up to a global step (an iteration) when a run resumes, not an epoch."""

    def _keep_epochs_up_to(self, epoch: int) -> None:
        # Built with resume_epoch = resume_step = the checkpoint's iteration: keep the records up to it.
        records = [record for record in read_metrics(self.run_dir.path) if record["global_step"] <= epoch]
        write_text_atomic(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))


def lr_factor(iteration: int, steps: list[int], decay: float, warmup_iters: int, warmup_factor: float) -> float:
    """Detectron2's WarmupMultiStepLR: linear warm-up from warmup_factor, then x decay at each of `steps`.

    `iteration` counts the iterations already taken (0 for the first one)."""
    warmup = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warmup = warmup_factor * (1 - alpha) + alpha
    return warmup * decay ** bisect.bisect_right(sorted(steps), iteration)


def default_detection_run_dir(cfg: DetectionConfig) -> str:
    """runs/detection/<method>/<teacher>_<student>-<timestamp> (without a teacher: <student>-<timestamp>)."""
    pair = f"{cfg.teacher.backbone}_{cfg.student}" if needs_teacher(cfg.method) else cfg.student
    return str(Path("runs") / "detection" / cfg.method / f"{pair}-{datetime.now():%Y%m%d-%H%M%S}")


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


class DetectionTrainer:
    """One training run of `cfg`, fresh or resumed from `checkpoint` (a famkd detection checkpoint)."""

    def __init__(self, cfg: DetectionConfig, checkpoint: dict[str, Any] | None = None, on_step: StepHook | None = None):
        self.cfg = cfg
        self.on_step = on_step
        self.processes = join_processes(cfg.device)  # one process, or one of those torchrun started
        self.main = self.processes.is_main  # process 0 alone prints and writes the run folder
        cfg.run.dir = cfg.run.dir or default_detection_run_dir(cfg)
        self.run_dir = RunDir(cfg.run.dir)
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.device = process_device(resolve_device(cfg.device), self.processes)
        data = cfg.data
        self.train_set = load_coco(
            data.root, "train", min_size=data.min_size, max_size=data.max_size, flip_prob=data.flip_prob
        )
        self.val_set = load_coco(data.root, "val", min_size=data.min_size, max_size=data.max_size)
        self.loader = CocoLoader(
            self.train_set,
            self.processes.batch_share(cfg.train.batch_size),
            train=True,
            workers=data.workers,
            seed=cfg.run.seed,
            device=self.device,
            num_replicas=self.processes.world_size,
            rank=self.processes.rank,
        )
        if len(self.loader) == 0:
            raise FamkdError(
                f"train.batch_size={cfg.train.batch_size} exceeds every aspect group of {self.train_set.description}"
                + (
                    f" (shared out as whole batches to {self.processes.world_size} processes)"
                    if self.processes.distributed
                    else ""
                )
            )
        # A resumed run loads its student from the checkpoint: no ImageNet weights to fetch.
        self.distiller = self._build_distiller("none" if checkpoint else cfg.train.student_init).to(self.device)
        # DistributedDataParallel around the student and the heads, the teacher left out (several processes).
        self.step_model = wrap_for_training(self.distiller, self.processes, self.device, sync_bn=False)
        trainable = [parameter for parameter in self.distiller.parameters() if parameter.requires_grad]
        train = cfg.train
        self.optimizer = torch.optim.SGD(
            trainable, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda it: lr_factor(it, train.lr_steps, train.lr_decay, train.warmup_iters, train.warmup_factor),
        )
        self.iteration = self.epoch = self.epoch_batches = 0
        self.interval_sums: dict[str, float] = {}
        self.interval_count = 0
        self.wall_time_s = 0.0
        self.last_eval: dict[str, float | None] = {}
        self.pending_rng: dict[str, Any] | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _build_distiller(self, student_init: str) -> DetectionDistiller:
        cfg, num_classes = self.cfg, self.train_set.categories.num_classes
        if self.val_set.categories != self.train_set.categories:
            raise FamkdError(f"the train and val annotation files of {cfg.data.root} list different categories")
        size = (cfg.data.min_size, cfg.data.max_size)
        student = build_detector(cfg.student, num_classes, *size, backbone_init=student_init)
        teacher = None
        if needs_teacher(cfg.method):
            teacher = load_teacher(cfg.teacher.backbone, cfg.teacher.checkpoint, self.train_set.categories.ids, *size)
        return create_detection_distiller(cfg.method, student, teacher, cfg.distill)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.distiller.student.load_state_dict(checkpoint["student"])
        self.distiller.heads.load_state_dict(checkpoint["heads"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.iteration, self.epoch, self.epoch_batches = (
            checkpoint[k] for k in ("iteration", "epoch", "epoch_batches")
        )
        self.interval_sums, self.interval_count = checkpoint["interval_sums"], checkpoint["interval_count"]
        self.wall_time_s, self.last_eval = checkpoint["wall_time_s"], checkpoint["last_eval"]
        self.pending_rng = checkpoint["rng"]  # restored once the batches already taken are skipped

    # ---- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to cfg.train.iterations, evaluate, write summary.json; returns the summary."""
        if self.main:
            write_text_atomic(self.run_dir.config_file, dump_config(self.cfg))
        self.log = IterationRunLog(
            self.run_dir.path, self.cfg.run.tensorboard, self.iteration, self.iteration, enabled=self.main
        )
        self.bar = tqdm(
            total=self.cfg.train.iterations,
            initial=self.iteration,
            desc="train",
            unit="it",
            leave=False,
            dynamic_ncols=True,
            disable=None if self.main else True,  # None: shown on a terminal only
        )
        try:
            self._say_header()
            with StopRequest() as stop:
                self._train(stop)
            self._save_checkpoint()
            if self.main:
                torch.save(self.distiller.student.state_dict(), self.run_dir.student())
            return self._write_summary("completed")
        except NonFiniteLossError:
            self._write_summary("failed")
            raise
        finally:
            self.log.close()
            self.bar.close()

    def _say(self, text: str) -> None:
        if self.main:
            tqdm.write(text)

    def _say_header(self) -> None:
        cfg, processes = self.cfg, self.processes.world_size
        student = count_parameters(self.distiller.student)
        teacher = f", teacher {cfg.teacher.backbone} ({cfg.teacher.checkpoint})" if self.distiller.teacher else ""
        sharing = f", {processes} processes sharing the global batch of {cfg.train.batch_size}" if processes > 1 else ""
        self._say(
            f"famkd detect train: method {cfg.method}, student {cfg.student} ({student / 1e6:.2f}M params), heads "
            f"{self.distiller.num_head_parameters() / 1e6:.3f}M params{teacher}\n"
            f"train data: {self.train_set.description}\ndevice {self.device}, {cfg.train.iterations} iterations "
            f"of batch {cfg.train.batch_size}{sharing}, run dir {cfg.run.dir}"
            + (f"\nresuming after iteration {self.iteration}" if self.iteration else "")
        )

    def _batches(self) -> Iterator[Batch]:
        """Training batches from where the run stands: the current epoch's remaining ones, then the next epochs."""
        while True:
            self.loader.set_epoch(self.epoch, start=self.epoch_batches)
            batches = iter(self.loader)
            if self.pending_rng is not None:
                restore_rng_state(self.pending_rng)
                self.pending_rng = None
            for batch in batches:
                self.epoch_batches += 1
                yield batch
            self.epoch, self.epoch_batches = self.epoch + 1, 0

    def _train(self, stop: StopRequest) -> None:
        self.distiller.train()
        batches = self._batches()
        session_start = time.perf_counter()
        interval_start = time.perf_counter()
        while self.iteration < self.cfg.train.iterations:
            images, targets = next(batches)
            self.iteration += 1
            self._step(images, targets)
            self.bar.update(1)
            self.wall_time_s += time.perf_counter() - session_start
            session_start = time.perf_counter()
            if self._record_due():
                self._log_record(time.perf_counter() - interval_start)
                interval_start = time.perf_counter()
            if self.iteration % self.cfg.train.checkpoint_every == 0:
                self._save_checkpoint()
            if self.on_step is not None:
                self.on_step(self.iteration)
            # Processes agree on stopping where they synchronise anyway; a single process stops at once.
            agree = self._record_due() or not self.processes.distributed
            if agree and self.processes.any(stop.requested, self.device):
                self._save_checkpoint()
                self._write_summary("interrupted")
                raise TrainingInterrupted(
                    f"stopped after iteration {self.iteration}; resume with: famkd detect train --resume {self.run_dir}"
                )

    def _step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        """One optimiser step (famkd.engine.step), the schedule's step, and the loss terms added to the interval."""

        def step_model(images: Any, targets: Any, iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
            return NO_LOGITS, self.step_model(images, targets, iteration)

        # optimizer_step hands images and targets to step_model untouched: detection passes lists.
        _, losses = optimizer_step(
            step_model,
            self.optimizer,
            None,
            contextlib.nullcontext,
            cast(Tensor, images),
            cast(Tensor, targets),
            self.iteration,
        )
        self.scheduler.step()
        values = {name: float(value.detach()) for name, value in losses.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteLossError(
                f"loss term {bad[0]} is {values[bad[0]]} at iteration {self.iteration}; the last checkpoint "
                f"({self.run_dir.checkpoint()}) is the last good state: lower train.lr or check the data"
            )
        for name, value in values.items():
            self.interval_sums[name] = self.interval_sums.get(name, 0.0) + value
        self.interval_count += 1

    def _record_due(self) -> bool:
        train = self.cfg.train
        evaluates = bool(train.eval_every) and self.iteration % train.eval_every == 0
        return self.iteration % train.log_every == 0 or self.iteration == train.iterations or evaluates

    def _eval_due(self) -> bool:
        every = self.cfg.train.eval_every
        return self.iteration == self.cfg.train.iterations or bool(every) and self.iteration % every == 0

    def _global_interval_sums(self) -> dict[str, float]:
        """The interval's sums of the loss terms added up over the processes (every process calls this)."""
        if not self.processes.distributed or not self.interval_sums:  # none yet: just after a log record
            return dict(self.interval_sums)
        names = list(self.interval_sums)  # the same terms in the same order on every process
        totals = torch.tensor([self.interval_sums[name] for name in names], dtype=torch.float64, device=self.device)
        return dict(zip(names, all_reduce_sum(totals).tolist()))

    def _log_record(self, interval_time_s: float) -> None:
        count = self.interval_count * self.processes.world_size  # the process-steps in the interval
        means = {f"loss_{name}": total / count for name, total in self._global_interval_sums().items()}
        record: dict[str, Any] = {
            "iteration": self.iteration,
            "global_step": self.iteration,
            "epoch": self.epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": sum(means.values()),
            **means,
            "interval_time_s": interval_time_s,
        }
        if self._eval_due():
            self.last_eval = {name: finite_or_none(value) for name, value in self._evaluate().items()}
            record.update(self.last_eval)
        self.log.log_epoch(record)
        seconds_per_iteration = interval_time_s / max(self.interval_count, 1)
        remaining_s = seconds_per_iteration * (self.cfg.train.iterations - self.iteration)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        self._say(
            f"iteration {self.iteration}/{self.cfg.train.iterations}  loss {record['loss']:.4f} ("
            + ", ".join(f"{name[5:]} {value:.4f}" for name, value in means.items())
            + f")  lr {record['lr']:.4g}  {seconds_per_iteration:.2f} s/it  ETA {timedelta(seconds=round(remaining_s))}"
            + "".join(f"  {name} {value}" for name, value in self.last_eval.items() if name in record)
        )
        self.interval_sums, self.interval_count = {}, 0

    def _evaluate(self) -> dict[str, float]:
        """COCO AP of the student on the whole val split, the images shared out between the processes."""
        cfg, processes = self.cfg, self.processes
        return evaluate_detector(
            self.distiller.student,
            self.val_set,
            cfg.train.eval_batch_size,
            cfg.data.workers,
            processes.world_size,
            processes.rank,
        )

    def _save_checkpoint(self) -> None:
        """checkpoints/last.pt, written by process 0; every process calls this at the same iteration."""
        if self.processes.distributed:
            # Spread the interval's partial sums evenly: their total over the processes stays the same and
            # process 0's checkpoint holds a share every process resumes from.
            world = self.processes.world_size
            self.interval_sums = {name: total / world for name, total in self._global_interval_sums().items()}
        if not self.main:
            return
        save_checkpoint(
            self.run_dir.checkpoint(),
            {
                "student": self.distiller.student.state_dict(),
                "heads": self.distiller.heads.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "iteration": self.iteration,
                "epoch": self.epoch,
                "epoch_batches": self.epoch_batches,
                "interval_sums": self.interval_sums,
                "interval_count": self.interval_count,
                "rng": capture_rng_state(),
                "wall_time_s": self.wall_time_s,
                "last_eval": self.last_eval,
                "config": config_to_dict(self.cfg),
                "versions": library_versions(),
            },
        )

    def _write_summary(self, status: str) -> dict[str, Any]:
        cfg = self.cfg
        summary: dict[str, Any] = {
            "status": status,
            "task": "detection",
            "method": cfg.method,
            "student": cfg.student,
            "teacher": cfg.teacher.backbone if needs_teacher(cfg.method) else "",
            "iterations": cfg.train.iterations,
            "iteration": self.iteration,
            **{name: self.last_eval.get(name) for name in METRICS},
            "wall_time_s": self.wall_time_s,
            "student_params": count_parameters(self.distiller.student),
            "head_params": self.distiller.num_head_parameters(),
            "data": self.train_set.description,
        }
        if self.main:
            self.run_dir.write_summary(summary)
        return summary


def train_detection(
    cfg: DetectionConfig | None,
    resume_dir: str | os.PathLike | None = None,
    overrides: tuple[str, ...] = (),
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Train `cfg`, or resume the run in `resume_dir` (its saved config with `overrides`); returns the summary."""
    try:
        if resume_dir is None:
            assert cfg is not None
            return DetectionTrainer(cfg, on_step=on_step).run()
        checkpoint = load_checkpoint(RunDir(resume_dir).checkpoint())
        resumed = detection_config_with_overrides(checkpoint["config"], overrides)
        resumed.run.dir = str(resume_dir)
        return DetectionTrainer(resumed, checkpoint, on_step).run()
    finally:
        leave_processes()  # under torchrun: leave the process group
