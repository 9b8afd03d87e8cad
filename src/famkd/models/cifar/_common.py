"""Small pieces shared by the CIFAR model families."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_num_classes(num_classes: int) -> int:
    """`num_classes` itself, after checking that it is a positive int."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (e.g. 100 for CIFAR-100), got {num_classes!r}")
    return num_classes


def run_blocks(blocks: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run blocks that each return `(output, preact)`; give the last block's pair."""
    preact = x
    for block in blocks:
        x, preact = block(x)
    return x, preact


def run_stages(stages: tuple[nn.Sequential, ...], x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Run stages built of `(output, preact)` blocks; give every stage's output and preact."""
    outputs, preacts = [], []
    for stage in stages:
        x, preact = run_blocks(stage, x)
        outputs.append(x)
        preacts.append(preact)
    return outputs, preacts


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(B, C, H, W) -> same shape; channel i * (C // groups) + k moves to k * groups + i (ShuffleNet's interleave).

    The result keeps x's memory format (NCHW or channels-last) so the next conv needs no layout change.
    """
    if groups == 1:
        return x
    batch, channels, height, width = x.shape
    shuffled = torch.empty_like(x)
    source = x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2)
    shuffled.view(batch, channels // groups, groups, height, width).copy_(source)
    return shuffled


def init_conv_kaiming_fan_out(model: nn.Module) -> None:
    """He-normal (fan-out, ReLU gain) conv weights, zero conv biases: the zoo's conv init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
