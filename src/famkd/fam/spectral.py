"""The fast path of `FrequencyAttention`: the whole module as one filter on the half spectrum.

Because x is real, Re(IFFT2(M K X)) equals IRFFT2(K_eff X) with the conjugate-symmetric
filter K_eff(k) = (M(k) K(k) + M(-k) conj(K(-k))) / 2 (indices modulo S, see docs/method.md).
`SpectralFilter` folds gamma1 K_eff and the 1x1 local branch into one filter, applies it with one
batched complex GEMM over the S * (S//2 + 1) half-spectrum frequencies between rfft2 and
`frequency_major_irfft2`, and computes its gradients by hand. The spectra go to and from
frequency-major order through `transposed`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from famkd.fam.masks import negated_indices, self_mirrored_columns
from famkd.nn.kernels import Kernel

# Tall transposes are copied in slabs of at least this many elements (a parallel copy's grain)
# and this many rows (see `transposed`).
TRANSPOSE_SLAB_NUMEL = 1 << 18
TRANSPOSE_MIN_SLAB_ROWS = 256


def frequency_major(filter_ri: Tensor) -> Tensor:
    """The same (C_in, C_out, S, S, 2) values, stored frequency-major.

    Memory order (S, S, C_in, C_out, 2): each frequency's C_in x C_out complex matrix is one
    contiguous block, which is the layout of the per-frequency GEMM's weight operand.
    """
    return filter_ri.permute(2, 3, 0, 1, 4).contiguous().permute(2, 3, 0, 1, 4)


def effective_filter(
    global_filter: Tensor, half_weight: Tensor, negated_weight: Tensor, negated_index: Tensor
) -> Tensor:
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
        out[:, start : start + slab] = matrix[start : start + slab].t()
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
    def forward(
        ctx,
        x: Tensor,
        global_filter: Tensor,
        gamma1: Tensor,
        local_weight: Tensor | None,
        local_bias: Tensor | None,
        gamma2: Tensor | None,
        half_weight: Tensor,
        negated_weight: Tensor,
        negated_index: Tensor,
        tail_index: Tensor,
    ) -> Tensor:
        batch, c_in, size = x.shape[:3]
        c_out = global_filter.shape[1]
        frequencies = size * (size // 2 + 1)
        effective = effective_filter(global_filter, half_weight, negated_weight, negated_index)
        local_term: Tensor | None = None
        if local_weight is not None:
            assert gamma2 is not None  # the local branch always comes with its gamma2
            local_term = gamma2 * local_weight.view(c_out, c_in).t()
        total, conjugate_total = total_filter(effective, gamma1, local_term)
        spectrum = torch.fft.rfft2(x, norm="ortho")
        rows = transposed(spectrum.reshape(batch * c_in, frequencies)).view(frequencies, batch, c_in)
        product = torch.bmm(rows, total).view(frequencies, batch * c_out)
        if local_bias is not None:  # a constant image is its DC coefficient alone: S * value (ortho)
            assert gamma2 is not None
            product[0].view(batch, c_out).add_(size * gamma2 * local_bias)
        ctx.save_for_backward(
            rows,
            conjugate_total,
            effective,
            gamma1,
            local_weight,
            local_bias,
            gamma2,
            half_weight,
            negated_weight,
            tail_index,
        )
        ctx.filter_strides = global_filter.stride()
        return frequency_major_irfft2(product, size).view(batch, c_out, size, size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (
            rows,
            conjugate_total,
            effective,
            gamma1,
            local_weight,
            local_bias,
            gamma2,
            half_weight,
            negated_weight,
            tail_index,
        ) = ctx.saved_tensors
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
            by_frequency = effective_filter_backward(
                grad_total, gamma1 * half_weight.to(gamma1.dtype), gamma1 * negated_weight.to(gamma1.dtype), tail_index
            )
            grad_filter = torch.view_as_real(by_frequency).permute(2, 3, 0, 1, 4)
            if grad_filter.stride() != ctx.filter_strides:  # the gradient takes the parameter's layout
                grad_filter = grad_filter.new_empty_strided(grad_filter.shape, ctx.filter_strides).copy_(grad_filter)
            grads[1] = grad_filter
            if local_weight is not None:
                summed = grad_total.sum(dim=(0, 1)).real
                grads[3], grads[4], grads[5] = local_gradients(
                    summed, grad_spectrum, local_weight, local_bias, gamma2, size
                )
        return tuple(grads)


def local_gradients(
    summed: Tensor, grad_spectrum: Tensor, local_weight: Tensor, local_bias: Tensor, gamma2: Tensor, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of W, b and gamma2. W^T enters K_total at every frequency (`summed`: the real part of
    dL/dK_total summed over frequencies, (C_in, C_out)); b enters the output's DC coefficient."""
    c_out, c_in = local_weight.shape[:2]
    grad_weight = (gamma2 * summed).t().reshape(local_weight.shape)
    pixel_sums = size * grad_spectrum[:, :, 0, 0].real.sum(0)  # the output gradient summed per channel
    grad_bias = gamma2 * pixel_sums
    grad_gamma2 = (summed * local_weight.view(c_out, c_in).t()).sum() + (pixel_sums * local_bias).sum()
    return grad_weight, grad_bias, grad_gamma2.reshape(1)
