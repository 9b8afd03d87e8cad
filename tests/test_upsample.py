"""famkd.nn.upsample against F.interpolate(mode="nearest"), in float64: values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from famkd.nn.upsample import add_upsampled, upsample_nearest

# (low side, full side): whole factors 2, 4, 8 (a pooled 1x1 map to 8x8), 1, and the F.interpolate fallback (3 -> 8).
SIZES = [((4, 4), (8, 8)), ((2, 4), (8, 8)), ((1, 1), (8, 8)), ((5, 5), (5, 5)), ((3, 3), (8, 8))]


def reference(low, size):
    return F.interpolate(low, size=size, mode="nearest")


@pytest.mark.parametrize("low_size,size", SIZES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_nearest_equals_interpolate(low_size, size, channels_last):
    torch.manual_seed(0)
    low = torch.randn(2, 3, *low_size, dtype=torch.float64)
    if channels_last:
        low = low.contiguous(memory_format=torch.channels_last)
    low.requires_grad_(True)
    grad = torch.randn(2, 3, *size, dtype=torch.float64)
    out = upsample_nearest(low, size)
    (ours,) = torch.autograd.grad(out, low, grad)
    expected = reference(low, size)
    (theirs,) = torch.autograd.grad(expected, low, grad)
    assert torch.equal(out, expected)
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("low_size,size", SIZES)
@pytest.mark.parametrize("with_scale", [False, True])
def test_add_upsampled_equals_the_upsampled_sum(low_size, size, with_scale):
    torch.manual_seed(1)
    base = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    low = torch.randn(2, 4, *low_size, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 1, *size, dtype=torch.float64, requires_grad=True) if with_scale else None
    inputs = [base, low] + ([scale] if with_scale else [])
    grad = torch.randn(2, 4, *size, dtype=torch.float64)
    out = add_upsampled(base, low, scale)
    expected = base + reference(low, size) * (scale if with_scale else 1.0)
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)
    for ours, theirs in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)
