"""One training step as famkd takes it, shared by the trainer and `famkd bench`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

StepModel = Callable[..., tuple[Tensor, dict[str, Tensor]]]


def optimizer_step(
    step_model: StepModel,
    optimizer: torch.optim.Optimizer,
    grad_scaler: torch.amp.GradScaler | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    images: Tensor,
    labels: Tensor,
    epoch: int,
    indices: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The distiller's forward under `autocast`, the loss terms summed in float32, backward (scaled
    when `grad_scaler`, for fp16) and the optimiser step. Returns the logits and the loss terms.

    `indices` (the images' positions in the training set) go to the forward of distillers that
    need them (`needs_sample_indices`)."""
    extra = () if indices is None else (indices,)
    with autocast():
        logits, losses = step_model(images, labels, epoch, *extra)
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
