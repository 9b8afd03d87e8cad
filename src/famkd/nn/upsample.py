"""Nearest-neighbour upsampling by whole factors, with as few full-size copies as possible.

For an output side that is a multiple of the input side, F.interpolate(mode="nearest") repeats
each pixel in an f x f block. Splitting each output side into (input side, f) makes that a
broadcast of the small map, so a product or sum with a full-size map needs no upsampled copy at
all (`add_upsampled`), and an upsampled copy is one expand + reshape (`upsample_nearest`) rather
than F.interpolate's output plus a contiguous clone on CPU. Other sizes fall back to F.interpolate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def whole_factors(size: tuple[int, int], low: Tensor) -> tuple[int, int] | None:
    """(fh, fw) when `size` is a whole multiple of low's (h, w), else None."""
    (height, width), (low_height, low_width) = size, low.shape[-2:]
    if height % low_height or width % low_width:
        return None
    return height // low_height, width // low_width


def as_blocks(x: Tensor, factors: tuple[int, int]) -> Tensor:
    """(B, C, H, W) viewed as (B, C, H/fh, fh, W/fw, fw)."""
    batch, channels, height, width = x.shape
    fh, fw = factors
    return x.view(batch, channels, height // fh, fh, width // fw, fw)


def upsample_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """F.interpolate(x, size, mode="nearest"), one copy for whole factors."""
    factors = whole_factors(size, x)
    if factors is None:
        return F.interpolate(x, size=size, mode="nearest")
    batch, channels, height, width = x.shape
    blocks = x[:, :, :, None, :, None].expand(batch, channels, height, factors[0], width, factors[1])
    return blocks.reshape(batch, channels, *size)


def add_upsampled(base: Tensor, low: Tensor, scale: Tensor | None = None) -> Tensor:
    """base + upsample_nearest(low) * scale (or without `scale`), to base's size, never forming the
    upsampled map for whole factors. base: (B, C, H, W); low: (B, C or 1, h, w); scale: (B, 1 or C, H, W)."""
    size = tuple(base.shape[-2:])
    factors = whole_factors(size, low)
    if factors is None:
        upsampled = F.interpolate(low, size=size, mode="nearest")
        return base + upsampled if scale is None else torch.addcmul(base, upsampled, scale)
    low_blocks = low[:, :, :, None, :, None]
    if scale is None:
        out = as_blocks(base, factors) + low_blocks
    else:
        out = torch.addcmul(as_blocks(base, factors), low_blocks, as_blocks(scale, factors))
    return out.reshape(out.shape[0], out.shape[1], *size)
