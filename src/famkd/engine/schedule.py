"""The optimiser and the schedule: SGD over the student and the heads, and one schedule for both units.

A `Schedule` is either `train.epochs` long (classification's recipes: lr x lr_decay after each epoch in
lr_milestones, a metrics record, an evaluation and a checkpoint at every epoch's end) or `train.iterations`
long (detection's recipes: Detectron2's WarmupMultiStepLR, a record every log_interval iterations, an
evaluation every eval_every iterations and at the end, a checkpoint every checkpoint_every). It says what is
due after each step; the trainer does it.
"""

from __future__ import annotations

import bisect
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from famkd.config import TrainConfig
from famkd.distill.base import Distiller

# The normalisation layers whose parameters `train.norm_weight_decay=false` leaves undecayed (Detectron2's list).
NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


IMPLEMENTATION_FLAGS = ("fused", "foreach")  # SGD settings that choose the kernel, not the arithmetic


def norm_parameter_ids(module: nn.Module) -> set[int]:
    """The ids of the parameters that belong to a normalisation layer (NORM_LAYERS) of `module`."""
    return {
        id(parameter)
        for layer in module.modules()
        if isinstance(layer, NORM_LAYERS)
        for parameter in layer.parameters(recurse=False)
    }


def build_optimizer(distiller: Distiller, train_cfg: TrainConfig) -> torch.optim.SGD:
    """SGD (momentum, weight decay, optional Nesterov) over the student's and the heads' trainable parameters.

    The frozen teacher is left out; weight decay applies to every trained parameter, as in the
    published CIFAR recipes, unless `train.norm_weight_decay` is false: then the parameters of the
    normalisation layers (NORM_LAYERS) form a second group without weight decay, as Detectron2's
    SOLVER.WEIGHT_DECAY_NORM 0 leaves them. The fused kernel is used where the parameters' device has one
    (one pass over each parameter instead of several: FAM-KD's heads hold tens of millions), unless a parameter
    is not contiguous (FAM's frequency-major filter): the fused kernel copies such a parameter, its gradient and
    its momentum to contiguous tensors and back on every step, and the foreach path, which reads them in place,
    is faster (resnet32x4 -> resnet8x4's 25M FAM filter parameters on 2 CPU threads: 37 ms a step against 51 ms;
    4 ms fused were they contiguous). With sharded heads (`train.shard_heads`: DTensors beside the student's plain
    tensors, which the fused and foreach kernels do not take together) SGD updates one parameter at a time.
    """
    parameters = list(distiller.student_parameters()) + list(distiller.head_parameters())
    groups: list[Any] = parameters
    if not train_cfg.norm_weight_decay:
        norms = norm_parameter_ids(distiller)
        undecayed = [parameter for parameter in parameters if id(parameter) in norms]
        if undecayed:
            decayed = [parameter for parameter in parameters if id(parameter) not in norms]
            groups = [{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}]
    options: dict[str, Any] = {
        "lr": train_cfg.lr,
        "momentum": train_cfg.momentum,
        "weight_decay": train_cfg.weight_decay,
        "nesterov": train_cfg.nesterov,
    }
    if any(isinstance(parameter, DTensor) for parameter in parameters):
        return torch.optim.SGD(groups, foreach=False, **options)
    if not all(parameter.is_contiguous() for parameter in parameters):
        return torch.optim.SGD(groups, foreach=True, **options)
    try:
        return torch.optim.SGD(groups, fused=True, **options)
    except RuntimeError:  # no fused SGD for this device or dtype in this torch version
        return torch.optim.SGD(groups, **options)


def with_own_implementation(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """The optimiser state dict `saved` with `optimizer`'s own implementation choice (fused, foreach) in its
    groups: loading a state dict takes its groups' settings, and a checkpoint of a run with sharded heads (one
    parameter at a time) and one of a run without (fused) are resumed either way."""
    groups = [
        {**group, **{flag: own[flag] for flag in IMPLEMENTATION_FLAGS if flag in own}}
        for group, own in zip(saved["param_groups"], optimizer.param_groups)
    ]
    return {**saved, "param_groups": groups}


def lr_factor(units_done: int, iterations_done: int, train_cfg: TrainConfig) -> float:
    """The learning rate's factor for the next step: x lr_decay for each milestone <= `units_done` (the epochs
    or iterations already completed), times the linear warm-up from warmup_factor over warmup_iters iterations
    (Detectron2's WarmupMultiStepLR). With milestones [150, 180, 210] (epochs), epoch 151 is the first at 0.1x."""
    warmup = 1.0
    if iterations_done < train_cfg.warmup_iters:
        alpha = iterations_done / train_cfg.warmup_iters
        warmup = train_cfg.warmup_factor * (1 - alpha) + alpha
    return warmup * train_cfg.lr_decay ** bisect.bisect_right(sorted(train_cfg.lr_milestones), units_done)


class Schedule:
    """What is due after each step of a run of `train_cfg`, for `steps_per_epoch` batches per epoch.

    In an epoch schedule the distillers' position is the epoch being trained (from 1) and a period is an
    epoch; in an iteration schedule the position is the iteration (from 1), a period is a log interval
    (cut short by an evaluation), and the data's epochs are numbered from 0 (Detectron2's order).
    """

    def __init__(self, train_cfg: TrainConfig, steps_per_epoch: int):
        self.cfg = train_cfg
        self.by_epoch = train_cfg.epochs > 0
        self.unit = "epoch" if self.by_epoch else "iteration"
        self.total = train_cfg.epochs if self.by_epoch else train_cfg.iterations
        self.steps_per_epoch = steps_per_epoch
        self.first_epoch = 1 if self.by_epoch else 0

    def done(self, epochs_completed: int, global_step: int) -> int:
        """The units completed (epochs or iterations)."""
        return epochs_completed if self.by_epoch else global_step

    def finished(self, epochs_completed: int, global_step: int) -> bool:
        return self.done(epochs_completed, global_step) >= self.total

    def position(self, epochs_completed: int, global_step: int) -> int:
        """The distillers' position of the next step: its epoch (from 1) or its iteration (from 1)."""
        return epochs_completed + 1 if self.by_epoch else global_step + 1

    def lr_factor(self, epochs_completed: int, global_step: int) -> float:
        return lr_factor(self.done(epochs_completed, global_step), global_step, self.cfg)

    def lr(self, epochs_completed: int, global_step: int) -> float:
        """The learning rate of the next step: train.lr times its factor."""
        return self.cfg.lr * self.lr_factor(epochs_completed, global_step)

    def set_lr(self, optimizer: torch.optim.Optimizer, epochs_completed: int, global_step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.lr(epochs_completed, global_step)

    def eval_due(self, done: int) -> bool:
        """Whether the unit just completed (`done` of them) ends with an evaluation."""
        every = self.cfg.eval_every
        return done == self.total or bool(every) and done % every == 0

    def period_ends(self, global_step: int) -> bool:
        """In an iteration schedule, whether the step just taken ends a log period (epoch schedules: at epoch end)."""
        if self.by_epoch:
            return False
        return global_step % self.cfg.log_interval == 0 or self.eval_due(global_step)

    def checkpoint_due(self, global_step: int) -> bool:
        """Whether the step just taken is one of the `checkpoint_every` steps (ends of epochs save one anyway)."""
        every = self.cfg.checkpoint_every
        return bool(every) and global_step % every == 0
