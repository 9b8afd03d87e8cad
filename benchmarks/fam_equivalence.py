"""FAM fast form vs the direct definition, and fused cross-attention vs its stacked-softmax form,
on any device (float64 where the device supports it, else float32).

    python benchmarks/fam_equivalence.py [--device cuda] [--dtype float64]

FAM: famkd.fam.FrequencyAttention (one spectral filter, half spectrum) against
gamma1 * Re(IFFT2(M * einsum(FFT2(x), K))) + gamma2 * (W x + b) with every mask kind, for sides
1, 7, 8, 14, 16, 28, 32, 56 and odd/even channel counts: the output and the gradients of the input
and of every parameter. Cross-attention: famkd.nn.cross_attention.CrossAttention, eager and
compiled kernels (FAMKD_COMPILE_KERNELS=never / always), against 9 stacked logits and a softmax.
Prints the largest relative difference per case and exits with status 1 if any exceeds the
tolerance (1e-10 in float64, 1e-4 in float32).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from famkd.fam import HIGHPASS_FILTERS, FrequencyAttention, direct_global_branch
from famkd.nn.cross_attention import OFFSETS, CrossAttention

SIZES = (1, 7, 8, 14, 16, 28, 32, 56)
CHANNELS = ((3, 5), (4, 6))
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def direct_fam(fam: FrequencyAttention, x: torch.Tensor) -> torch.Tensor:
    global_out = direct_global_branch(x, fam.kernel, fam.mask.to(x.dtype))
    return fam.gamma1 * global_out + fam.gamma2 * F.conv2d(x, fam.local.weight, fam.local.bias)


def fam_case(size: int, channels: tuple[int, int], hpf: str, device: torch.device, dtype: torch.dtype) -> float:
    """Largest relative difference between the fast and the direct form: output and all gradients."""
    torch.manual_seed(size * 31 + channels[0])
    fam = FrequencyAttention(*channels, size, hpf=hpf, cutoff=0.1 if hpf == "ideal" else 0.3).to(device, dtype)
    with torch.no_grad():
        fam.gamma1.fill_(0.7)
        fam.gamma2.fill_(-1.3)
    x = torch.randn(3, channels[0], size, size, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(3, channels[1], size, size, device=device, dtype=dtype)
    inputs = [x, fam.global_filter, fam.gamma1, fam.gamma2, fam.local.weight, fam.local.bias]
    fast = fam(x)
    fast_grads = torch.autograd.grad(fast, inputs, grad)
    direct = direct_fam(fam, x)
    direct_grads = torch.autograd.grad(direct, inputs, grad)
    pairs = [(fast, direct)] + list(zip(fast_grads, direct_grads))
    return max(relative_difference(a, b) for a, b in pairs)


def stacked_attention(attention: CrossAttention, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The published formulation: 9 stacked logits, a softmax over them, a weighted sum of 9 value views."""
    height, width = x.shape[-2:]
    query = attention.query(residual)
    keys = F.pad(attention.key(x), (1, 1, 1, 1))
    values = F.pad(attention.value(x), (1, 1, 1, 1))
    bias = attention.relative_logit_bias()
    logits = torch.stack(
        [
            query * (keys[:, :, r : r + height, c : c + width] + bias[:, j, None, None])
            for j, (r, c) in enumerate(OFFSETS)
        ]
    )
    weights = torch.softmax(logits, dim=0)
    return sum(weights[j] * values[:, :, r : r + height, c : c + width] for j, (r, c) in enumerate(OFFSETS))


def attention_case(shape: tuple[int, ...], mode: str, device: torch.device, dtype: torch.dtype) -> float:
    os.environ["FAMKD_COMPILE_KERNELS"] = mode
    torch.manual_seed(sum(shape))
    attention = CrossAttention(shape[1]).to(device, dtype)
    x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(*shape, device=device, dtype=dtype)
    inputs = [x, residual] + list(attention.parameters())
    fast = attention(x, residual)
    fast_grads = torch.autograd.grad(fast, inputs, grad)
    reference = stacked_attention(attention, x, residual)
    reference_grads = torch.autograd.grad(reference, inputs, grad)
    pairs = [(fast, reference)] + list(zip(fast_grads, reference_grads))
    return max(relative_difference(a, b) for a, b in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--skip-compiled", action="store_true", help="check the eager attention kernels only")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    tolerance = TOLERANCE[dtype]
    worst_fam = {
        hpf: max(fam_case(size, channels, hpf, device, dtype) for size in SIZES for channels in CHANNELS)
        for hpf in HIGHPASS_FILTERS
    }
    print(f"FAM fast vs direct, {device} {args.dtype}, sides {SIZES}, channels {CHANNELS}, output and all gradients:")
    for hpf, worst in worst_fam.items():
        print(f"  {hpf:<12} max relative difference {worst:.2e}")
    modes = ["never"] if args.skip_compiled else ["never", "always"]
    shapes = [(2, 4, 3, 3), (1, 6, 4, 5), (2, 8, 16, 16), (2, 16, 32, 32)]
    worst_attention = {mode: max(attention_case(shape, mode, device, dtype) for shape in shapes) for mode in modes}
    print(f"Cross-attention vs stacked softmax, {device} {args.dtype}, shapes {shapes}, output and all gradients:")
    for mode, worst in worst_attention.items():
        label = "eager kernels" if mode == "never" else "compiled kernels"
        print(f"  {label:<17} max relative difference {worst:.2e}")
    failed = [v for v in list(worst_fam.values()) + list(worst_attention.values()) if not v <= tolerance]
    print(f"{'PASS' if not failed else 'FAIL'} (tolerance {tolerance:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
