"""Windowed per-channel cross-attention used to fuse a level with the deeper residual (METHOD.md 3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WINDOW = 3


class CrossAttention(nn.Module):
    """Per-channel 3x3 windowed attention: queries from the residual, keys and values from x.

    For channel c, location p and window offset j = 3 * row + col:
        logit = q[c, p] * (k[c, p + j] + rel[c, j]),   out[c, p] = sum_j softmax_j(logit) v[c, p + j]
    with q = Wq r, k = Wk x, v = Wv x (bias-free 1x1 convolutions) and zero padding of 1, so
    out-of-image window cells have k = v = 0 but still enter the softmax through rel.
    rel[c, j] is rel_h[c, row] for the first C/2 channels and rel_w[c - C/2, col] for the rest.

    The window is read as 9 shifted views of the padded keys and values; no unfolded
    (9x) copy of them is made.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels % 2:
            raise ValueError(f"CrossAttention needs an even channel count (rel_h/rel_w split it in halves), got {channels}")
        self.channels = channels
        self.query = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.key = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.rel_h = nn.Parameter(torch.empty(channels // 2, WINDOW))
        self.rel_w = nn.Parameter(torch.empty(channels // 2, WINDOW))
        for conv in (self.query, self.key, self.value):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.rel_h, 0.0, 1.0)
        nn.init.normal_(self.rel_w, 0.0, 1.0)

    def relative_logit_bias(self) -> Tensor:
        """rel as (C, 9): one bias per channel and window offset j = 3 * row + col."""
        half = self.channels // 2
        rows = self.rel_h[:, :, None].expand(half, WINDOW, WINDOW)
        cols = self.rel_w[:, None, :].expand(half, WINDOW, WINDOW)
        return torch.cat([rows, cols]).reshape(self.channels, WINDOW * WINDOW)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        if residual.shape != x.shape:
            raise ValueError(f"CrossAttention needs x and residual of one shape, got {tuple(x.shape)} and {tuple(residual.shape)}")
        height, width = x.shape[-2:]
        query = self.query(residual)
        keys = F.pad(self.key(x), (1, 1, 1, 1))
        values = F.pad(self.value(x), (1, 1, 1, 1))
        bias = self.relative_logit_bias().to(query.dtype)
        offsets = [(row, col) for row in range(WINDOW) for col in range(WINDOW)]
        logits = torch.stack([
            query * (keys[:, :, row:row + height, col:col + width] + bias[:, j, None, None])
            for j, (row, col) in enumerate(offsets)
        ])
        weights = torch.softmax(logits, dim=0)
        out = weights[0] * values[:, :, :height, :width]
        for j, (row, col) in enumerate(offsets[1:], start=1):
            out = out + weights[j] * values[:, :, row:row + height, col:col + width]
        return out
