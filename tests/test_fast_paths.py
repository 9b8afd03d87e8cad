"""The hand-written gradients and layouts of the fast FAM and cross-attention, against autograd
of their direct float64 definitions; the kernel compilation policy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from famkd.fam import FrequencyAttention, direct_global_branch, frequency_major
from famkd.nn import cross_attention, kernels
from famkd.nn.cross_attention import OFFSETS, CrossAttention, window_attention


def stacked_window_attention(query, keys, values, bias):
    """9 stacked logits, softmax over them, weighted sum of the 9 shifted value maps (zero padding)."""
    height, width = query.shape[-2:]
    keys, values = F.pad(keys, (1, 1, 1, 1)), F.pad(values, (1, 1, 1, 1))
    logits = torch.stack(
        [
            query * (keys[:, :, r : r + height, c : c + width] + bias[:, j, None, None])
            for j, (r, c) in enumerate(OFFSETS)
        ]
    )
    weights = torch.softmax(logits, dim=0)
    return sum(weights[j] * values[:, :, r : r + height, c : c + width] for j, (r, c) in enumerate(OFFSETS))


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 4, 5, 3), (1, 6, 7, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_window_attention_gradients_equal_autograd_of_the_stacked_form(shape, channels_last):
    generator = torch.Generator().manual_seed(sum(shape))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    inputs = [
        torch.randn(*shape, generator=generator, dtype=torch.float64)
        .contiguous(memory_format=memory_format)
        .requires_grad_()
        for _ in range(3)
    ]
    bias = (3 * torch.randn(shape[1], 9, generator=generator, dtype=torch.float64)).requires_grad_()
    grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
    fast = window_attention(inputs[0], torch.cat(inputs[1:], dim=1), bias)
    reference = stacked_window_attention(*inputs, bias)
    assert (fast - reference).abs().max() < 1e-13
    for a, b in zip(
        torch.autograd.grad(fast, inputs + [bias], grad), torch.autograd.grad(reference, inputs + [bias], grad)
    ):
        assert (a - b).abs().max() < 1e-12


def test_cross_attention_with_a_lower_resolution_residual_equals_upsampling_it_first():
    torch.manual_seed(0)
    attention = CrossAttention(4).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    residual = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    low = attention(x, residual)
    (grad_low,) = torch.autograd.grad(low.square().sum(), residual)
    high = attention(x, F.interpolate(residual, size=(8, 8), mode="nearest"))
    (grad_high,) = torch.autograd.grad(high.square().sum(), residual)
    assert (low - high).abs().max() < 1e-13
    assert (grad_low - grad_high).abs().max() < 1e-12


def test_cross_attention_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="same batch and channels"):
        CrossAttention(4)(torch.randn(1, 4, 4, 4), torch.randn(1, 6, 4, 4))


@pytest.mark.parametrize("size", [1, 6, 7])
def test_global_branch_gradients_equal_autograd_of_the_direct_form(size):
    torch.manual_seed(size)
    fam = FrequencyAttention(3, 4, size, hpf="gaussian", cutoff=0.4).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, size, size, dtype=torch.float64)
    fast = torch.autograd.grad(fam.global_branch(x), [x, fam.global_filter], grad)
    direct = torch.autograd.grad(direct_global_branch(x, fam.kernel, fam.mask), [x, fam.global_filter], grad)
    for a, b in zip(fast, direct):
        assert (a - b).abs().max() < 1e-12


def test_filter_is_frequency_major_and_keeps_its_layout_through_conversion_loading_and_training():
    fam = FrequencyAttention(3, 5, 6)
    by_frequency = fam.global_filter.permute(2, 3, 0, 1, 4)
    assert by_frequency.is_contiguous()
    state = {k: v.contiguous() for k, v in fam.state_dict().items()}  # a checkpoint in plain layout
    fam = fam.double()
    fam.load_state_dict(state)
    assert torch.equal(fam.global_filter, state["global_filter"].double())
    optimizer = torch.optim.SGD(fam.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fam(torch.randn(2, 3, 6, 6, dtype=torch.float64)).square().mean().backward()
    assert fam.global_filter.grad.stride() == fam.global_filter.stride()
    optimizer.step()
    assert fam.global_filter.permute(2, 3, 0, 1, 4).is_contiguous()


def test_frequency_major_keeps_values():
    filt = torch.randn(2, 3, 4, 4, 2)
    stored = frequency_major(filt)
    assert torch.equal(stored, filt) and stored.permute(2, 3, 0, 1, 4).is_contiguous()


@pytest.mark.parametrize(
    "setting, numel, compiled",
    [
        ("never", 1 << 30, False),
        ("always", 1, True),
        ("auto", kernels.COMPILE_MIN_NUMEL - 1, False),
        ("auto", kernels.COMPILE_MIN_NUMEL, True),
    ],
)
def test_kernel_compiles_only_as_the_setting_and_size_allow(monkeypatch, setting, numel, compiled):
    monkeypatch.setenv(kernels.COMPILE_SETTING, setting)
    monkeypatch.setattr(kernels, "device_has_compiler", lambda device_type: True)
    kernel = kernels.Kernel(lambda t: (t,))
    assert kernel.use_compiled(torch.empty(numel)) is compiled


def test_kernel_without_a_compiler_stays_eager(monkeypatch):
    monkeypatch.setenv(kernels.COMPILE_SETTING, "always")
    monkeypatch.setattr(kernels, "device_has_compiler", lambda device_type: False)
    assert kernels.Kernel(lambda t: (t,)).use_compiled(torch.empty(1)) is False


def test_unknown_compile_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(kernels.COMPILE_SETTING, "sometimes")
    with pytest.raises(ValueError, match="FAMKD_COMPILE_KERNELS='sometimes': choose one of auto, always, never"):
        kernels.Kernel(lambda t: (t,)).use_compiled(torch.empty(1))


def test_compiled_window_attention_matches_the_float64_stacked_form(monkeypatch):
    """The torch.compile'd kernels (as training runs them on large inputs) against the float64 definition."""
    if not kernels.device_has_compiler("cpu"):
        pytest.skip("no C++ compiler: the attention kernels run eagerly here, as the other tests check")
    monkeypatch.setenv(kernels.COMPILE_SETTING, "always")
    generator = torch.Generator().manual_seed(7)
    shape = (2, 6, 8, 8)
    inputs64 = [torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(3)]
    bias64 = (3 * torch.randn(shape[1], 9, generator=generator, dtype=torch.float64)).requires_grad_()
    grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
    inputs32 = [t.detach().float().requires_grad_() for t in inputs64]
    bias32 = bias64.detach().float().requires_grad_()
    compiled = window_attention(inputs32[0], torch.cat(inputs32[1:], dim=1), bias32)
    kernel_objects = (
        cross_attention.ATTENTION_FORWARD,
        cross_attention.ATTENTION_QUERY_GRADS,
        cross_attention.ATTENTION_KEY_VALUE_GRADS,
    )
    reference = stacked_window_attention(*inputs64, bias64)
    assert torch.allclose(compiled.double(), reference, rtol=1e-5, atol=1e-5)
    compiled_grads = torch.autograd.grad(compiled, inputs32 + [bias32], grad.float())
    reference_grads = torch.autograd.grad(reference, inputs64 + [bias64], grad)
    assert all(k.compiled is not None and not k.failed for k in kernel_objects)
    for a, b in zip(compiled_grads, reference_grads):
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_kernel_runs_shapes_past_the_recompile_limit_eagerly(monkeypatch):
    """torch.compile refuses (fullgraph) a specialisation past its limit: the kernel must not fail there."""
    if not kernels.device_has_compiler("cpu"):
        pytest.skip("no C++ compiler: kernels run eagerly here")
    monkeypatch.setenv(kernels.COMPILE_SETTING, "always")

    def doubled_plus_one(t):
        return 2 * t + 1

    kernel = kernels.Kernel(doubled_plus_one)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # older torch
    with torch._dynamo.config.patch(**{limit: 2}):
        for size in range(1, 5):
            t = torch.arange(float(size))
            assert torch.equal(kernel(t), 2 * t + 1)
    assert kernel.compiled is not None and not kernel.failed
    assert len(kernel.eager_layouts) == 2
