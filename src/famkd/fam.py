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
from torch.autograd.function import once_differentiable

from famkd.nn.kernels import Kernel

HIGHPASS_FILTERS = ("ideal", "radial", "gaussian", "butterworth", "none")
# Tall transposes are copied in slabs of at least this many elements (a parallel copy's grain)
# and this many rows (see `transposed`).
TRANSPOSE_SLAB_NUMEL = 1 << 18
TRANSPOSE_MIN_SLAB_ROWS = 256


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


def direct_global_branch(x: Tensor, kernel: Tensor, mask: Tensor) -> Tensor:
    """Literal global branch: Re(IFFT2(M * einsum(FFT2(x), K))), ortho FFTs.

    x: real (B, C_in, S, S); kernel: complex (C_in, C_out, S, S); mask: real (S, S) in FFT
    index order. Slow (full spectrum, complex einsum); kept as the definition of the method.
    """
    spectrum = torch.fft.fft2(x, norm="ortho")
    product = torch.einsum("bixy,ioxy->boxy", spectrum, kernel)
    return torch.fft.ifft2(mask * product, norm="ortho").real


def frequency_major(filter_ri: Tensor) -> Tensor:
    """The same (C_in, C_out, S, S, 2) values, stored frequency-major.

    Memory order (S, S, C_in, C_out, 2): each frequency's C_in x C_out complex matrix is one
    contiguous block, which is the layout of the per-frequency GEMM's weight operand.
    """
    return filter_ri.permute(2, 3, 0, 1, 4).contiguous().permute(2, 3, 0, 1, 4)


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
    collective communication; its memory is frequency-major (see `frequency_major`). Under
    autocast the global branch runs in float32.
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
        self.register_buffer("negated_index", (negated[:, None] * size + negated[None, :half]).reshape(-1), persistent=False)
        # For the filter gradient: the half-spectrum flat index (-u mod S) * H + (S - v) of each column v >= H.
        tail_columns = torch.arange(half, size)
        self.register_buffer("tail_index", (negated[:, None] * half + (size - tail_columns)[None, :]).reshape(-1), persistent=False)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, size={self.size}, hpf={self.hpf!r}, cutoff={self.cutoff}"

    @property
    def kernel(self) -> Tensor:
        """K as a complex (C_in, C_out, S, S) view of `global_filter`."""
        return torch.view_as_complex(self.global_filter)

    def effective_half_filter(self) -> Tensor:
        """K_eff on the half spectrum, complex (C_in, C_out, S, S//2 + 1), mask folded in."""
        return effective_filter(self.global_filter, self.half_weight, self.negated_weight, self.negated_index).permute(2, 3, 0, 1)

    def global_branch(self, x: Tensor) -> Tensor:
        """IRFFT2(K_eff . RFFT2(x)): equal to `direct_global_branch` for real x."""
        return self._spectral_filter(x, with_local=False)

    def _spectral_filter(self, x: Tensor, with_local: bool) -> Tensor:
        """SpectralFilter in at least float32 with autocast off: half-precision FFTs only take
        power-of-two sizes on CUDA, and the spectral GEMM is where precision matters."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        if with_local:
            mixing = (self.gamma1, self.local.weight, self.local.bias, self.gamma2)
        else:
            mixing = (torch.ones(1, device=x.device), None, None, None)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return SpectralFilter.apply(
                x.to(dtype), self.global_filter.to(dtype), *(t if t is None else t.to(dtype) for t in mixing),
                self.half_weight, self.negated_weight, self.negated_index, self.tail_index,
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


def effective_filter(global_filter: Tensor, half_weight: Tensor, negated_weight: Tensor, negated_index: Tensor) -> Tensor:
    """K_eff on the half spectrum, complex (S, S//2 + 1, C_in, C_out), contiguous.

    global_filter: real (C_in, C_out, S, S, 2); the other arguments are FrequencyAttention's buffers.
    """
    c_in, c_out, size = global_filter.shape[:3]
    kernel = torch.view_as_complex(global_filter.permute(2, 3, 0, 1, 4))  # a view when the filter is frequency-major
    half = half_weight.shape[1]
    negated = kernel.reshape(size * size, c_in, c_out).index_select(0, negated_index).view(size, half, c_in, c_out)
    dtype = global_filter.dtype
    filt = torch.mul(kernel[:, :half], half_weight.to(dtype))
    return filt.addcmul_(torch.conj_physical_(negated), negated_weight.to(dtype))


def total_filter(effective: Tensor, gamma1: Tensor, local_term: Tensor | None) -> tuple[Tensor, Tensor]:
    """K_total = gamma1 K_eff + local_term at each frequency, and its conjugate, both complex
    (S * H, C_in, C_out) (effective: K_eff, complex (S, H, C_in, C_out); local_term: real (C_in, C_out),
    the same at every frequency). The conjugate is the backward GEMM's operand: a conjugated view
    would be copied there anyway.
    """
    size, half, c_in, c_out = effective.shape
    if local_term is None:
        total = effective * gamma1
    else:  # real arithmetic on (re, im) pairs: a broadcast complex addcmul is several times slower on CPU
        local_pair = torch.stack([local_term, torch.zeros_like(local_term)], dim=-1)
        total = torch.view_as_complex(torch.addcmul(local_pair, torch.view_as_real(effective), gamma1))
    total = total.view(size * half, c_in, c_out)
    return total, torch.conj_physical(total)


def effective_filter_backward(grad: Tensor, half_weight: Tensor, negated_weight: Tensor, tail_index: Tensor) -> Tensor:
    """Gradient of `effective_filter` with respect to K, complex (S, S, C_in, C_out) (frequency-major).

    grad: complex (S, H, C_in, C_out), d/dRe + i d/dIm of K_eff. K(u, v) receives half_weight * grad(u, v)
    when v < H, and negated_weight * conj(grad) from the half-spectrum entry (-u, -v) when -v mod S < H:
    columns H.. receive only the second term (gathered through tail_index), the DC and Nyquist columns
    both.
    """
    size, half, c_in, c_out = grad.shape
    real_dtype = grad.real.dtype
    half_weight, negated_weight = half_weight.to(real_dtype), negated_weight.to(real_dtype)
    by_frequency = grad.new_empty(size, size, c_in, c_out)
    torch.mul(grad, half_weight, out=by_frequency[:, :half])
    if size > half:
        tail = (size, size - half)
        mirrored = grad.reshape(size * half, c_in, c_out).index_select(0, tail_index).view(*tail, c_in, c_out)
        mirrored_weight = negated_weight.reshape(size * half).index_select(0, tail_index).view(*tail, 1, 1)
        torch.conj_physical_(torch.mul(mirrored, mirrored_weight, out=by_frequency[:, half:]))
    negated_rows = negated_indices(size, grad.device)
    for column in self_mirrored_columns(size):  # -v = v: both terms land here
        mirrored = grad[:, column].index_select(0, negated_rows).conj()
        by_frequency[:, column] += mirrored * negated_weight[:, column].index_select(0, negated_rows)
    return by_frequency


def contiguous_transpose(matrix: Tensor) -> Tensor:
    return matrix.t().contiguous()


# Compiled, a wide transpose is a tiled loop on every thread: 2x faster than torch's one-thread
# copy for the (frequencies, B * C) spectra, and 7x for the short ones of small maps. One kernel
# with symbolic sizes serves every level's shapes about as fast as one kernel per shape would.
WIDE_TRANSPOSE = Kernel(contiguous_transpose, dynamic=True)


def transposed(matrix: Tensor) -> Tensor:
    """matrix.t() made contiguous.

    In eager mode complex64 entries move as float64 bit patterns. torch's 2-D transpose copy runs
    on one thread: a tall matrix is copied in slabs of rows, which run on all of them (3.5x faster
    for the (B * C, frequencies) spectra on 2 threads), and a wide one through `WIDE_TRANSPOSE`.
    torch.compile does not trace such dtype views, and does its own copy.
    """
    if torch.compiler.is_compiling():
        return contiguous_transpose(matrix)
    if matrix.dtype == torch.complex64:
        return transposed(matrix.view(torch.float64)).view(torch.complex64)
    rows, columns = matrix.shape
    if rows < 4 * columns:
        return WIDE_TRANSPOSE(matrix)
    if matrix.numel() < TRANSPOSE_SLAB_NUMEL:
        return contiguous_transpose(matrix)
    out = matrix.new_empty(columns, rows)
    slab = max(TRANSPOSE_MIN_SLAB_ROWS, TRANSPOSE_SLAB_NUMEL // columns)
    for start in range(0, rows, slab):
        out[:, start:start + slab] = matrix[start:start + slab].t()
    return out


def middle_columns(size: int) -> slice:
    """Half-spectrum columns strictly between DC and Nyquist: those irfft2 counts twice (once through the mirror)."""
    half = size // 2 + 1
    return slice(1, half - 1 if size % 2 == 0 else half)


def irfft2_adjoint(grad: Tensor, size: int) -> Tensor:
    """Gradient, as a half spectrum (B, C, S, H), of the inverse real FFT (`frequency_major_irfft2`)
    for the real output gradient `grad` (B, C, S, S): rfft2 with the middle columns doubled."""
    spectrum = torch.fft.rfft2(grad, norm="ortho")
    spectrum[..., middle_columns(size)] *= 2.0
    return spectrum


def frequency_major_irfft2(spectrum: Tensor, size: int, adjoint_of_rfft2: bool = False) -> Tensor:
    """irfft2(s=(S, S), norm="ortho") of a half spectrum stored frequency-major, complex (S * H, n)
    with row u * H + v; returns real (n, S, S).

    One axis at a time, with no reordering before the first: the ifft over u reads the
    frequency-major rows in place (a strided transform per column v and image) and writes them in
    (v, image, y) order; one transpose then gives each image's (y, v) rows for the irfft over v.
    (torch's irfft2 of an image-major spectrum reorders twice inside, and the spectrum had to be
    transposed to image-major first.)

    With `adjoint_of_rfft2` the result is the gradient of rfft2's input for the spectrum as its
    gradient: the inverse of the half spectrum zero-padded to the full plane, which halves the middle
    columns (the irfft over v counts each twice) and keeps only the real part of the DC and Nyquist
    columns after the ifft over u (their Hermitian part over u, before it).
    """
    half = spectrum.shape[0] // size
    count = spectrum.shape[1]
    by_column = torch.fft.ifft(spectrum.view(size, half * count), dim=0, norm="ortho")
    by_column = by_column.view(size, half, count).permute(1, 2, 0)  # (v, image, y), contiguous
    if adjoint_of_rfft2:
        by_column[middle_columns(size)] *= 0.5
        for column in self_mirrored_columns(size):
            by_column[column].imag.zero_()
    rows = transposed(by_column.reshape(half, count * size)).view(count, size, half)
    return torch.fft.irfft(rows, n=size, dim=-1, norm="ortho")


class SpectralFilter(torch.autograd.Function):
    """The whole FAM as one spectral filter: y = IRFFT2(K_total . RFFT2(x)) + gamma2 * b, with
    K_total(k) = gamma1 K_eff(k) + gamma2 W^T for every half-spectrum frequency k.

    The local branch W x + b (1x1 convolution) mixes channels the same way at every pixel, so in the
    frequency domain it is the real matrix W^T at every frequency plus the bias at DC; adding it to
    the filter turns gamma1 * global(x) + gamma2 * local(x) into one filter. With W, b, gamma2 None
    and gamma1 = 1 it is the global branch alone.

    x: real (B, C_in, S, S); global_filter: real (C_in, C_out, S, S, 2); gamma1, gamma2: (1,);
    W: (C_out, C_in, 1, 1); b: (C_out,). Returns real (B, C_out, S, S). All frequencies go through one
    batched GEMM, (S*H, B, C_in) @ (S*H, C_in, C_out), H = S//2 + 1, whose weight is `total_filter`
    (mask and gammas folded in, built once per call from the frequency-major parameter). It is a
    complex GEMM: the same real multiply-adds as the real (2 C_in, 2 C_out) block form
    [[Kr, Ki], [-Ki, Kr]], and about 20% faster through MKL on CPU, with no block matrix to build.
    Around it: rfft2 and one transpose into frequency-major order, and `frequency_major_irfft2`
    back (and the same for the gradients).
    """

    @staticmethod
    def forward(ctx, x: Tensor, global_filter: Tensor, gamma1: Tensor, local_weight: Tensor | None,
                local_bias: Tensor | None, gamma2: Tensor | None, half_weight: Tensor, negated_weight: Tensor,
                negated_index: Tensor, tail_index: Tensor) -> Tensor:
        batch, c_in, size = x.shape[:3]
        c_out = global_filter.shape[1]
        frequencies = size * (size // 2 + 1)
        effective = effective_filter(global_filter, half_weight, negated_weight, negated_index)
        local_term = None if local_weight is None else gamma2 * local_weight.view(c_out, c_in).t()
        total, conjugate_total = total_filter(effective, gamma1, local_term)
        spectrum = torch.fft.rfft2(x, norm="ortho")
        rows = transposed(spectrum.reshape(batch * c_in, frequencies)).view(frequencies, batch, c_in)
        product = torch.bmm(rows, total).view(frequencies, batch * c_out)
        if local_bias is not None:  # a constant image is its DC coefficient alone: S * value (ortho)
            product[0].view(batch, c_out).add_(size * gamma2 * local_bias)
        ctx.save_for_backward(rows, conjugate_total, effective, gamma1, local_weight, local_bias, gamma2,
                              half_weight, negated_weight, tail_index)
        ctx.filter_strides = global_filter.stride()
        return frequency_major_irfft2(product, size).view(batch, c_out, size, size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rows, conjugate_total, effective, gamma1, local_weight, local_bias, gamma2,
         half_weight, negated_weight, tail_index) = ctx.saved_tensors
        batch, c_out, size = grad.shape[:3]
        frequencies, c_in = conjugate_total.shape[:2]
        grad_spectrum = irfft2_adjoint(grad, size)
        grad_rows = transposed(grad_spectrum.reshape(batch * c_out, frequencies)).view(frequencies, batch, c_out)
        grads: list[Tensor | None] = [None] * 10
        if ctx.needs_input_grad[0]:
            back = torch.bmm(grad_rows, conjugate_total.transpose(1, 2)).view(frequencies, batch * c_in)  # G K_total^H
            grads[0] = frequency_major_irfft2(back, size, adjoint_of_rfft2=True).view(batch, c_in, size, size)
        if any(ctx.needs_input_grad[1:6]):
            # dL/dK_total = X^H G per frequency (d/dRe + i d/dIm).
            grad_total = torch.bmm(rows.transpose(1, 2).conj(), grad_rows).view(size, -1, c_in, c_out)
            # d/dgamma1 = <dK_total, K_eff>, the real inner product of the complex entries.
            grads[2] = torch.vdot(effective.reshape(-1), grad_total.reshape(-1)).real.reshape(1)
            by_frequency = effective_filter_backward(grad_total, gamma1 * half_weight.to(gamma1.dtype),
                                                     gamma1 * negated_weight.to(gamma1.dtype), tail_index)
            grad_filter = torch.view_as_real(by_frequency).permute(2, 3, 0, 1, 4)
            if grad_filter.stride() != ctx.filter_strides:  # the gradient takes the parameter's layout
                grad_filter = grad_filter.new_empty_strided(grad_filter.shape, ctx.filter_strides).copy_(grad_filter)
            grads[1] = grad_filter
            if local_weight is not None:
                summed = grad_total.sum(dim=(0, 1)).real
                grads[3], grads[4], grads[5] = local_gradients(summed, grad_spectrum, local_weight, local_bias, gamma2, size)
        return tuple(grads)


def local_gradients(summed: Tensor, grad_spectrum: Tensor, local_weight: Tensor, local_bias: Tensor,
                    gamma2: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of W, b and gamma2. W^T enters K_total at every frequency (`summed`: the real part of
    dL/dK_total summed over frequencies, (C_in, C_out)); b enters the output's DC coefficient."""
    c_out, c_in = local_weight.shape[:2]
    grad_weight = (gamma2 * summed).t().reshape(local_weight.shape)
    pixel_sums = size * grad_spectrum[:, :, 0, 0].real.sum(0)  # the output gradient summed per channel
    grad_bias = gamma2 * pixel_sums
    grad_gamma2 = (summed * local_weight.view(c_out, c_in).t()).sum() + (pixel_sums * local_bias).sum()
    return grad_weight, grad_bias, grad_gamma2.reshape(1)
