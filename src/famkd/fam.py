"""The Frequency Attention Module (FAM) and its high-pass masks (METHOD.md sections 1-2).

    FAM(x) = gamma1 * global(x) + gamma2 * local(x)
    global(x) = Re( IFFT2( M * (K . FFT2(x)) ) )       (orthonormal FFTs over the last two axes)
    local(x)  = 1x1 convolution with bias

K holds one dense C_in x C_out complex matrix per frequency, M is a fixed high-pass mask.

Frequencies are indexed as the FFT lays them out (no fftshift): along an axis of length S,
index n holds the signed frequency n for n < ceil(S/2) and n - S otherwise, so the signed
range is [-floor(S/2), ceil(S/2) - 1] with DC at index 0.

Because x is real, Re(IFFT2(M K X)) equals IRFFT2(K_eff X) with the conjugate-symmetric
filter K_eff(k) = (M(k) K(k) + M(-k) conj(K(-k))) / 2 (indices modulo S). The module computes
that fast form on the half spectrum; `direct_global_branch` keeps the literal definition as
a readable oracle for tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

HIGHPASS_FILTERS = ("ideal", "radial", "gaussian", "butterworth", "none")


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


def direct_global_branch(x: Tensor, kernel: Tensor, mask: Tensor) -> Tensor:
    """Literal global branch: Re(IFFT2(M * einsum(FFT2(x), K))), ortho FFTs.

    x: real (B, C_in, S, S); kernel: complex (C_in, C_out, S, S); mask: real (S, S) in FFT
    index order. Slow (full spectrum, complex einsum); kept as the definition of the method.
    """
    spectrum = torch.fft.fft2(x, norm="ortho")
    product = torch.einsum("bixy,ioxy->boxy", spectrum, kernel)
    return torch.fft.ifft2(mask * product, norm="ortho").real


class FrequencyAttention(nn.Module):
    """FAM: a learnable global frequency filter plus a 1x1 local branch, mixed by gamma1/gamma2.

    Args:
        in_channels, out_channels: C_in and C_out (C_out = the teacher feature's channels).
        size: S, the side of the square input; the filter has one C_in x C_out matrix per
            frequency, so any other input size is an error.
        hpf: high-pass filter, one of "ideal" (the published rule, default), "radial",
            "gaussian", "butterworth", "none"; see the `*_highpass_mask` functions for units.
        cutoff: the filter's cutoff (a fraction of floor(S/2) for "ideal", else the
            normalised frequency D0).
        order: Butterworth order n.

    The complex filter K is stored as a real parameter `global_filter` of shape
    (C_in, C_out, S, S, 2) (real, imaginary), so no complex tensor enters optimisers or
    collective communication. Under autocast the global branch runs in float32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        hpf: str = "ideal",
        cutoff: float = 0.1,
        order: int = 2,
    ):
        super().__init__()
        if min(in_channels, out_channels, size) < 1:
            raise ValueError(f"FrequencyAttention needs positive sizes, got C_in={in_channels}, C_out={out_channels}, S={size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size = size
        self.hpf = hpf
        self.cutoff = cutoff
        self.order = order
        scale = 1.0 / (in_channels * out_channels)
        kernel = scale * torch.rand(in_channels, out_channels, size, size, dtype=torch.complex64)
        self.global_filter = nn.Parameter(torch.view_as_real(kernel).clone())
        self.local = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.gamma1 = nn.Parameter(torch.full((1,), 0.5))
        self.gamma2 = nn.Parameter(torch.full((1,), 0.5))

        mask = highpass_mask(hpf, size, cutoff, order)
        half = size // 2 + 1
        negated = (-torch.arange(size)) % size
        # float64 masks (cast on use, so a float64 module is exact); M(k) and M(-k) on the half
        # spectrum, and the index maps k -> -k used to build K_eff.
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("mask_half", mask[:, :half].clone(), persistent=False)
        self.register_buffer("mask_negated_half", mask[negated][:, negated[:half]].clone(), persistent=False)
        self.register_buffer("negated_rows", negated, persistent=False)
        self.register_buffer("negated_cols", negated[:half].clone(), persistent=False)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, size={self.size}, hpf={self.hpf!r}, cutoff={self.cutoff}"

    @property
    def kernel(self) -> Tensor:
        """K as a complex (C_in, C_out, S, S) view of `global_filter`."""
        return torch.view_as_complex(self.global_filter)

    def effective_half_filter(self) -> Tensor:
        """K_eff on the half spectrum, complex (C_in, C_out, S, S//2 + 1), mask folded in."""
        kernel = self.kernel
        half = self.size // 2 + 1
        negated = kernel.index_select(2, self.negated_rows).index_select(3, self.negated_cols)
        return 0.5 * (self.mask_half.to(kernel.real.dtype) * kernel[..., :half]
                      + self.mask_negated_half.to(kernel.real.dtype) * negated.conj())

    def global_branch(self, x: Tensor) -> Tensor:
        """IRFFT2(K_eff . RFFT2(x)): equal to `direct_global_branch` for real x."""
        batch, size = x.shape[0], self.size
        spectrum = torch.fft.rfft2(x, norm="ortho")
        half = spectrum.shape[-1]
        filt = self.effective_half_filter().to(spectrum.dtype)
        # One C_in x C_out complex matrix per frequency: a batched GEMM over frequencies.
        lhs = spectrum.reshape(batch, self.in_channels, -1).permute(2, 0, 1)
        rhs = filt.reshape(self.in_channels, self.out_channels, -1).permute(2, 0, 1)
        product = torch.bmm(lhs, rhs).permute(1, 2, 0).reshape(batch, self.out_channels, size, half)
        return torch.fft.irfft2(product, s=(size, size), norm="ortho")

    def check_input(self, x: Tensor) -> None:
        expected = (self.in_channels, self.size, self.size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"FrequencyAttention expects input (B, {self.in_channels}, {self.size}, {self.size}), "
                f"got {tuple(x.shape)}: its filter is built for {self.in_channels} channels at "
                f"{self.size}x{self.size}; resize the feature or build the module for this shape"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            global_out = self.global_branch(x.to(compute_dtype))
        return self.gamma1 * global_out + self.gamma2 * self.local(x)
