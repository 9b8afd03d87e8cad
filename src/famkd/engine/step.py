"""One training step as famkd takes it, shared by the trainer, `famkd bench` and the detection benchmark."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

StepModel = Callable[..., tuple[Any, dict[str, Tensor]]]


def optimizer_step(
    step_model: StepModel,
    optimizer: torch.optim.Optimizer,
    grad_scaler: torch.amp.GradScaler | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    arguments: Sequence[Any],
) -> tuple[Any, dict[str, Tensor]]:
    """The distiller's forward `step_model(*arguments)` under `autocast`, the loss terms summed in float32,
    backward (scaled when `grad_scaler`, for fp16) and the optimiser step. Returns the distiller's outputs (the
    logits, for classification) and the loss terms.

    `arguments` are what the task makes of a batch and the position (famkd.engine.task): (images, labels, epoch)
    for classification, with the images' positions in the training set last for distillers that need them
    (`needs_sample_indices`); (images, targets, iteration) for detection."""
    with autocast():
        outputs, losses = step_model(*arguments)
    loss = torch.stack([term.float() for term in losses.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return outputs, losses
