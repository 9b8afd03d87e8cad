"""Lone FrequencyAttention, forward + backward: famkd's fast form against the direct forms.

    python benchmarks/bench_fam.py [--batch 64 --channels 64 --size 32 --steps 10 --device cpu]

Timed per step: forward, backward of a fixed random output gradient, gradients of the input
and of every parameter. Three forms share one set of weights:

- fast: famkd.fam.FrequencyAttention (half spectrum, one batched complex GEMM, mask folded in);
- published direct form: FFT2, complex einsum over the full spectrum, an fftshift done by
  rolling the real and imaginary parts over every non-batch axis, the centred box of the
  published "ideal" filter zeroed, the inverse shift, IFFT2, real part; the complex filter is a
  complex parameter, as in the published code. This is the baseline of the acceptance ratio;
- direct form without shifts: famkd.fam.direct_global_branch (mask in FFT order).

The forms run interleaved (one step each per round, the order rotating) in one process; the
median of the timed steps is reported. Prints the equivalence check and the speed ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from famkd.engine.host_memory import retain_freed_memory
from famkd.fam import FrequencyAttention, direct_global_branch


def roll_half(x: Tensor, dim: int, forward: bool) -> Tensor:
    """Rotate `dim` by half its length with a copy (fftshift when forward, ifftshift otherwise)."""
    size = x.shape[dim]
    shift = (size + 1) // 2 if forward else size // 2
    front, back = x.narrow(dim, 0, shift), x.narrow(dim, shift, size - shift)
    return torch.cat([back, front], dim)


def published_style_global(x: Tensor, kernel: Tensor, cutoff: float = 0.1) -> Tensor:
    """Re(IFFT2(ifftshift(box-zeroed(fftshift(einsum(FFT2(x), K)))))), shifts over every non-batch axis."""
    product = torch.einsum("bixy,ioxy->boxy", torch.fft.fft2(x, norm="ortho"), kernel)
    real, imag = product.real, product.imag
    for dim in range(1, real.dim()):
        real, imag = roll_half(real, dim, forward=True), roll_half(imag, dim, forward=True)
    shifted = torch.stack((real, imag), -1)
    height, width = shifted.shape[2:4]
    cy, cx = height // 2, width // 2
    ry, rx = int(cutoff * cy), int(cutoff * cx)
    shifted[:, :, cy - ry : cy + ry, cx - rx : cx + rx, :] = 0
    real, imag = torch.unbind(shifted, -1)
    for dim in range(real.dim() - 1, 0, -1):
        real, imag = roll_half(real, dim, forward=False), roll_half(imag, dim, forward=False)
    return torch.fft.ifft2(torch.complex(real, imag), norm="ortho").real


def build_forms(fam: FrequencyAttention) -> dict:
    """name -> (callable x -> output, its parameters), all with fam's weights."""
    kernel = fam.kernel.detach().clone().requires_grad_(True)

    def mix(global_out: Tensor, x: Tensor) -> Tensor:
        return fam.gamma1 * global_out + fam.gamma2 * fam.local(x)

    common = [fam.local.weight, fam.local.bias, fam.gamma1, fam.gamma2]
    return {
        "fast": (fam, [fam.global_filter] + common),
        "published direct": (lambda x: mix(published_style_global(x, kernel, fam.cutoff), x), [kernel] + common),
        "direct, no shift": (
            lambda x: mix(direct_global_branch(x, kernel, fam.mask.to(x.dtype)), x),
            [kernel] + common,
        ),
    }


def step(form, x: Tensor, grad: Tensor) -> list[Tensor]:
    module, parameters = form
    for p in parameters:
        p.grad = None
    x.grad = None
    module(x).backward(grad)
    return [x.grad] + [p.grad for p in parameters]


def check_equivalence(forms: dict, x: Tensor, grad: Tensor) -> float:
    """Largest relative difference between the fast form and the published form (output and every gradient)."""
    results = {}
    for name in ("fast", "published direct"):
        module, _ = forms[name]
        out = module(x).detach()
        grads = step(forms[name], x, grad)
        kernel_grad = grads[1] if name != "fast" else torch.view_as_complex(grads[1])
        results[name] = [out, grads[0], kernel_grad] + grads[2:]
    worst = 0.0
    for fast, ref in zip(results["fast"], results["published direct"]):
        worst = max(worst, ((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    retained = retain_freed_memory()  # as the famkd command does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    fam = FrequencyAttention(args.channels, args.channels, args.size).to(device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device, requires_grad=True)
    grad = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    forms = build_forms(fam)
    print(
        f"FrequencyAttention B={args.batch} C={args.channels} S={args.size}, {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, malloc keeps freed memory: {retained}"
    )
    print(f"fast vs published direct form, float32: max relative difference {check_equivalence(forms, x, grad):.2e}")
    times = {name: [] for name in forms}
    names = list(forms)
    for round_index in range(args.warmup + args.steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            step(forms[name], x, grad)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        print(f"{name:<18} {1000 * medians[name]:9.1f} ms per forward+backward (median of {args.steps})")
    for name in names[1:]:
        print(f"ratio {name} / fast: {medians[name] / medians['fast']:.1f}x")


if __name__ == "__main__":
    main()
