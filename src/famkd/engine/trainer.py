"""One training loop for teachers (method `vanilla`) and distilled students alike.

`train(cfg)` builds the data, the student, the frozen teacher and the distiller, then runs SGD
with a per-epoch multistep schedule, writing into the run folder (see famkd.engine.run_dir for
its files). The step never waits for the host: loss terms, accuracy and the first non-finite
step are accumulated on the device (famkd.engine.progress) and read back every
`train.log_interval` steps and at epoch end.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from famkd.config import Config, config_to_dict, dump_config
from famkd.data import BatchLoader, build_datasets
from famkd.distill import create_distiller, needs_teacher
from famkd.distill.registry import distiller_class
from famkd.engine.checkpoint import capture_rng_state, library_versions, restore_rng_state, save_checkpoint
from famkd.engine.device import autocast_factory, resolve_device, to_channels_last
from famkd.engine.evaluate import evaluate
from famkd.engine.progress import EpochProgress, StopRequest, timed_batches
from famkd.engine.run_dir import RunDir, default_run_dir, resume_point
from famkd.engine.run_log import EpochProgressDisplay, RunLog, format_epoch_line, run_header
from famkd.engine.schedule import build_optimizer, build_scheduler
from famkd.engine.seeding import seed_everything, set_deterministic_algorithms
from famkd.engine.step import optimizer_step
from famkd.engine.teacher import load_teacher_and_name, missing_teacher_message
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

        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.device = resolve_device(cfg.device)
        self.autocast = autocast_factory(cfg.amp, self.device)
        self._build_data()
        self._build_models()
        self.optimizer = build_optimizer(self.distiller, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        self.step_model = torch.compile(self.distiller) if cfg.train.compile else self.distiller

        self.epoch = 0  # last completed epoch
        self.global_step = 0
        self.best_acc = -math.inf
        self.best_epoch = 0
        self.last_acc: float | None = None
        self.teacher_acc: float | None = None
        self.wall_time_before = 0.0  # wall time of earlier sessions of this run
        self.partial: EpochProgress | None = None
        self.log: RunLog | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _build_data(self) -> None:
        cfg = self.cfg
        self.train_set, self.test_set = build_datasets(cfg.data)
        common: dict[str, Any] = {"seed": cfg.run.seed, "device": self.device, "channels_last": cfg.train.channels_last}
        with_indices = distiller_class(cfg.method).needs_sample_indices
        self.train_loader = BatchLoader(
            self.train_set,
            cfg.train.batch_size,
            train=True,
            max_steps=cfg.train.max_steps_per_epoch,
            with_indices=with_indices,
            **common,
        )
        self.test_loader = BatchLoader(self.test_set, cfg.train.eval_batch_size, train=False, **common)
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
        train_set = self.train_set
        data: dict[str, Any] = {
            "image_size": train_set.images.shape[-1],
            "num_samples": len(train_set),
            "labels": train_set.labels,
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
        self.epoch = checkpoint["epoch"]
        self.global_step = checkpoint["global_step"]
        self.best_acc = checkpoint["best_acc"]
        self.best_epoch = checkpoint["best_epoch"]
        self.last_acc = checkpoint["last_acc"]
        self.teacher_acc = checkpoint["teacher_acc"]
        self.wall_time_before = checkpoint["wall_time_s"]
        if checkpoint["partial_epoch"] is not None:
            self.partial = EpochProgress.from_state_dict(checkpoint["partial_epoch"], self.device)

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        write_text_atomic(self.run_dir.config_file, dump_config(cfg))
        self.log = RunLog(self.run_dir.path, cfg.run.tensorboard, resume_epoch=self.epoch, resume_step=self.global_step)
        try:
            self._print_header()
            if self.teacher is not None and self.teacher_acc is None:
                self.teacher_acc = self._measure_teacher()
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
        resumed_at = (self.partial.epoch, self.partial.steps_done) if self.partial is not None else (self.epoch, 0)
        header = run_header(
            self.cfg, self.distiller, (self.train_set, self.test_set), self.device, len(self.train_loader), resumed_at
        )
        for line in header:
            tqdm.write(line)

    def _measure_teacher(self) -> float:
        assert self.teacher is not None and self.log is not None
        result = evaluate(self.teacher, self.test_loader, self.autocast, description="teacher test")
        tqdm.write(f"teacher test accuracy: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%")
        self.log.log_scalars({"teacher/top1": result["top1"], "teacher/top5": result["top5"]}, 0)
        return result["top1"]

    def _train_epochs(self, stop: StopRequest) -> None:
        for epoch in range(self.epoch + 1, self.cfg.train.epochs + 1):
            progress = self.partial if self.partial is not None else EpochProgress(epoch)
            self.partial = None
            lr = self.optimizer.param_groups[0]["lr"]
            if not self._train_epoch(progress, stop):
                self._save_checkpoint(partial=progress)
                self._raise_interrupted(f"during epoch {epoch}, after step {progress.steps_done}")
            self.scheduler.step()
            self._end_epoch(progress, lr)
            if stop.requested and epoch < self.cfg.train.epochs:
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
        display = EpochProgressDisplay(steps, progress.epoch, cfg.train.epochs, initial=progress.steps_done)
        session_start = interval_start = time.perf_counter()
        interval_images = 0
        try:
            for images, labels, *indices in timed_batches(batches, progress):
                logits, losses = self._step(images, labels, progress.epoch, *indices)
                self.global_step += 1
                progress.add(logits, labels, losses, self.global_step)
                interval_images += labels.shape[0]
                display.step()
                if self.on_step is not None:
                    self.on_step(progress.epoch, progress.steps_done, self.global_step)
                if progress.steps_done % cfg.train.log_interval == 0:
                    self._report_interval(progress, display, interval_images, interval_start)
                    interval_start, interval_images = time.perf_counter(), 0
                if stop.requested and progress.steps_done < steps:
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
        self.log.log_scalars(scalars, self.global_step)

    def _check_finite(self, progress: EpochProgress, means: dict[str, float] | None = None) -> None:
        """Raise NonFiniteLossError naming the first loss term that was NaN or infinite."""
        bad = progress.first_non_finite(means)
        if bad is None:
            return
        name, value, global_step = bad
        step_in_epoch = global_step - (self.global_step - progress.steps_done)
        kept = (
            f"the last good checkpoint is kept: {self.run_dir.checkpoint()} (epoch {self.epoch})"
            if self.run_dir.has_checkpoint()
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"loss term {name!r} became {'nan' if math.isnan(value) else 'infinite'} at epoch {progress.epoch}, "
            f"step {step_in_epoch} of {len(self.train_loader)} (global step {global_step}); training stopped and "
            f"{kept}. Try a lower train.lr or distill option weight, or amp=off."
        )

    def _end_epoch(self, progress: EpochProgress, lr: float) -> None:
        means = progress.read()
        test = evaluate(self.distiller.student, self.test_loader, self.autocast, description="test")
        self.epoch = progress.epoch
        self.last_acc = test["top1"]
        is_best = test["top1"] > self.best_acc
        if is_best:
            self.best_acc, self.best_epoch = test["top1"], self.epoch
        loss_terms = {k: v for k, v in means.items() if k.startswith("loss_")}
        record = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "lr": lr,
            "loss": sum(loss_terms.values()),
            **loss_terms,
            "train_acc": means["train_acc"],
            "test_acc": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "epoch_time_s": progress.elapsed_s,
            "images_per_s": progress.images_seen / progress.elapsed_s,
            "data_wait_fraction": progress.wait_s / progress.elapsed_s,
        }
        assert self.log is not None
        self.log.log_epoch(record)  # before the checkpoint: a crash in between replays this epoch on resume
        self._save_checkpoint(partial=None)
        student_state = self.distiller.student.state_dict()
        save_checkpoint(self.run_dir.student(), student_state)
        if is_best:
            copy_file_atomic(self.run_dir.checkpoint(), self.run_dir.checkpoint(best=True))
            save_checkpoint(self.run_dir.student(best=True), student_state)
        tqdm.write(format_epoch_line(record, self.cfg.train.epochs))

    def _save_checkpoint(self, partial: EpochProgress | None) -> None:
        save_checkpoint(
            self.run_dir.checkpoint(),
            {
                "student": self.distiller.student.state_dict(),
                "heads": self.distiller.head_state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                "epoch": self.epoch,
                "global_step": self.global_step,
                "rng": capture_rng_state(),
                "best_acc": self.best_acc,
                "best_epoch": self.best_epoch,
                "last_acc": self.last_acc,
                "teacher_acc": self.teacher_acc,
                "wall_time_s": self._wall_time(),
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
        return self.wall_time_before + time.perf_counter() - self.session_start

    def _finish(self, status: str, error: str = "") -> dict[str, Any]:
        cfg = self.cfg
        summary = {
            "status": status,
            "method": cfg.method,
            "student": cfg.student,
            "teacher": cfg.teacher.name if self.teacher is not None else None,
            "best_acc": self.best_acc if self.best_epoch else None,
            "last_acc": self.last_acc,
            "best_epoch": self.best_epoch or None,
            "epochs_completed": self.epoch,
            "epochs": cfg.train.epochs,
            "wall_time_s": self._wall_time(),
            "student_params": sum(p.numel() for p in self.distiller.student.parameters()),
            "head_params": self.distiller.num_head_parameters(),
            "teacher_acc": self.teacher_acc,
            "dataset": self.train_set.description,
            "device": str(self.device),
            "amp": cfg.amp,
            "seed": cfg.run.seed,
            "run_dir": str(self.run_dir.path),
        }
        if error:
            summary["error"] = error
        self.run_dir.write_summary(summary)
        return summary
