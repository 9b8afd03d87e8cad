"""Spectra for looking at what FAM learns: the learned filter's magnitude and radially averaged power.

Pure functions of modules and tensors, shared by the training log (famkd.classification.fam_log) and the
commands that draw them (famkd inspect, famkd report).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from famkd.fam.masks import negated_indices, signed_frequencies
from famkd.fam.module import FrequencyAttention


def fam_heads(module: nn.Module) -> list[tuple[str, FrequencyAttention]]:
    """Every FrequencyAttention inside `module` (e.g. a distiller's heads), with its module path."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, FrequencyAttention)]


@torch.no_grad()
def filter_spectrum(fam: FrequencyAttention) -> Tensor:
    """Mean over channel pairs of |K_eff(k)| on the full (S, S) grid, fftshifted so DC is central.

    Row i, column j hold ky = i - S//2, kx = j - S//2. K_eff is the conjugate-symmetric filter with the
    mask folded in (docs/method.md), so |K_eff(-k)| = |K_eff(k)| fills the half the module does not store.
    """
    half = fam.effective_half_filter().abs().mean(dim=(0, 1))
    size = fam.size
    full = torch.empty(size, size, dtype=half.dtype, device=half.device)
    full[:, : half.shape[1]] = half
    columns = torch.arange(half.shape[1], size, device=half.device)
    full[:, columns] = half[negated_indices(size, half.device)][:, (-columns) % size]  # |K_eff(-k)| = |K_eff(k)|
    return torch.fft.fftshift(full)


def frequency_radius(size: int) -> Tensor:
    """|k| = sqrt(ky^2 + kx^2) in whole cycles per side, for each FFT index of an (S, S) map (float64)."""
    k = signed_frequencies(size)
    return torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)


def radial_power_spectrum(maps: Tensor) -> Tensor:
    """Radially averaged power spectrum of square maps (..., S, S): float64 (S//2 + 1,).

    Entry r is the mean of |FFT2(x)(k)|^2 (orthonormal FFT, so the powers sum to the maps' energy) over
    the maps (every leading index) and over the frequencies k with round(|k|) = r, |k| in cycles per side
    (see `frequency_radius`). Radii above S//2, the corners beyond Nyquist on both axes, are left out.
    """
    size = maps.shape[-1]
    if maps.dim() < 2 or maps.shape[-2] != size:
        raise ValueError(f"radial_power_spectrum needs square maps (..., S, S), got shape {tuple(maps.shape)}")
    spectrum = torch.fft.fft2(maps.float(), norm="ortho")
    power = spectrum.abs().square().reshape(-1, size, size).mean(dim=0).double().cpu()
    radius = frequency_radius(size).round().long()
    inside = radius <= size // 2
    totals = torch.bincount(radius[inside], weights=power[inside], minlength=size // 2 + 1)
    counts = torch.bincount(radius[inside], minlength=size // 2 + 1)
    return totals / counts
