"""Small convolution blocks shared by the distillation heads."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def projection(
    in_channels: int, out_channels: int, relu: bool, norm: Callable[[int], nn.Module] = nn.BatchNorm2d
) -> nn.Sequential:
    """1x1 bias-free convolution + `norm` of its channels (BN) (+ ReLU), kaiming_uniform(a=1) initialised."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
    layers: list[nn.Module] = [conv, norm(out_channels)]
    if relu:
        layers.append(nn.ReLU())
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(*layers)
