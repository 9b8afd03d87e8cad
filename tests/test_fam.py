"""FrequencyAttention: the fast half-spectrum form against the literal float64 definition (docs/method.md)."""

from __future__ import annotations

import math

import pytest
import torch

import famkd.fam
from famkd.fam import HIGHPASS_FILTERS, FrequencyAttention, highpass_mask

SIZES = [1, 7, 8, 14, 16, 28, 32, 56]
CHANNELS = [(3, 5), (4, 6)]  # odd and even counts


def published_box_mask(size: int, cutoff: float = 0.1) -> torch.Tensor:
    """The published rule, written as it is there: zero a box around the centre of the fftshifted spectrum."""
    shifted = torch.ones(size, size, dtype=torch.float64)
    centre = int(size / 2)
    half_width = int(cutoff * centre)
    shifted[centre - half_width : centre + half_width, centre - half_width : centre + half_width] = 0
    return torch.fft.ifftshift(shifted)


def direct_fam(x, kernel, mask, local_weight, local_bias, gamma1, gamma2):
    """gamma1 * Re(IFFT2(M * sum_i FFT2(x)_i K_io)) + gamma2 * (W x + b), every step spelled out."""
    spectrum = torch.fft.fft2(x, norm="ortho")
    product = (spectrum[:, :, None] * kernel[None]).sum(1)
    global_out = torch.fft.ifft2(mask * product, norm="ortho").real
    local_out = torch.einsum("oi,bihw->bohw", local_weight[:, :, 0, 0], x) + local_bias[None, :, None, None]
    return gamma1 * global_out + gamma2 * local_out


def reference_mask(kind: str, size: int, cutoff: float) -> torch.Tensor:
    if kind == "ideal":
        return published_box_mask(size, cutoff)
    k = torch.tensor([n if n < (size + 1) // 2 else n - size for n in range(size)], dtype=torch.float64) / (size / 2)
    d = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    if kind == "radial":
        return (d > cutoff).double()
    if kind == "gaussian":
        return 1 - torch.exp(-(d**2) / (2 * cutoff**2))
    if kind == "butterworth":
        with torch.no_grad():
            m = 1 / (1 + (cutoff / d) ** 4)
        m[d == 0] = 0
        return m
    return torch.ones(size, size, dtype=torch.float64)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("hpf", HIGHPASS_FILTERS)
def test_fast_form_equals_direct_definition(size, channels, hpf):
    assert_fast_form_equals_direct_definition(3, channels, size, hpf)


def test_fast_form_with_transposes_copied_in_slabs(monkeypatch):
    """Large batches transpose their spectra in slabs of rows (famkd.fam.transposed); a small
    slab threshold sends this test's spectra (forward and backward) down that path."""
    monkeypatch.setattr(famkd.fam.spectral, "TRANSPOSE_SLAB_NUMEL", 64)
    monkeypatch.setattr(famkd.fam.spectral, "TRANSPOSE_MIN_SLAB_ROWS", 7)
    assert_fast_form_equals_direct_definition(32, (6, 5), 8, "ideal")  # (B * C, 40) spectra, B * C >= 160


@pytest.mark.parametrize("shape", [(4096, 100), (100, 4096), (1000, 7), (513, 129)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_transposed_is_an_exact_contiguous_transpose(shape, dtype):
    matrix = torch.randn(*shape, dtype=dtype)
    out = famkd.fam.transposed(matrix)
    assert out.is_contiguous() and torch.equal(out, matrix.t())


def assert_fast_form_equals_direct_definition(batch, channels, size, hpf):
    torch.manual_seed(size * 100 + channels[0])
    cutoff = 0.1 if hpf == "ideal" else 0.3
    fam = FrequencyAttention(*channels, size, hpf=hpf, cutoff=cutoff).double()
    with torch.no_grad():
        fam.gamma1.fill_(0.7)
        fam.gamma2.fill_(-1.3)
    x = torch.randn(batch, channels[0], size, size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(batch, channels[1], size, size, dtype=torch.float64)

    out = fam(x)
    params = [x, fam.global_filter, fam.gamma1, fam.gamma2, fam.local.weight, fam.local.bias]
    grads = torch.autograd.grad((out * weight).sum(), params)

    kernel = torch.view_as_complex(fam.global_filter)
    ref = direct_fam(
        x, kernel, reference_mask(hpf, size, cutoff), fam.local.weight, fam.local.bias, fam.gamma1, fam.gamma2
    )
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)

    assert out.shape == (batch, channels[1], size, size)
    assert (out - ref).abs().max().item() < 1e-12
    for name, g, r in zip(["x", "filter", "gamma1", "gamma2", "local.weight", "local.bias"], grads, ref_grads):
        assert (g - r).abs().max().item() < 1e-11 * max(1.0, r.abs().max().item()), name


@pytest.mark.parametrize(
    "size, zeros",
    [
        (8, set()),
        (16, set()),
        (32, {(-1, -1), (-1, 0), (0, -1), (0, 0)}),
        (56, {(a, b) for a in range(-2, 2) for b in range(-2, 2)}),
    ],
)
def test_ideal_mask_zero_set(size, zeros):
    mask = highpass_mask("ideal", size, 0.1)
    signed = [n if n < (size + 1) // 2 else n - size for n in range(size)]
    found = {(signed[i], signed[j]) for i in range(size) for j in range(size) if mask[i, j] == 0}
    assert found == zeros
    assert mask.sum().item() == size * size - len(zeros)


def test_smooth_masks_by_hand():
    # S = 8: index 1 is frequency 1 = 0.25 Nyquist; D0 = 0.5.
    d = 0.25
    assert highpass_mask("gaussian", 8, 0.5)[1, 0].item() == pytest.approx(
        1 - math.exp(-(d**2) / (2 * 0.25)), abs=1e-15
    )
    assert highpass_mask("butterworth", 8, 0.5, order=2)[1, 0].item() == pytest.approx(
        1 / (1 + (0.5 / d) ** 4), abs=1e-15
    )
    assert highpass_mask("butterworth", 8, 0.5)[0, 0].item() == 0.0
    assert highpass_mask("gaussian", 8, 0.5)[0, 0].item() == 0.0
    # Diagonal (1, 1): D = sqrt(2) * 0.25, inside D0 = 0.5 for the radial filter; (2, 0): D = 0.5 exactly, removed.
    radial = highpass_mask("radial", 8, 0.5)
    assert radial[1, 1].item() == 0.0 and radial[2, 0].item() == 0.0 and radial[2, 1].item() == 1.0


def test_filter_is_real_and_initialised_as_specified():
    torch.manual_seed(0)
    fam = FrequencyAttention(4, 8, 5)
    assert not any(p.is_complex() for p in fam.parameters())
    assert fam.global_filter.shape == (4, 8, 5, 5, 2)
    scale = 1 / 32
    assert fam.global_filter.min().item() >= 0 and fam.global_filter.max().item() < scale
    assert fam.gamma1.item() == 0.5 and fam.gamma2.item() == 0.5
    assert set(fam.state_dict()) == {"global_filter", "gamma1", "gamma2", "local.weight", "local.bias"}


@pytest.mark.parametrize("shape", [(2, 4, 8, 9), (2, 4, 7, 7), (2, 3, 8, 8), (4, 8, 8)])
def test_wrong_input_shape_is_a_clear_error(shape):
    fam = FrequencyAttention(4, 6, 8)
    with pytest.raises(ValueError, match=r"expects input \(B, 4, 8, 8\)"):
        fam(torch.randn(*shape))


def test_unknown_filter_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown high-pass filter 'gauss'"):
        FrequencyAttention(4, 6, 8, hpf="gauss")


def test_global_branch_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    fam = FrequencyAttention(4, 6, 14)
    x = torch.randn(2, 4, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fam(x)
        global_out = fam.global_branch(x)
    assert global_out.dtype == torch.float32
    assert mixed.dtype == torch.float32
    # The global branch is bit-identical to full precision; only the bf16 local branch rounds.
    assert torch.equal(global_out, fam.global_branch(x))
    assert (mixed - fam(x)).abs().max() < 0.05
