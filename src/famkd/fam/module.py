"""The Frequency Attention Module (FAM), as defined in docs/method.md:

    FAM(x) = gamma1 * global(x) + gamma2 * local(x)
    global(x) = Re( IFFT2( M * (K . FFT2(x)) ) )       (orthonormal FFTs over the last two axes)
    local(x)  = 1x1 convolution with bias

K holds one dense C_in x C_out complex matrix per frequency, M is a fixed high-pass mask
(`famkd.fam.masks`, which also fixes the FFT index order of frequencies).

Because x is real, Re(IFFT2(M K X)) equals IRFFT2(K_eff X) with the conjugate-symmetric
filter K_eff(k) = (M(k) K(k) + M(-k) conj(K(-k))) / 2 (indices modulo S). The module computes
that fast form on the half spectrum (`famkd.fam.spectral`); `direct_global_branch` keeps the
literal definition as a readable oracle for tests and benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from famkd.fam.masks import highpass_mask, negated_indices
from famkd.fam.spectral import SpectralFilter, effective_filter, frequency_major


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
            "gaussian", "butterworth", "none"; see the `*_highpass_mask` functions in
            `famkd.fam.masks` for units.
        cutoff: the filter's cutoff (a fraction of floor(S/2) for "ideal", else the
            normalised frequency D0).
        order: Butterworth order n.

    The complex filter K is stored as a real parameter `global_filter` of shape
    (C_in, C_out, S, S, 2) (real, imaginary), so no complex tensor enters optimisers or
    collective communication; its memory is frequency-major (see `frequency_major`). Under
    autocast the global branch runs in float32.
    """

    mask: Tensor
    half_weight: Tensor
    negated_weight: Tensor
    negated_index: Tensor
    tail_index: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        hpf: str = "ideal",
        cutoff: float = 0.1,
        order: int = 2,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, size) < 1:
            raise ValueError(
                f"FrequencyAttention needs positive sizes, got C_in={in_channels}, C_out={out_channels}, S={size}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size = size
        self.hpf = hpf
        self.cutoff = cutoff
        self.order = order
        scale = 1.0 / (in_channels * out_channels)
        kernel = scale * torch.rand(in_channels, out_channels, size, size, dtype=torch.complex64)
        self.global_filter = nn.Parameter(frequency_major(torch.view_as_real(kernel)))
        self.local = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.gamma1 = nn.Parameter(torch.full((1,), 0.5))
        self.gamma2 = nn.Parameter(torch.full((1,), 0.5))

        mask = highpass_mask(hpf, size, cutoff, order)
        half = size // 2 + 1
        negated = negated_indices(size)
        # float64 (cast on use, so a float64 module is exact). On the half spectrum (u, v < S//2 + 1):
        # K_eff(u, v) = half_weight * K(u, v) + negated_weight * conj(K(-u, -v)), with
        # half_weight = M(u, v) / 2, negated_weight = M(-u, -v) / 2 (shaped (S, H, 1, 1) to broadcast
        # over channels) and negated_index the flat index (-u mod S) * S + (-v mod S) of K(-u, -v).
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("half_weight", 0.5 * mask[:, :half, None, None].clone(), persistent=False)
        negated_mask = mask[negated][:, negated[:half]]
        self.register_buffer("negated_weight", 0.5 * negated_mask[:, :, None, None].clone(), persistent=False)
        negated_index = (negated[:, None] * size + negated[None, :half]).reshape(-1)
        self.register_buffer("negated_index", negated_index, persistent=False)
        # For the filter gradient: the half-spectrum flat index (-u mod S) * H + (S - v) of each column v >= H.
        tail_columns = torch.arange(half, size)
        tail_index = (negated[:, None] * half + (size - tail_columns)[None, :]).reshape(-1)
        self.register_buffer("tail_index", tail_index, persistent=False)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, size={self.size}, hpf={self.hpf!r}, cutoff={self.cutoff}"

    @property
    def kernel(self) -> Tensor:
        """K as a complex (C_in, C_out, S, S) view of `global_filter`."""
        return torch.view_as_complex(self.global_filter)

    def effective_half_filter(self) -> Tensor:
        """K_eff on the half spectrum, complex (C_in, C_out, S, S//2 + 1), mask folded in."""
        effective = effective_filter(self.global_filter, self.half_weight, self.negated_weight, self.negated_index)
        return effective.permute(2, 3, 0, 1)

    def global_branch(self, x: Tensor) -> Tensor:
        """IRFFT2(K_eff . RFFT2(x)): equal to `direct_global_branch` for real x."""
        return self._spectral_filter(x, with_local=False)

    def _spectral_filter(self, x: Tensor, with_local: bool) -> Tensor:
        """SpectralFilter in at least float32 with autocast off: half-precision FFTs only take
        power-of-two sizes on CUDA, and the spectral GEMM is where precision matters."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        mixing: tuple[Tensor | None, ...]
        if with_local:
            mixing = (self.gamma1, self.local.weight, self.local.bias, self.gamma2)
        else:
            mixing = (torch.ones(1, device=x.device), None, None, None)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return SpectralFilter.apply(
                x.to(dtype),
                self.global_filter.to(dtype),
                *(t if t is None else t.to(dtype) for t in mixing),
                self.half_weight,
                self.negated_weight,
                self.negated_index,
                self.tail_index,
            )

    def check_input(self, x: Tensor) -> None:
        expected = (self.in_channels, self.size, self.size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"FrequencyAttention expects input (B, {self.in_channels}, {self.size}, {self.size}), "
                f"got {tuple(x.shape)}: its filter is built for {self.in_channels} channels at "
                f"{self.size}x{self.size}; resize the feature or build the module for this shape"
            )

    def forward(self, x: Tensor) -> Tensor:
        """gamma1 * global(x) + gamma2 * local(x), computed as one spectral filter (see SpectralFilter)."""
        self.check_input(x)
        return self._spectral_filter(x, with_local=True)
