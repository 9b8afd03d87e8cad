"""Optimiser and learning-rate schedule: SGD over student and head parameters, multistep decay per epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import MultiStepLR

from famkd.config import TrainConfig
from famkd.distill.base import Distiller


def build_optimizer(distiller: Distiller, train_cfg: TrainConfig) -> torch.optim.SGD:
    """SGD (momentum, weight decay, optional Nesterov) over the student's and the heads' parameters.

    The frozen teacher is left out; weight decay applies to every trained parameter, as in the
    published CIFAR recipes. The fused kernel is used where the parameters' device has one (one
    pass over each parameter instead of several: FAM-KD's heads hold tens of millions).
    """
    parameters = list(distiller.student_parameters()) + list(distiller.head_parameters())
    options: dict[str, Any] = {
        "lr": train_cfg.lr,
        "momentum": train_cfg.momentum,
        "weight_decay": train_cfg.weight_decay,
        "nesterov": train_cfg.nesterov,
    }
    try:
        return torch.optim.SGD(parameters, fused=True, **options)
    except RuntimeError:  # no fused SGD for this device or dtype in this torch version
        return torch.optim.SGD(parameters, **options)


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig) -> MultiStepLR:
    """Multiply the learning rate by `lr_decay` after each epoch listed in `lr_milestones`.

    Stepped once per epoch, so epoch e (from 1) trains with lr * lr_decay ** (number of
    milestones < e): with milestones [150, 180, 210], epoch 151 is the first at 0.1x.
    """
    return MultiStepLR(optimizer, milestones=list(train_cfg.lr_milestones), gamma=train_cfg.lr_decay)
