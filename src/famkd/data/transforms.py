"""Batched augmentation on uint8 image tensors, on whatever device the images live on.

Random crop with zero padding and horizontal flip match torchvision's
`RandomCrop(size, padding)` then `RandomHorizontalFlip()`, applied to a whole batch with
tensor ops (no per-sample Python loop). The random draws are split from their use
(`crop_offsets`/`flip_mask` then `crop_padded`/`flip_where`) so a loader can draw a whole
epoch's parameters from one seeded generator and replay them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) images by `padding` pixels on every side -> (N, C, H+2p, W+2p)."""
    return F.pad(images, (padding, padding, padding, padding))


def crop_offsets(count: int, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int64 (count, 2): (top, left) of each crop in the padded image, uniform in [0, 2*padding]."""
    device = generator.device if generator is not None else None
    return torch.randint(0, 2 * padding + 1, (count, 2), generator=generator, device=device)


def flip_mask(count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool (count,): which images to mirror, each with probability 1/2."""
    device = generator.device if generator is not None else None
    return torch.rand(count, generator=generator, device=device) < 0.5


def crop_padded(padded: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """The size x size windows padded[indices[b], :, top:top+size, left:left+size] -> (B, C, size, size).

    One gather over a strided view of every window, so no padded copy of the batch is made.
    """
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, positions, positions, size, size)
    return windows[indices, :, offsets[:, 0], offsets[:, 1]]


def flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (B, C, H, W) images along W where the bool (B,) mask `flips` is set."""
    return torch.where(flips[:, None, None, None], images.flip(3), images)


def normalization_constants(
    mean: Sequence[float], std: Sequence[float], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (1, C, 1, 1) scale 1/(255 std) and shift -mean/std, so normalising is one multiply-add."""
    mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale = (1.0 / (255.0 * std64)).to(torch.float32)
    shift = (-mean64 / std64).to(torch.float32)
    return scale.to(device), shift.to(device)
