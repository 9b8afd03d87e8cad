"""One training loop for teachers (method `vanilla`) and distilled students alike.

`train(cfg)` builds the data, the student, the frozen teacher and the distiller, then runs SGD
with a per-epoch multistep schedule. It writes into the run directory (run.dir):

    config.yaml                 the merged config
    metrics.jsonl               one record per completed epoch (see famkd.engine.run_log)
    summary.json                best/last accuracy, epochs, wall time, parameter counts, status
    tensorboard/                TensorBoard scalars (when run.tensorboard)
    checkpoints/last.pt         full training state after every epoch (or after Ctrl-C, marked
                                with `partial_epoch`); see famkd.engine.checkpoint
    checkpoints/best.pt         the same, for the epoch with the best test top-1 so far
    student_last.pt, student_best.pt
                                the student alone as a plain state dict (load it with
                                create_model(name).load_state_dict(torch.load(path)))

The step never waits for the host: loss terms, accuracy and the first non-finite step are
accumulated on the device and read back every `train.log_interval` steps and at epoch end.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from famkd.config import Config, ConfigError, config_from_dict, config_to_dict, dump_config, load_config
from famkd.data.datasets import build_datasets
from famkd.data.loader import BatchLoader
from famkd.distill import create_distiller
from famkd.distill.registry import DISTILLERS
from famkd.engine.checkpoint import (
    capture_rng_state,
    copy_checkpoint,
    library_versions,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from famkd.engine.device import autocast_factory, resolve_device
from famkd.engine.errors import FamkdError, NonFiniteLossError
from famkd.engine.evaluate import evaluate
from famkd.engine.run_log import EpochProgressDisplay, RunLog, format_epoch_line, write_summary
from famkd.engine.schedule import build_optimizer, build_scheduler
from famkd.engine.teacher import load_teacher_and_name
from famkd.models import create_model
from famkd.models.registry import MODELS
from famkd.registry import closest

StepHook = Callable[[int, int, int], None]  # (epoch, step within the epoch, global step)

LAST_CHECKPOINT = "checkpoints/last.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"
COMMUNITY_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


class TrainingInterrupted(FamkdError):
    """Ctrl-C stopped the run after saving a resumable checkpoint."""


def train(cfg: Config | None, resume_dir: str | os.PathLike | None = None, *, on_step: StepHook | None = None) -> dict:
    """Train according to `cfg` and return the run summary (also written to summary.json).

    With `resume_dir`, continue the run saved there from checkpoints/last.pt; `cfg` may be
    None (use the saved config, see `resume_config`). `on_step` is called after every
    optimiser step (used by tests and tools; it must not synchronise with the device).
    """
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    try:
        return Trainer(cfg, resume_dir, on_step).run()
    finally:
        set_deterministic_algorithms(previous_determinism)


def set_deterministic_algorithms(enabled: bool) -> None:
    """torch.use_deterministic_algorithms, called only on a change (its first call imports the compiler, ~3 s)."""
    if torch.are_deterministic_algorithms_enabled() != enabled:
        torch.use_deterministic_algorithms(enabled)


def resume_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config saved in `run_dir`'s last checkpoint, with `key=value` overrides applied."""
    saved = load_checkpoint(Path(run_dir) / LAST_CHECKPOINT)["config"]
    with tempfile.TemporaryDirectory() as scratch:
        saved_file = Path(scratch) / "config.yaml"
        saved_file.write_text(dump_config(config_from_dict(saved)))
        cfg = load_config(saved_file, list(overrides))
    cfg.run.dir = str(run_dir)
    return cfg


def default_run_dir(cfg: Config) -> str:
    """runs/<method>/<teacher>_<student>-<timestamp> (runs/vanilla/<student>-<timestamp> for teachers)."""
    pair = f"{cfg.teacher.name}_{cfg.student}" if cfg.method != "vanilla" and cfg.teacher.name else cfg.student
    return str(Path("runs") / cfg.method / f"{pair}-{datetime.now():%Y%m%d-%H%M%S}")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with `deterministic`, forbid non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
    set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def check_distill_options(method: str, options: dict) -> inspect.Signature:
    """The signature of `method`'s constructor, after checking that it accepts every option.

    An unknown method or option is a ConfigError naming the nearest valid one.
    """
    try:
        builder = DISTILLERS.get(method)
    except KeyError as error:
        raise ConfigError(f"method: {error.args[0]}") from None
    signature = inspect.signature(builder)
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return signature
    valid = [
        name for name, p in parameters.items() if name not in ("student", "teacher") and p.kind is not p.VAR_POSITIONAL
    ]
    for name in options:
        if name not in valid:
            near = closest(name, valid)
            hint = f" (did you mean 'distill.{near}'?)" if near else ""
            listed = ", ".join(valid) if valid else "none"
            raise ConfigError(f"unknown option 'distill.{name}' for method {method!r}{hint}; its options: {listed}")
    return signature


def distiller_options(method: str, options: dict, image_size: int) -> dict:
    """`options` checked against the distiller's constructor, plus `image_size` where it takes one."""
    parameters = check_distill_options(method, options).parameters
    options = dict(options)
    if "image_size" in parameters and "image_size" not in options:
        options["image_size"] = image_size
    return options


def check_model_name(setting: str, name: str) -> None:
    """A ConfigError naming `setting` when `name` is not in the model zoo."""
    try:
        MODELS.get(name)
    except KeyError as error:
        raise ConfigError(f"{setting}: {error.args[0]}") from None


def missing_teacher_message(cfg: Config) -> str:
    teacher = cfg.teacher.name or "<teacher>"
    return (
        f"method {cfg.method!r} distils from a teacher, but teacher.checkpoint is not set. Train one with "
        f"`famkd train configs/cifar100/vanilla/{teacher}.yaml` and pass "
        f"teacher.checkpoint=<its run dir>/student_best.pt, or use a community CIFAR-100 teacher: "
        f"cifar_teachers.tar of the RepDistiller/mdistiller zoo ({COMMUNITY_TEACHERS_URL}), "
        f"e.g. teacher.checkpoint=cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
    )


@dataclasses.dataclass
class EpochProgress:
    """Running totals of one epoch, kept on the device so that steps never wait for the host.

    loss_sums: per term, the sum over images of the term (batch mean x batch size).
    first_bad_step: per term, the first global step (from 1) whose value was not finite, else -1.
    """

    epoch: int
    steps_done: int = 0
    images_seen: int = 0
    loss_sums: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    first_bad_step: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    correct: Tensor | None = None
    wait_s: float = 0.0
    elapsed_s: float = 0.0

    def add(self, logits: Tensor, labels: Tensor, losses: dict[str, Tensor], global_step: int) -> None:
        """Accumulate one step (device ops only)."""
        batch = labels.shape[0]
        for name, value in losses.items():
            value = value.detach().float()
            if name not in self.loss_sums:
                self.loss_sums[name] = torch.zeros((), device=value.device)
                self.first_bad_step[name] = torch.full((), -1, dtype=torch.int64, device=value.device)
            self.loss_sums[name] += value * batch
            first_bad = self.first_bad_step[name]
            newly_bad = ~torch.isfinite(value) & (first_bad < 0)
            self.first_bad_step[name] = torch.where(newly_bad, global_step, first_bad)
        correct = (logits.argmax(dim=1) == labels).sum()
        self.correct = correct if self.correct is None else self.correct + correct
        self.images_seen += batch
        self.steps_done += 1

    def read(self) -> dict[str, float]:
        """Epoch means so far, loss_<term> and train_acc (one host sync)."""
        names = list(self.loss_sums)
        values = torch.stack([self.loss_sums[n] for n in names] + [self.correct.float()]).tolist()
        means = {f"loss_{n}": v / self.images_seen for n, v in zip(names, values)}
        means["train_acc"] = 100.0 * values[-1] / self.images_seen
        return means

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "steps_done": self.steps_done,
            "images_seen": self.images_seen,
            "loss_sums": {n: v.cpu() for n, v in self.loss_sums.items()},
            "first_bad_step": {n: v.cpu() for n, v in self.first_bad_step.items()},
            "correct": self.correct.cpu(),
            "wait_s": self.wait_s,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> "EpochProgress":
        def to_device(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {name: value.to(device) for name, value in tensors.items()}

        return cls(
            epoch=state["epoch"],
            steps_done=state["steps_done"],
            images_seen=state["images_seen"],
            loss_sums=to_device(state["loss_sums"]),
            first_bad_step=to_device(state["first_bad_step"]),
            correct=state["correct"].to(device),
            wait_s=state["wait_s"],
            elapsed_s=state["elapsed_s"],
        )


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next step boundary; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "\nCtrl-C: stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to abort without saving)",
            file=sys.stderr,
        )

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def optimizer_step(step_model, optimizer: torch.optim.Optimizer, grad_scaler, autocast, images: Tensor, labels: Tensor,
                   epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
    """One training step as famkd takes it: the distiller's forward under `autocast`, the loss terms
    summed in float32, backward (scaled when `grad_scaler`, for fp16) and the optimiser step.
    Returns the logits and the loss terms."""
    with autocast():
        logits, losses = step_model(images, labels, epoch)
    loss = torch.stack([term.float() for term in losses.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return logits, losses


class Trainer:
    """Everything one training session holds; `run()` trains the remaining epochs."""

    def __init__(self, cfg: Config | None, resume_dir, on_step: StepHook | None):
        self.session_start = time.perf_counter()
        checkpoint = None
        if resume_dir is not None:
            checkpoint = load_checkpoint(Path(resume_dir) / LAST_CHECKPOINT)
            if cfg is None:
                cfg = config_from_dict(checkpoint["config"])
            cfg.run.dir = str(resume_dir)
        elif cfg is None:
            raise ValueError("train() needs a config or a run directory to resume")
        if not cfg.run.dir:
            cfg.run.dir = default_run_dir(cfg)
        self.cfg = cfg
        self.on_step = on_step
        self.run_dir = Path(cfg.run.dir)
        if checkpoint is None and (self.run_dir / LAST_CHECKPOINT).exists():
            raise FamkdError(
                f"{self.run_dir} already holds a run; continue it with `famkd train --resume {self.run_dir}` "
                "or choose another run.dir"
            )
        check_distill_options(cfg.method, cfg.distill)  # bad names fail before the data is read
        check_model_name("student", cfg.student)
        if cfg.method != "vanilla" and not cfg.teacher.checkpoint:
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
        self.last_acc = None
        self.teacher_acc = None
        self.wall_time_before = 0.0  # wall time of earlier sessions of this run
        self.partial: EpochProgress | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _build_data(self) -> None:
        cfg = self.cfg
        self.train_set, self.test_set = build_datasets(cfg.data)
        common = {"seed": cfg.run.seed, "device": self.device, "channels_last": cfg.train.channels_last}
        self.train_loader = BatchLoader(
            self.train_set, cfg.train.batch_size, train=True, max_steps=cfg.train.max_steps_per_epoch, **common
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
        if cfg.method != "vanilla":
            self.teacher, cfg.teacher.name = load_teacher_and_name(cfg.teacher, num_classes)
        options = distiller_options(cfg.method, cfg.distill, image_size=self.train_set.images.shape[-1])
        try:
            self.distiller = create_distiller(cfg.method, student=student, teacher=self.teacher, **options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"distill options for method {cfg.method!r}: {error}") from None
        memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
        self.distiller.to(device=self.device, memory_format=memory_format)

    def _restore(self, checkpoint: dict) -> None:
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

    def run(self) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        self.log = RunLog(self.run_dir, cfg.run.tensorboard, resume_epoch=self.epoch, resume_step=self.global_step)
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
        cfg = self.cfg
        student_params = sum(p.numel() for p in self.distiller.student.parameters())
        teacher = f", teacher {cfg.teacher.name or '?'} ({cfg.teacher.checkpoint})" if self.teacher is not None else ""
        lines = [
            f"famkd train: method {cfg.method}, student {cfg.student} ({student_params / 1e6:.3f}M params), "
            f"heads {self.distiller.num_head_parameters() / 1e6:.3f}M params{teacher}",
            f"train data: {self.train_set.description}",
            f"test data: {self.test_set.description}",
            f"device {self.device}, amp {cfg.amp}, {len(self.train_loader)} steps/epoch, run dir {self.run_dir}",
        ]
        if self.epoch or self.partial is not None:
            where = (
                f"epoch {self.partial.epoch} after step {self.partial.steps_done}"
                if self.partial is not None
                else f"after epoch {self.epoch}"
            )
            lines.append(f"resuming {where}")
        for line in lines:
            tqdm.write(line)

    def _measure_teacher(self) -> float:
        result = evaluate(self.distiller.teacher, self.test_loader, self.autocast)
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
            for images, labels in _timed(batches, progress):
                logits, losses = self._step(images, labels, progress.epoch)
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

    def _step(self, images: Tensor, labels: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimiser step; returns the detached logits and loss terms (no host sync)."""
        logits, losses = optimizer_step(self.step_model, self.optimizer, self.grad_scaler, self.autocast, images, labels, epoch)
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
        self.log.log_scalars(scalars, self.global_step)

    def _check_finite(self, progress: EpochProgress, means: dict[str, float] | None = None) -> None:
        """Raise NonFiniteLossError naming the first loss term that was NaN or infinite."""
        means = progress.read() if means is None else means
        bad = {name: means[f"loss_{name}"] for name in progress.loss_sums if not math.isfinite(means[f"loss_{name}"])}
        if not bad:
            return
        first_steps = {name: int(progress.first_bad_step[name]) for name in bad}
        name = min(first_steps, key=first_steps.get)
        global_step = first_steps[name]
        step_in_epoch = global_step - (self.global_step - progress.steps_done)
        kept = (
            f"the last good checkpoint is kept: {self.run_dir / LAST_CHECKPOINT} (epoch {self.epoch})"
            if (self.run_dir / LAST_CHECKPOINT).exists()
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"loss term {name!r} became {'nan' if math.isnan(bad[name]) else 'infinite'} at epoch {progress.epoch}, "
            f"step {step_in_epoch} of {len(self.train_loader)} (global step {global_step}); training stopped and "
            f"{kept}. Try a lower train.lr or distill option weight, or amp=off."
        )

    def _end_epoch(self, progress: EpochProgress, lr: float) -> None:
        means = progress.read()
        test = evaluate(self.distiller.student, self.test_loader, self.autocast)
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
        self.log.log_epoch(record)  # before the checkpoint: a crash in between replays this epoch on resume
        self._save_checkpoint(partial=None)
        student_state = self.distiller.student.state_dict()
        save_checkpoint(self.run_dir / "student_last.pt", student_state)
        if is_best:
            copy_checkpoint(self.run_dir / LAST_CHECKPOINT, self.run_dir / BEST_CHECKPOINT)
            save_checkpoint(self.run_dir / "student_best.pt", student_state)
        tqdm.write(format_epoch_line(record, self.cfg.train.epochs))

    def _save_checkpoint(self, partial: EpochProgress | None) -> None:
        save_checkpoint(
            self.run_dir / LAST_CHECKPOINT,
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
            f"interrupted {where}; saved {self.run_dir / LAST_CHECKPOINT}. "
            f"Continue with: famkd train --resume {self.run_dir}"
        )

    def _wall_time(self) -> float:
        return self.wall_time_before + time.perf_counter() - self.session_start

    def _finish(self, status: str, error: str = "") -> dict:
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
            "run_dir": str(self.run_dir),
        }
        if error:
            summary["error"] = error
        write_summary(self.run_dir, summary)
        return summary


def _timed(batches, progress: EpochProgress):
    """Yield from `batches`, adding the time spent waiting for each batch to progress.wait_s."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        progress.wait_s += time.perf_counter() - start
        yield batch
