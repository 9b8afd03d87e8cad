"""One training loop for every task, for teachers (method `vanilla`) and distilled students alike.

`train(task, cfg)` builds the task's data, the student, the frozen teacher and the distiller, then runs SGD on
the schedule of `cfg.train` (epochs or iterations, famkd.engine.schedule), writing into the run folder (see
famkd.engine.run_dir for its files). The step never waits for the host: loss terms, the task's counts and
the first non-finite step are accumulated on the device (famkd.engine.progress) and read back every
`train.log_interval` steps and at each period's end. What differs between tasks is the task's
(famkd.engine.task).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from famkd.engine.checkpoint import (
    capture_rng_state,
    checksum_path,
    library_versions,
    previous_path,
    restore_rng_state,
    save_checkpoint,
    save_training_checkpoint,
    verify_training_checkpoint,
)
from famkd.engine.device import autocast_factory, resolve_device, to_channels_last
from famkd.engine.distributed import (
    gather_objects,
    join_processes,
    leave_processes,
    lost_peer_error,
    lost_ranks,
    process_device,
    wait_for_peers,
    wrap_for_training,
)
from famkd.engine.progress import PeriodProgress, RunState, StopRequest, timed_batches
from famkd.engine.run_dir import RunDir
from famkd.engine.run_log import ProgressDisplay, RunLog, format_record
from famkd.engine.schedule import Schedule, build_optimizer, with_own_implementation
from famkd.engine.seeding import seed_everything, set_deterministic_algorithms
from famkd.engine.sharding import full_training_state, gathered_heads, is_sharded, load_full_training_state
from famkd.engine.step import optimizer_step
from famkd.engine.task import Task
from famkd.engine.threads import training_threads
from famkd.errors import FamkdError, LostPeerError, NonFiniteLossError, TrainingInterrupted
from famkd.files import copy_file_atomic, write_text_atomic
from famkd.settings import absolute_paths, dump_settings, settings_differences, settings_to_dict
from famkd.weights import load_checkpoint
from famkd.weights.zoo import teacher_fingerprint

StepHook = Callable[[int, int, int], None]  # (epoch, batches taken of it, global step)
AUTO_RESUME_MAY_DIFFER = (
    "run.dir",
    "run.resume",
    "device",
    "data.root",
    "run.tensorboard",
    "train.log_interval",
    "train.dist_timeout",
    "train.threads",
)
EXIT_CTRL_C, EXIT_RESUMABLE = 130, 75  # the command's status after Ctrl-C, after a preemption signal (EX_TEMPFAIL)


def train(
    task: Task,
    cfg: Any | None,
    resume_dir: str | os.PathLike | None = None,
    *,
    overrides: Iterable[str] = (),
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Train `task` according to `cfg` and return the run summary (also written to summary.json).

    With `resume_dir`, continue the run saved there from checkpoints/last.pt; `cfg` may be None, to use the
    saved config with `key=value` `overrides` applied. `on_step` is called after every optimiser step (used
    by tests and tools; it must not synchronise with the device).
    """
    previous_determinism, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    group_broken = False
    try:
        summary = Trainer(task, cfg, resume_dir, overrides, on_step).run()
        wait_for_peers()  # a finished run: every process done before any leaves
        return summary
    except LostPeerError:
        group_broken = True  # leaving it would wait for the lost process
        raise
    finally:
        set_deterministic_algorithms(previous_determinism)
        torch.set_num_threads(previous_threads)  # train.threads holds for the run only
        if not group_broken:
            leave_processes()


def resume_point(task: Task, source: str | os.PathLike, overrides: Iterable[str] = ()) -> tuple[Any, dict]:
    """The checkpoint to resume from (a run folder's checkpoints/last.pt, or a checkpoint file of one; read once and
    checked against its SHA-256) and its saved config with `overrides` applied; the config's run.dir is the run's."""
    path, run_dir = Path(source), RunDir(source)
    if path.is_file():  # an explicit checkpoint: RUN_DIR/checkpoints/<name>.pt
        run_dir = RunDir(path.parent.parent)
    else:
        path = run_dir.checkpoint()
    checkpoint = read_resume_checkpoint(task, path, run_dir)
    saved_task = checkpoint.get("task", "classification")
    if saved_task != task.name:
        raise FamkdError(f"{run_dir} holds a {saved_task} run, not a {task.name} run; resume it with its own command")
    cfg = task.config_with_overrides(checkpoint["config"], overrides)
    cfg.run.dir = str(run_dir)
    return cfg, checkpoint


def read_resume_checkpoint(task: Task, path: Path, run_dir: RunDir) -> dict[str, Any]:
    """The checkpoint at `path`, or one line naming the damage and the previous checkpoint to resume from."""
    try:
        verify_training_checkpoint(path)
        return load_checkpoint(path)
    except FamkdError as error:
        if not path.is_file():
            raise
        previous = previous_path(run_dir.checkpoint(), 1)
        offer = (
            f"resume from the previous one: {task.command} --resume {previous}"
            if previous.is_file() and previous != path
            else "no earlier checkpoint is kept (run.keep_checkpoints)"
        )
        raise FamkdError(f"{str(error).rstrip('.')}; {offer}") from error


class Trainer:
    """Everything one training session holds; `run()` trains the rest of the schedule."""

    def __init__(
        self,
        task: Task,
        cfg: Any | None,
        resume_dir: str | os.PathLike | None,
        overrides: Iterable[str],
        on_step: StepHook | None,
    ):
        self.session_start = time.perf_counter()
        self.task = task
        checkpoint = None
        if resume_dir is not None:
            saved_cfg, checkpoint = resume_point(task, resume_dir, overrides)
            run_folder = saved_cfg.run.dir
            cfg = saved_cfg if cfg is None else cfg
            cfg.run.dir = run_folder
        elif cfg is None:
            raise ValueError("train() needs a config or a run directory to resume")
        absolute_paths(cfg)  # the run's config.yaml names the same files from any working directory
        cfg.run.dir = cfg.run.dir or task.default_run_dir(cfg)
        self.cfg, self.on_step = cfg, on_step
        self.run_dir = RunDir(cfg.run.dir)
        if checkpoint is None and self.run_dir.has_checkpoint():
            checkpoint = self._resume_same_run(task, cfg)
        task.check(cfg)
        self.processes = join_processes(cfg.device, cfg.train.dist_timeout)  # one process, or one of torchrun's
        torch.set_num_threads(training_threads(cfg.train.threads))
        self.main = self.processes.is_main  # process 0 alone prints and writes the run folder
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.device = process_device(resolve_device(cfg.device), self.processes)
        self.autocast = autocast_factory(cfg.amp, self.device)
        self.data = task.build_data(cfg, self.processes, self.device)
        self._build_distiller(resumed=checkpoint is not None)
        self.schedule = Schedule(cfg.train, len(self.data.train_loader))
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        train_cfg = cfg.train
        step_model = wrap_for_training(
            self.distiller,
            self.processes,
            self.device,
            train_cfg.sync_bn,
            train_cfg.grad_compression,
            train_cfg.shard_heads,
        )
        self.sharded = is_sharded(self.distiller)  # train.shard_heads with several processes
        self.optimizer = build_optimizer(self.distiller, train_cfg)  # over the sharded parameters, if any
        self.step_model = torch.compile(step_model) if cfg.train.compile else step_model
        self.state = RunState()
        self.saved_at = ""  # where the last checkpoint was taken, e.g. "epoch 3"
        self.partial: PeriodProgress | None = None
        self.log: RunLog | None = None
        self.stop: StopRequest | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _resume_same_run(self, task: Task, cfg: Any) -> dict[str, Any]:
        """The checkpoint of the run already in run.dir, where run.resume=auto and it has the same settings."""
        if cfg.run.resume != "auto":
            raise FamkdError(
                f"{self.run_dir} already holds a run; continue it with `{task.command} --resume {self.run_dir}` "
                "(or run.resume=auto, which resumes a run of the same settings) or choose another run.dir"
            )
        saved, checkpoint = resume_point(task, self.run_dir.path)
        may_differ = (*AUTO_RESUME_MAY_DIFFER, *(() if cfg.teacher.name else ("teacher.name",)))  # found at load
        differences = settings_differences(settings_to_dict(cfg), settings_to_dict(saved), may_differ)
        if differences:
            raise FamkdError(f"{self.run_dir} holds another experiment ({differences}); choose another run.dir")
        return checkpoint

    def _build_distiller(self, resumed: bool) -> None:
        cfg = self.cfg
        self.distiller = self.task.build_distiller(cfg, self.data, resumed).to(self.device)
        if cfg.train.channels_last:
            to_channels_last(self.distiller)
        has_teacher = self.distiller.teacher is not None and self.main
        self.teacher_sha256 = teacher_fingerprint(cfg.teacher) if has_teacher and cfg.teacher.checkpoint else None

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Put back the state saved in `checkpoint` (see famkd.engine.checkpoint for its keys)."""
        full_state = {f"student.{k}": v for k, v in checkpoint["student"].items()}
        full_state.update(checkpoint["heads"])
        if self.distiller.teacher is not None:
            full_state.update({f"teacher.{k}": v for k, v in self.distiller.teacher.state_dict().items()})
        if self.sharded:  # each process keeps its shards of the full state
            load_full_training_state(self.distiller, full_state, self.optimizer, checkpoint["optimizer"])
        else:
            self.distiller.load_state_dict(full_state)
            self.optimizer.load_state_dict(with_own_implementation(self.optimizer, checkpoint["optimizer"]))
        if self.grad_scaler is not None and checkpoint["grad_scaler"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler"])
        restore_rng_state(checkpoint["rng"])
        self.state = RunState.from_checkpoint(checkpoint)
        self.saved_at = self._position_text()
        if checkpoint["partial_period"] is not None:
            saved, processes = checkpoint["partial_period"], self.processes
            self.partial = PeriodProgress.for_process(saved, processes.rank, processes.world_size, self.device)

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.main:
            write_text_atomic(self.run_dir.config_file, dump_settings(self.cfg))
            card = self.task.student_card(self.cfg, self.data.train_set)
            if card:
                write_text_atomic(self.run_dir.student_card, json.dumps(card, indent=2) + "\n")
        self.log = RunLog(self.run_dir.path, self.cfg.run.tensorboard, self.state.global_step, enabled=self.main)
        try:
            self._print_header()
            if self.distiller.teacher is not None and self.state.teacher_eval is None:
                with self._lost_peer_as_error():
                    self._evaluate_teacher()
            with StopRequest() as self.stop, self._lost_peer_as_error():
                self._train(self.stop)
            summary = self._finish("completed")
            self._say(self.task.done_line(summary))
            return summary
        except NonFiniteLossError as error:
            self._finish("failed", str(error))
            raise
        except TrainingInterrupted:
            self._finish("interrupted")
            raise
        except LostPeerError as error:
            self._finish("failed", str(error))
            raise
        finally:
            self.log.close()

    def _print_header(self) -> None:
        cfg, distiller, processes = self.cfg, self.distiller, self.processes.world_size
        student_params = sum(p.numel() for p in distiller.student.parameters())
        teacher = f", teacher {cfg.teacher.name or '?'} ({cfg.teacher.checkpoint})" if distiller.teacher else ""
        sharing = f", {processes} processes sharing the global batch of {cfg.train.batch_size}" if processes > 1 else ""
        if processes > 1 and cfg.train.grad_compression != "none":
            sharing += f", gradients all-reduced in {cfg.train.grad_compression}"
        if cfg.train.shard_heads and processes > 1:
            sharing += f", heads sharded over the {processes} processes" if self.sharded else ", no heads to shard"
        elif cfg.train.shard_heads:
            sharing += ", train.shard_heads has no effect with one process"
        threads = f"{torch.get_num_threads()} threads" + (" (auto)" if not cfg.train.threads else "")
        schedule = self.schedule
        self._say(
            f"{self.task.command}: method {cfg.method}, student {cfg.student} ({student_params / 1e6:.3f}M params), "
            f"heads {distiller.num_head_parameters() / 1e6:.3f}M params{teacher}"
        )
        for line in self.data.lines:
            self._say(line)
        self._say(
            f"device {self.device}, {threads}, amp {cfg.amp}, {schedule.total} {schedule.unit}s, "
            f"{schedule.steps_per_epoch} steps/epoch{sharing}, run dir {cfg.run.dir}"
        )
        state = self.state
        if schedule.by_epoch and state.epoch_steps:
            self._say(f"resuming epoch {state.epoch + 1} after step {state.epoch_steps}")
        elif state.global_step:
            self._say(f"resuming after {schedule.unit} {schedule.done(state.epoch, state.global_step)}")

    def _say(self, line: str) -> None:
        if self.main:
            tqdm.write(line)

    def _evaluate_teacher(self) -> None:
        result = self.task.evaluate_teacher(self.cfg, self.distiller, self.data, self.autocast, self._say)
        self.state.teacher_eval = result or {}
        assert self.log is not None
        self.log.log_scalars({f"teacher/{k}": v for k, v in self.state.teacher_eval.items()}, 0)

    def _train(self, stop: StopRequest) -> None:
        state, schedule = self.state, self.schedule
        self.distiller.train()
        while not schedule.finished(state.epoch, state.global_step):
            loader = self.data.train_loader
            loader.set_epoch(schedule.first_epoch + state.epoch, start=state.epoch_steps)
            if not self._train_epoch_rest(stop):
                return
            if not schedule.by_epoch:  # an iteration schedule's periods end within the epochs
                state.epoch, state.epoch_steps = state.epoch + 1, 0
                continue
            progress, self.partial = self._progress(), None
            self._check_finite(progress)  # before the epoch counts as completed
            state.epoch, state.epoch_steps = state.epoch + 1, 0
            self._end_period(progress, evaluate=schedule.eval_due(state.epoch))
            if self._stop_agreed(stop) and not schedule.finished(state.epoch, 0):
                self._raise_interrupted(f"after epoch {state.epoch}")

    def _train_epoch_rest(self, stop: StopRequest) -> bool:
        """Train the epoch's remaining batches; False when an iteration schedule ended within it."""
        state, schedule = self.state, self.schedule
        display = self._display()
        try:
            for batch in timed_batches(iter(self.data.train_loader), self._progress):
                self._step(batch)
                display.step()
                if state.global_step % self.cfg.train.log_interval == 0:
                    self._report_interval(display)
                if not schedule.by_epoch and self._after_iteration():
                    return False
                if schedule.by_epoch and self._mid_epoch_checkpoint_due():
                    self._save_checkpoint()
                self._check_stop(stop)
            return True
        finally:
            display.close()

    def _progress(self) -> PeriodProgress:
        """The current period's progress (a new one at a period's start)."""
        if self.partial is None:
            epoch = self.schedule.first_epoch + self.state.epoch
            self.partial = PeriodProgress(epoch, dtype=self.task.loss_dtype)
        return self.partial

    def _display(self) -> ProgressDisplay:
        state, schedule, enabled = self.state, self.schedule, self.main
        if schedule.by_epoch:
            epoch = f"epoch {state.epoch + 1}/{schedule.total}"
            return ProgressDisplay(schedule.steps_per_epoch, epoch, state.epoch_steps, enabled=enabled)
        return ProgressDisplay(schedule.total, "train", state.global_step, enabled=enabled)

    def _step(self, batch: Any) -> None:
        """One optimiser step at the schedule's learning rate; its terms and counts added to the period."""
        state, progress = self.state, self._progress()
        start = time.perf_counter()
        self.schedule.set_lr(self.optimizer, state.epoch, state.global_step)
        position = self.schedule.position(state.epoch, state.global_step)
        arguments, images = self.task.step_arguments(batch, position)
        outputs, losses = optimizer_step(self.step_model, self.optimizer, self.grad_scaler, self.autocast, arguments)
        state.global_step += 1
        state.epoch_steps += 1
        progress.add(losses, self.task.train_counts(outputs, batch), images, state.global_step)
        progress.elapsed_s += time.perf_counter() - start
        if self.on_step is not None:
            self.on_step(self.schedule.first_epoch + state.epoch, state.epoch_steps, state.global_step)

    def _report_interval(self, display: ProgressDisplay) -> None:
        """Sync once, stop on a non-finite loss, show loss / metrics / img/s of the period so far."""
        progress = self._progress()
        means, counts, images = progress.read()
        self._check_finite(progress, means)
        loss = sum(means.values())
        metrics = self.task.train_metrics(counts, images)
        images_per_s = images / max(progress.elapsed_s + progress.wait_s, 1e-9)
        display.show(loss, metrics, images_per_s)
        scalars = {f"train/{k}": v for k, v in {**means, **metrics}.items()}
        scalars.update({"train/loss": loss, "train/images_per_s": images_per_s})
        assert self.log is not None
        self.log.log_scalars(scalars, self.state.global_step)

    def _mid_epoch_checkpoint_due(self) -> bool:
        """An epoch schedule's `checkpoint_every` step within an epoch (its end saves one anyway)."""
        state = self.state
        return self.schedule.checkpoint_due(state.global_step) and state.epoch_steps < self.schedule.steps_per_epoch

    def _after_iteration(self) -> bool:
        """An iteration schedule's events after a step: the period's end, a checkpoint; True at the end."""
        state, schedule = self.state, self.schedule
        if schedule.period_ends(state.global_step):
            assert self.partial is not None
            self._end_period(self.partial, evaluate=schedule.eval_due(state.global_step))
            self.partial = None
        elif schedule.checkpoint_due(state.global_step):
            self._save_checkpoint()
        return schedule.finished(state.epoch, state.global_step)

    def _check_stop(self, stop: StopRequest) -> None:
        """Save and stop at a Ctrl-C; processes agree where they synchronise anyway (at log intervals)."""
        state, schedule = self.state, self.schedule
        agree = state.global_step % self.cfg.train.log_interval == 0 or not self.processes.distributed
        if not agree or not self._stop_agreed(stop):
            return
        if schedule.by_epoch and state.epoch_steps == schedule.steps_per_epoch:
            return  # the epoch's end saves and stops
        if self.partial is not None:
            self._check_finite(self.partial)
        self._save_checkpoint()
        if schedule.by_epoch:
            self._raise_interrupted(f"during epoch {state.epoch + 1}, after step {state.epoch_steps}")
        self._raise_interrupted(f"after iteration {state.global_step}")

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Whether any process was asked to stop; every process takes the request, and what asked (a preemption
        signal to one process stops them all resumably). One small collective, where processes meet anyway."""
        code = self.processes.max(stop.code, self.device)
        stop.adopt(code)
        return bool(code)

    @contextmanager
    def _lost_peer_as_error(self) -> Iterator[None]:
        """A collective that failed because a peer process died or did not answer within train.dist_timeout, as one
        LostPeerError line. SIGTERM (torchrun's stop, which follows) is ignored from then on, so that the line gets
        out: the process is expected to exit (its process group is broken)."""
        try:
            yield
        except RuntimeError as error:
            if not (self.processes.distributed and lost_peer_error(error)):
                raise
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # kept by StopRequest's exit
            raise LostPeerError(self._lost_peer_line(error)) from None

    def _lost_peer_line(self, error: RuntimeError) -> str:
        processes, state, schedule = self.processes, self.state, self.schedule
        lost = lost_ranks(processes)
        who = ("rank " + ", ".join(map(str, lost))) if lost else "a peer process"
        message = str(error).lower()
        timed_out = "timed out" in message or "timeout" in message
        cause = (
            f"no answer within train.dist_timeout={self.cfg.train.dist_timeout} s"
            if timed_out
            else "its process is gone"
            if lost
            else "its connection closed"
        )
        at = f"after iteration {state.global_step}"
        if schedule.by_epoch:
            at = f"in epoch {state.epoch + 1}, after step {state.epoch_steps}"
        kept = (
            f"the last checkpoint is {self.run_dir.checkpoint()} ({self.saved_at})"
            if self.saved_at
            else "no checkpoint had been written yet"
        )
        return (
            f"lost {who} of the {processes.world_size} torchrun processes {at} ({cause}); rank {processes.rank} "
            f"stops too; {kept}. Continue with the same torchrun command and `{self.task.command} --resume "
            f"{self.run_dir}`, or run.resume=auto (with which torchrun --max-restarts resumes by itself)"
        )

    def _check_finite(self, progress: PeriodProgress, means: dict[str, float] | None = None) -> None:
        """Raise NonFiniteLossError naming the first loss term that was NaN or infinite, and where."""
        means = progress.read()[0] if means is None else means
        kept = (
            f"the last good checkpoint is kept: {self.run_dir.checkpoint()} ({self.saved_at})"
            if self.saved_at
            else "no checkpoint had been written yet"
        )
        schedule, first = self.schedule, self.state.global_step - progress.steps_done

        def where(step: int) -> str:
            if schedule.by_epoch:
                return f"epoch {progress.epoch}, step {step - first} of {schedule.steps_per_epoch} (global step {step})"
            return f"iteration {step}"

        progress.raise_if_non_finite(means, where, kept)

    def _end_period(self, progress: PeriodProgress, evaluate: bool) -> None:
        """The period's record (with an evaluation when due), written, shown, and the checkpoint it calls for."""
        means, counts, images = progress.read()
        if not self.schedule.by_epoch:  # an epoch's end has checked before it was counted
            self._check_finite(progress, means)
        state, schedule = self.state, self.schedule
        record = self._record(progress, means, self.task.train_metrics(counts, images))
        is_best = False
        if evaluate:
            result = self.task.evaluate(self.cfg, self.distiller, self.data, self.autocast)
            record.update(result)
            state.last_eval = result
            value = result.get(self.task.main_metric)
            is_best = value is not None and (state.best is None or value > state.best)
            if is_best:
                state.best, state.best_at = value, record[schedule.unit]
        if schedule.by_epoch:
            with gathered_heads(self.distiller):  # the FAM logs read the heads (sharded: on process 0 alone)
                extras = self.task.epoch_extras(
                    self.cfg, self.distiller, self.data, self.run_dir, state.epoch, self.main
                )
            record.update(extras)
        assert self.log is not None
        self.log.log_epoch(record)  # before the checkpoint: a crash in between replays this period on resume
        if evaluate or schedule.by_epoch or schedule.checkpoint_due(state.global_step):
            self._save_checkpoint(partial=False)
        if evaluate:
            self._export_student(is_best)
        seconds_per_step = progress.elapsed_s / max(progress.steps_done, 1)
        text = self.task.metric_text(record)
        self._say(format_record(record, schedule.unit, schedule.total, text, seconds_per_step))

    def _record(self, progress: PeriodProgress, means: dict[str, float], metrics: dict[str, float]) -> dict[str, Any]:
        state, schedule = self.state, self.schedule
        done = schedule.done(state.epoch, state.global_step)
        if schedule.by_epoch:
            where: dict[str, Any] = {"epoch": done, "global_step": state.global_step}
            lr = self.optimizer.param_groups[0]["lr"]  # the epoch's
        else:
            where = {"iteration": done, "global_step": state.global_step, "epoch": state.epoch}
            lr = schedule.lr(state.epoch, state.global_step)  # the next iteration's
        weights = self.distiller.term_weights(schedule.position(state.epoch, state.global_step) - 1)
        record = {**where, "lr": lr, "loss": sum(means.values()), **means}
        record.update({f"weight_{name}": weight for name, weight in weights.items()})
        record.update(metrics)
        if schedule.by_epoch:
            busy_s = progress.elapsed_s + progress.wait_s
            record.update(
                epoch_time_s=busy_s,
                images_per_s=progress.images_seen / busy_s,
                data_wait_fraction=progress.wait_s / busy_s,
            )
        else:
            record["interval_time_s"] = progress.elapsed_s + progress.wait_s
        return record

    def _export_student(self, is_best: bool) -> None:
        """student_last.pt (and with `is_best`, checkpoints/best.pt and student_best.pt), written by process 0."""
        if not self.main:
            return
        student_state = self.distiller.student.state_dict()
        save_checkpoint(self.run_dir.student(), student_state)
        if is_best:
            last, best = self.run_dir.checkpoint(), self.run_dir.checkpoint(best=True)
            copy_file_atomic(last, best)
            copy_file_atomic(checksum_path(last), checksum_path(best))
            save_checkpoint(self.run_dir.student(best=True), student_state)

    def _save_checkpoint(self, partial: bool = True) -> None:
        """checkpoints/last.pt, written by process 0; every process calls this at the same step. With `partial`,
        the current period's progress is saved too (with several processes, each one's, gathered)."""
        progress = self.partial if partial and self.partial is not None and self.partial.steps_done else None
        partial_state = progress.state_dict() if progress is not None else None
        if partial_state is not None and self.processes.distributed:
            partial_state["processes"] = gather_objects(dict(partial_state))
        trained = self._trained_state()
        if self.main:
            self._write_checkpoint(partial_state, trained)
        self.saved_at = self._position_text()

    def _trained_state(self) -> dict[str, Any]:
        """The student's, the heads' and the optimiser's state dicts for a checkpoint; sharded heads and their
        optimiser state are gathered on process 0 (famkd.engine.sharding), every process taking part."""
        if self.sharded:
            gathered = full_training_state(self.distiller, self.optimizer)
        else:
            gathered = {"heads": self.distiller.head_state_dict(), "optimizer": self.optimizer.state_dict()}
        return {"student": self.distiller.student.state_dict(), **gathered}

    def _write_checkpoint(self, partial_state: dict[str, Any] | None, trained: dict[str, Any]) -> None:
        """checkpoints/last.pt with its checksum, the previous ones kept; a full disk is one line saying what to do."""
        path = self.run_dir.checkpoint()
        state = {
            "task": self.task.name,
            **trained,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            **dataclasses.asdict(self.state),
            "wall_time_s": self._wall_time(),
            "rng": capture_rng_state(),
            "partial_period": partial_state,
            "config": settings_to_dict(self.cfg),
            "versions": library_versions(),
        }
        try:
            save_training_checkpoint(path, state, self.cfg.run.keep_checkpoints)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free_mb = shutil.disk_usage(path.parent).free / 2**20
            kept = (
                f"the last good checkpoint is kept: {path} ({self.saved_at})" if self.saved_at else "none was written"
            )
            raise FamkdError(
                f"cannot write {path}: no space left on the device ({free_mb:.0f} MiB free in {path.parent}); {kept}. "
                f"Free some space, then continue with: {self.task.command} --resume {self.run_dir}"
            ) from None

    def _position_text(self) -> str:
        """Where the run stands, e.g. "epoch 3" (epochs completed) or "iteration 500"."""
        return f"{self.schedule.unit} {self.schedule.done(self.state.epoch, self.state.global_step)}"

    def _raise_interrupted(self, where: str) -> None:
        by_signal = self.stop.by_signal if self.stop is not None else ""
        resume = f"{self.task.command} --resume {self.run_dir}"
        how = f"the same torchrun command and `{resume}` (or run.resume=auto)" if self.processes.distributed else resume
        raise TrainingInterrupted(
            f"{'stopped by ' + by_signal if by_signal else 'interrupted'} {where}; saved {self.run_dir.checkpoint()}. "
            f"Continue with: {how}",
            exit_status=EXIT_RESUMABLE if by_signal else EXIT_CTRL_C,
        )

    def _wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.session_start

    def _finish(self, status: str, error: str = "") -> dict[str, Any]:
        cfg, distiller = self.cfg, self.distiller
        summary = {
            "status": status,
            "task": self.task.name,
            "method": cfg.method,
            "student": cfg.student,
            "teacher": cfg.teacher.name if distiller.teacher is not None else None,
            **self.task.summary(cfg, self.state, self.data),
            "wall_time_s": self._wall_time(),
            "student_params": sum(p.numel() for p in distiller.student.parameters()),
            "head_params": distiller.num_head_parameters(),
            "teacher_sha256": self.teacher_sha256,
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
