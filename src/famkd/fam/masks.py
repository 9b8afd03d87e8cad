"""FAM's fixed high-pass masks M, and the frequency layout they and the filter share (docs/method.md).

Frequencies are indexed as the FFT lays them out (no fftshift): along an axis of length S,
index n holds the signed frequency n for n < ceil(S/2) and n - S otherwise, so the signed
range is [-floor(S/2), ceil(S/2) - 1] with DC at index 0. A mask is a real (S, S) float64
tensor in that order.
"""

from __future__ import annotations

import torch
from torch import Tensor

HIGHPASS_FILTERS = ("ideal", "radial", "gaussian", "butterworth", "none")


def negated_indices(size: int, device: torch.device | None = None) -> Tensor:
    """(-u) mod S for each FFT index u: where the conjugate-symmetric partner of index u sits."""
    return (-torch.arange(size, device=device)) % size


def self_mirrored_columns(size: int) -> list[int]:
    """Half-spectrum columns v with -v = v (mod S): DC, and Nyquist when S is even."""
    return [0, size // 2] if size % 2 == 0 else [0]


def signed_frequencies(size: int) -> Tensor:
    """Signed integer frequency of each FFT index along an axis of length `size` (float64)."""
    return torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64).round()


def normalized_radius(size: int) -> Tensor:
    """D(k): distance of each frequency (S, S) from DC, each axis scaled so Nyquist (S/2) is 1."""
    k = signed_frequencies(size) / (size / 2)
    return torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)


def ideal_highpass_mask(size: int, cutoff: float = 0.1) -> Tensor:
    """The published FAM-KD mask: zero on a box of integer frequencies, one elsewhere.

    Units: `cutoff` is a fraction of the half-size c = floor(S/2); the box half-width is the
    integer r = int(cutoff * c) frequency bins. M(ky, kx) = 0 where both ky and kx lie in
    [-r, r - 1], else 1. With the default 0.1, r = 0 (nothing removed) for S < 20; S = 32
    removes {-1, 0}^2 and S = 56 removes {-2, ..., 1}^2. The box is not symmetric about DC,
    exactly as in the published code, so published results stay reproducible.
    """
    radius = int(cutoff * (size // 2))
    k = signed_frequencies(size)
    inside = (k >= -radius) & (k <= radius - 1)
    return (~(inside[:, None] & inside[None, :])).to(torch.float64)


def radial_highpass_mask(size: int, cutoff: float = 0.1) -> Tensor:
    """Ideal radial high-pass: M(k) = 0 where D(k) <= cutoff, else 1.

    Units: `cutoff` (D0) is a normalised frequency, 1 = Nyquist along an axis (see
    `normalized_radius`). DC is always removed.
    """
    return (normalized_radius(size) > cutoff).to(torch.float64)


def gaussian_highpass_mask(size: int, cutoff: float = 0.1) -> Tensor:
    """Gaussian high-pass: M(k) = 1 - exp(-D(k)^2 / (2 D0^2)).

    Units: `cutoff` (D0) is a normalised frequency, 1 = Nyquist along an axis.
    """
    radius = normalized_radius(size)
    return 1.0 - torch.exp(-(radius**2) / (2.0 * cutoff**2))


def butterworth_highpass_mask(size: int, cutoff: float = 0.1, order: int = 2) -> Tensor:
    """Butterworth high-pass of order n: M(k) = 1 / (1 + (D0 / D(k))^(2n)), M(DC) = 0.

    Units: `cutoff` (D0) is a normalised frequency, 1 = Nyquist along an axis.
    """
    radius = normalized_radius(size)
    mask = 1.0 / (1.0 + (cutoff / radius.clamp_min(1e-300)) ** (2 * order))
    mask[radius == 0] = 0.0
    return mask


def highpass_mask(kind: str, size: int, cutoff: float = 0.1, order: int = 2) -> Tensor:
    """The (S, S) float64 mask of high-pass filter `kind`, in FFT index order."""
    if kind == "ideal":
        return ideal_highpass_mask(size, cutoff)
    if kind == "radial":
        return radial_highpass_mask(size, cutoff)
    if kind == "gaussian":
        return gaussian_highpass_mask(size, cutoff)
    if kind == "butterworth":
        return butterworth_highpass_mask(size, cutoff, order)
    if kind == "none":
        return torch.ones(size, size, dtype=torch.float64)
    raise ValueError(f"unknown high-pass filter {kind!r}; choose one of {', '.join(HIGHPASS_FILTERS)}")
