"""One training loop for teachers (method `vanilla`) and distilled students alike.

`train(cfg)` builds the data, the student, the frozen teacher and the distiller, then runs SGD
with a per-epoch multistep schedule, writing into the run folder (see famkd.engine.run_dir for
its files). The step never waits for the host: loss terms, accuracy and the first non-finite
step are accumulated on the device (famkd.engine.progress) and read back every
`train.log_interval` steps and at epoch end.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from famkd.config import Config, config_to_dict, dump_config
from famkd.data import build_datasets, build_loader, dataset_image_size
from famkd.distill import create_distiller, needs_teacher
from famkd.distill.registry import distiller_class
from famkd.engine.checkpoint import capture_rng_state, library_versions, restore_rng_state, save_checkpoint
from famkd.engine.device import autocast_factory, resolve_device, to_channels_last
from famkd.engine.distributed import join_processes, leave_processes, process_device, wrap_for_training
from famkd.engine.evaluate import evaluate
from famkd.engine.fam_log import fam_epoch_log
from famkd.engine.progress import EpochProgress, RunState, StopRequest, timed_batches
from famkd.engine.run_dir import RunDir, default_run_dir, resume_point
from famkd.engine.run_log import EpochProgressDisplay, RunLog, format_epoch_line, run_header
from famkd.engine.schedule import build_optimizer, build_scheduler
from famkd.engine.seeding import seed_everything, set_deterministic_algorithms
from famkd.engine.step import optimizer_step
from famkd.engine.teacher import load_teacher_and_name, missing_teacher_message, teacher_fingerprint
from famkd.errors import FamkdError, NonFiniteLossError, TrainingInterrupted
from famkd.files import copy_file_atomic, write_text_atomic
from famkd.models import create_model

StepHook = Callable[[int, int, int], None]  # (epoch, step within the epoch, global step)


def train(
    cfg: Config | None,
    resume_dir: str | os.PathLike | None = None,
    *,
    overrides: Iterable[str] = (),
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Train according to `cfg` and return the run summary (also written to summary.json).

    With `resume_dir`, continue the run saved there from checkpoints/last.pt; `cfg` may be
    None, to use the saved config with `key=value` `overrides` applied. `on_step` is called after
    every optimiser step (used by tests and tools; it must not synchronise with the device).
    """
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    try:
        return Trainer(cfg, resume_dir, overrides, on_step).run()
    finally:
        set_deterministic_algorithms(previous_determinism)
        leave_processes()


class Trainer:
    """Everything one training session holds; `run()` trains the remaining epochs."""

    def __init__(
        self,
        cfg: Config | None,
        resume_dir: str | os.PathLike | None,
        overrides: Iterable[str],
        on_step: StepHook | None,
    ):
        self.session_start = time.perf_counter()
        checkpoint = None
        if resume_dir is not None:
            saved_cfg, checkpoint = resume_point(resume_dir, overrides)
            cfg = saved_cfg if cfg is None else cfg
            cfg.run.dir = str(resume_dir)
        elif cfg is None:
            raise ValueError("train() needs a config or a run directory to resume")
        if not cfg.run.dir:
            cfg.run.dir = default_run_dir(cfg)
        self.cfg = cfg
        self.on_step = on_step
        self.run_dir = RunDir(cfg.run.dir)
        if checkpoint is None and self.run_dir.has_checkpoint():
            raise FamkdError(
                f"{self.run_dir} already holds a run; continue it with `famkd train --resume {self.run_dir}` "
                "or choose another run.dir"
            )
        # The config has checked the method, its options and the model names when it loaded.
        self.needs_teacher = needs_teacher(cfg.method)
        if self.needs_teacher and not cfg.teacher.checkpoint:
            raise FamkdError(missing_teacher_message(cfg))

        self.processes = join_processes(cfg.device)  # one process, or one of those torchrun started
        self.main = self.processes.is_main  # process 0 alone prints and writes the run folder
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.device = process_device(resolve_device(cfg.device), self.processes)
        self.autocast = autocast_factory(cfg.amp, self.device)
        self._build_data()
        self._build_models()
        self.optimizer = build_optimizer(self.distiller, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        step_model = wrap_for_training(self.distiller, self.processes, self.device, cfg.train.sync_bn)
        self.step_model = torch.compile(step_model) if cfg.train.compile else step_model

        self.state = RunState()
        self.partial: EpochProgress | None = None
        self.log: RunLog | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _build_data(self) -> None:
        cfg, processes = self.cfg, self.processes
        with_indices = distiller_class(cfg.method).needs_sample_indices
        batch = processes.batch_share(cfg.train.batch_size)
        self.train_set, self.test_set = build_datasets(cfg.data)
        common: dict[str, Any] = {
            "seed": cfg.run.seed,
            "device": self.device,
            "channels_last": cfg.train.channels_last,
            "num_replicas": processes.world_size,
            "rank": processes.rank,
        }
        self.train_loader = build_loader(
            self.train_set,
            cfg.data,
            batch,
            train=True,
            with_indices=with_indices,
            max_steps=cfg.train.max_steps_per_epoch,
            **common,
        )
        self.test_loader = build_loader(self.test_set, cfg.data, cfg.train.eval_batch_size, train=False, **common)
        if len(self.train_loader) == 0:
            raise FamkdError(
                f"no full training batch: {len(self.train_set.labels)} training images, "
                f"train.batch_size={cfg.train.batch_size}; lower train.batch_size or use more data"
            )

    def _build_models(self) -> None:
        cfg = self.cfg
        num_classes = self.train_set.num_classes
        student = create_model(cfg.student, num_classes=num_classes)
        self.teacher = None
        if self.needs_teacher:
            self.teacher, cfg.teacher.name = load_teacher_and_name(cfg.teacher, num_classes)
        self.teacher_sha256 = teacher_fingerprint(cfg.teacher) if self.teacher and self.main else None
        data: dict[str, Any] = {
            "image_size": dataset_image_size(cfg.data),
            "num_samples": len(self.train_set),
            "labels": self.train_set.labels,
        }
        self.distiller = create_distiller(cfg.method, student=student, teacher=self.teacher, **data, **cfg.distill)
        self.distiller.to(self.device)
        if cfg.train.channels_last:
            to_channels_last(self.distiller)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Put back the state saved in `checkpoint` (see famkd.engine.checkpoint for its keys)."""
        full_state = {f"student.{k}": v for k, v in checkpoint["student"].items()}
        full_state.update(checkpoint["heads"])
        if self.distiller.teacher is not None:
            full_state.update({f"teacher.{k}": v for k, v in self.distiller.teacher.state_dict().items()})
        self.distiller.load_state_dict(full_state)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.grad_scaler is not None and checkpoint["grad_scaler"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler"])
        restore_rng_state(checkpoint["rng"])
        self.state = RunState.from_checkpoint(checkpoint)
        if checkpoint["partial_epoch"] is not None:
            self.partial = EpochProgress.from_state_dict(checkpoint["partial_epoch"], self.device)

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.main:
            write_text_atomic(self.run_dir.config_file, dump_config(cfg))
        self.log = RunLog(
            self.run_dir.path, cfg.run.tensorboard, self.state.epoch, self.state.global_step, enabled=self.main
        )
        try:
            self._print_header()
            if self.teacher is not None and self.state.teacher_acc is None:
                self.state.teacher_acc = self._measure_teacher()
            with StopRequest() as stop:
                self._train_epochs(stop)
            return self._finish("completed")
        except NonFiniteLossError as error:
            self._finish("failed", str(error))
            raise
        except TrainingInterrupted:
            self._finish("interrupted")
            raise
        finally:
            self.log.close()

    def _print_header(self) -> None:
        partial, datasets = self.partial, (self.train_set, self.test_set)
        resumed_at = (partial.epoch, partial.steps_done) if partial is not None else (self.state.epoch, 0)
        steps, processes = len(self.train_loader), self.processes.world_size
        for line in run_header(self.cfg, self.distiller, datasets, self.device, steps, resumed_at, processes):
            self._say(line)

    def _say(self, line: str) -> None:
        if self.main:
            tqdm.write(line)

    def _measure_teacher(self) -> float:
        assert self.teacher is not None and self.log is not None
        result = evaluate(self.teacher, self.test_loader, self.autocast, description="teacher test")
        top1, top5, images = result["top1"], result["top5"], result["images"]
        self._say(f"teacher test accuracy: top-1 {top1:.2f}%, top-5 {top5:.2f}% ({images} images)")
        self.log.log_scalars({"teacher/top1": result["top1"], "teacher/top5": result["top5"]}, 0)
        return result["top1"]

    def _train_epochs(self, stop: StopRequest) -> None:
        for epoch in range(self.state.epoch + 1, self.cfg.train.epochs + 1):
            progress = self.partial if self.partial is not None else EpochProgress(epoch)
            self.partial = None
            lr = self.optimizer.param_groups[0]["lr"]
            if not self._train_epoch(progress, stop):
                self._save_checkpoint(partial=progress)
                self._raise_interrupted(f"during epoch {epoch}, after step {progress.steps_done}")
            self.scheduler.step()
            self._end_epoch(progress, lr)
            if self.processes.any(stop.requested, self.device) and epoch < self.cfg.train.epochs:
                self._raise_interrupted(f"after epoch {epoch}")

    def _train_epoch(self, progress: EpochProgress, stop: StopRequest) -> bool:
        """Train the rest of one epoch; False when Ctrl-C stopped it early."""
        cfg = self.cfg
        self.distiller.train()
        self.train_loader.set_epoch(progress.epoch)
        steps = len(self.train_loader)
        batches = iter(self.train_loader)
        for _ in range(progress.steps_done):  # the (seed, epoch)-determined order replays exactly
            next(batches)
        display = EpochProgressDisplay(steps, progress.epoch, cfg.train.epochs, progress.steps_done, enabled=self.main)
        session_start = interval_start = time.perf_counter()
        interval_images = 0
        try:
            for images, labels, *indices in timed_batches(batches, progress):
                logits, losses = self._step(images, labels, progress.epoch, *indices)
                self.state.global_step += 1
                progress.add(logits, labels, losses, self.state.global_step)
                interval_images += labels.shape[0]
                display.step()
                if self.on_step is not None:
                    self.on_step(progress.epoch, progress.steps_done, self.state.global_step)
                at_interval = progress.steps_done % cfg.train.log_interval == 0
                if at_interval:
                    self._report_interval(progress, display, interval_images, interval_start)
                    interval_start, interval_images = time.perf_counter(), 0
                # Processes agree on stopping where they synchronise anyway; a single process stops at once.
                agree = at_interval or not self.processes.distributed
                if agree and self.processes.any(stop.requested, self.device) and progress.steps_done < steps:
                    self._check_finite(progress)
                    progress.elapsed_s += time.perf_counter() - session_start
                    return False
            self._check_finite(progress)
            progress.elapsed_s += time.perf_counter() - session_start
            return True
        finally:
            display.close()

    def _step(
        self, images: Tensor, labels: Tensor, epoch: int, indices: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step; returns the detached logits and loss terms (no host sync)."""
        logits, losses = optimizer_step(
            self.step_model, self.optimizer, self.grad_scaler, self.autocast, images, labels, epoch, indices
        )
        return logits.detach(), losses

    def _report_interval(
        self, progress: EpochProgress, display: EpochProgressDisplay, images: int, since: float
    ) -> None:
        """Sync once, stop on a non-finite loss, show loss / accuracy / img/s since `since` (a perf_counter time)."""
        means = progress.read()
        images_per_s = images / (time.perf_counter() - since)  # measured after the sync, so device time counts
        self._check_finite(progress, means)
        loss = sum(v for k, v in means.items() if k.startswith("loss_"))
        display.show(loss, means["train_acc"], images_per_s)
        scalars = {f"train/{k}": v for k, v in means.items()}
        scalars.update({"train/loss": loss, "train/images_per_s": images_per_s})
        assert self.log is not None
        self.log.log_scalars(scalars, self.state.global_step)

    def _check_finite(self, progress: EpochProgress, means: dict[str, float] | None = None) -> None:
        """Raise NonFiniteLossError naming the first loss term that was NaN or infinite."""
        kept = (
            f"the last good checkpoint is kept: {self.run_dir.checkpoint()} (epoch {self.state.epoch})"
            if self.run_dir.has_checkpoint()
            else "no checkpoint had been written yet"
        )
        progress.raise_if_non_finite(means, self.state.global_step, len(self.train_loader), kept)

    def _end_epoch(self, progress: EpochProgress, lr: float) -> None:
        means = progress.read()
        test = evaluate(self.distiller.student, self.test_loader, self.autocast, description="test")
        self.state.epoch = progress.epoch
        self.state.last_acc = test["top1"]
        is_best = test["top1"] > self.state.best_acc
        if is_best:
            self.state.best_acc, self.state.best_epoch = test["top1"], self.state.epoch
        loss_terms = {k: v for k, v in means.items() if k.startswith("loss_")}
        record = {
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
            "lr": lr,
            "loss": sum(loss_terms.values()),
            **loss_terms,
            "train_acc": means["train_acc"],
            "test_acc": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "test_images": test["images"],
            "epoch_time_s": progress.elapsed_s,
            "images_per_s": progress.images_seen / progress.elapsed_s,
            "data_wait_fraction": progress.wait_s / progress.elapsed_s,
            **fam_epoch_log(self.distiller, self.test_loader, self.run_dir, self.cfg, self.state.epoch, self.main),
        }
        assert self.log is not None
        self.log.log_epoch(record)  # before the checkpoint: a crash in between replays this epoch on resume
        self._save_checkpoint(partial=None)
        if self.main:
            student_state = self.distiller.student.state_dict()
            save_checkpoint(self.run_dir.student(), student_state)
            if is_best:
                copy_file_atomic(self.run_dir.checkpoint(), self.run_dir.checkpoint(best=True))
                save_checkpoint(self.run_dir.student(best=True), student_state)
        self._say(format_epoch_line(record, self.cfg.train.epochs))

    def _save_checkpoint(self, partial: EpochProgress | None) -> None:
        if not self.main:
            return
        save_checkpoint(
            self.run_dir.checkpoint(),
            {
                "student": self.distiller.student.state_dict(),
                "heads": self.distiller.head_state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                **dataclasses.asdict(self.state),
                "wall_time_s": self._wall_time(),
                "rng": capture_rng_state(),
                "partial_epoch": partial.state_dict() if partial is not None else None,
                "config": config_to_dict(self.cfg),
                "versions": library_versions(),
            },
        )

    def _raise_interrupted(self, where: str) -> None:
        raise TrainingInterrupted(
            f"interrupted {where}; saved {self.run_dir.checkpoint()}. "
            f"Continue with: famkd train --resume {self.run_dir}"
        )

    def _wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.session_start

    def _finish(self, status: str, error: str = "") -> dict[str, Any]:
        cfg = self.cfg
        summary = {
            "status": status,
            "method": cfg.method,
            "student": cfg.student,
            "teacher": cfg.teacher.name if self.teacher is not None else None,
            "best_acc": self.state.best_acc if self.state.best_epoch else None,
            "last_acc": self.state.last_acc,
            "best_epoch": self.state.best_epoch or None,
            "epochs_completed": self.state.epoch,
            "epochs": cfg.train.epochs,
            "wall_time_s": self._wall_time(),
            "student_params": sum(p.numel() for p in self.distiller.student.parameters()),
            "head_params": self.distiller.num_head_parameters(),
            "teacher_acc": self.state.teacher_acc,
            "teacher_sha256": self.teacher_sha256,
            "dataset": self.train_set.description,
            "device": str(self.device),
            "amp": cfg.amp,
            "seed": cfg.run.seed,
            "run_dir": str(self.run_dir.path),
        }
        if error:
            summary["error"] = error
        if self.main:
            self.run_dir.write_summary(summary)
        return summary
