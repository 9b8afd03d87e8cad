"""Windowed per-channel cross-attention used to fuse a level with the deeper residual (docs/method.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from famkd.nn.kernels import Kernel

WINDOW = 3
LOG2_E = 1.0 / math.log(2.0)
# Window offset j = 3 * row + col reads position (y + row - 1, x + col - 1), i.e. rows row..row+H of a
# map zero-padded by one.
OFFSETS = tuple((row, col) for row in range(WINDOW) for col in range(WINDOW))


class CrossAttention(nn.Module):
    """Per-channel 3x3 windowed attention: queries from the residual, keys and values from x.

    For channel c, location p and window offset j = 3 * row + col:
        logit = q[c, p] * (k[c, p + j] + rel[c, j]),   out[c, p] = sum_j softmax_j(logit) v[c, p + j]
    with q = Wq r, k = Wk x, v = Wv x (bias-free 1x1 convolutions) and zero padding of 1, so
    out-of-image window cells have k = v = 0 but still enter the softmax through rel.
    rel[c, j] is rel_h[c, row] for the first C/2 channels and rel_w[c - C/2, col] for the rest.

    The attention runs as `window_attention`: 9 shifted views of the padded keys and values,
    no unfolded (9x) copy, and a backward pass that recomputes the softmax instead of storing it.
    The residual may come at a lower resolution: a 1x1 convolution commutes with nearest
    upsampling, so Wq(upsample(r)) is computed as upsample(Wq r), on fewer pixels.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels % 2:
            raise ValueError(
                f"CrossAttention needs an even channel count (rel_h/rel_w split it in halves), got {channels}"
            )
        self.channels = channels
        self.query = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.key = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.rel_h = nn.Parameter(torch.empty(channels // 2, WINDOW))
        self.rel_w = nn.Parameter(torch.empty(channels // 2, WINDOW))
        for conv in (self.query, self.key, self.value):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.rel_h, 0.0, 1.0)
        nn.init.normal_(self.rel_w, 0.0, 1.0)

    def relative_logit_bias(self) -> Tensor:
        """rel as (C, 9): one bias per channel and window offset j = 3 * row + col."""
        half = self.channels // 2
        rows = self.rel_h[:, :, None].expand(half, WINDOW, WINDOW)
        cols = self.rel_w[:, None, :].expand(half, WINDOW, WINDOW)
        return torch.cat([rows, cols]).reshape(self.channels, WINDOW * WINDOW)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        """x: (B, C, H, W); residual: (B, C, h, w), nearest-upsampled to (H, W) if smaller."""
        if residual.shape[:2] != x.shape[:2] or residual.dim() != 4:
            raise ValueError(
                f"CrossAttention needs x and residual with the same batch and channels, "
                f"got {tuple(x.shape)} and {tuple(residual.shape)}"
            )
        query = self.query(residual)
        if query.shape[-2:] != x.shape[-2:]:
            query = F.interpolate(query, size=x.shape[-2:], mode="nearest")
        keys_values = F.conv2d(x, torch.cat([self.key.weight, self.value.weight]))
        return window_attention(query, keys_values, self.relative_logit_bias())


def window_attention(query: Tensor, keys_values: Tensor, bias: Tensor) -> Tensor:
    """out[b,c,p] = sum_j softmax_j(q[b,c,p] (k[b,c,p+j] + bias[c,j])) v[b,c,p+j] over the 3x3 window, zero padding.

    query: (B, C, H, W); keys_values: (B, 2C, H, W), the keys in its first C channels and the values
    in the rest (one tensor, so that their gradient is one tensor too); any memory format; bias: (C, 9).
    Computed in at least float32 (half-precision inputs are upcast, the result is cast back).
    """
    dtype = query.dtype
    compute = torch.promote_types(dtype, torch.float32)
    out = WindowAttention.apply(query.to(compute), keys_values.to(compute), bias.to(compute).t().contiguous())
    return out.to(dtype)


def pad_window(x: Tensor) -> Tensor:
    """Zero padding of one on each side of the last two axes, keeping the memory format."""
    return F.pad(x, (1, 1, 1, 1))


def shifted(padded: Tensor, row: int, col: int, height: int, width: int) -> Tensor:
    """The (height, width) window of a padded map starting at (row, col): offset (row - 1, col - 1)."""
    return padded[:, :, row : row + height, col : col + width]


def exp(x: Tensor) -> Tensor:
    """e^x as 2^(x log2 e). Compiling for CPU, torch.compile counts exp (not exp2) among the costly
    ops whose reused results it stores in memory: with exp, each of the 9 window weights became a
    buffer written in one loop and read back in a second; with exp2 they stay in registers (the
    kernels below run about 2x faster)."""
    return torch.exp2(x * LOG2_E)


def attention_forward(query: Tensor, keys_padded: Tensor, values_padded: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Output and log-sum-exp of the logits, per location. bias: (9, C)."""
    height, width = query.shape[-2:]
    logits = [
        query * (shifted(keys_padded, row, col, height, width) + bias[j, :, None, None])
        for j, (row, col) in enumerate(OFFSETS)
    ]
    top = logits[0]
    for logit in logits[1:]:
        top = torch.maximum(top, logit)
    exps = [exp(logit - top) for logit in logits]
    total = exps[0]
    weighted = exps[0] * shifted(values_padded, 0, 0, height, width)
    for j, (row, col) in enumerate(OFFSETS[1:], start=1):
        total = total + exps[j]
        weighted = weighted + exps[j] * shifted(values_padded, row, col, height, width)
    return weighted / total, top + torch.log(total)


def attention_query_grads(
    grad: Tensor,
    query: Tensor,
    keys_padded: Tensor,
    values_padded: Tensor,
    bias: Tensor,
    out: Tensor,
    log_total: Tensor,
) -> tuple[Tensor, Tensor]:
    """Gradients of the query (B, C, H, W) and of the bias (9, C).

    With softmax weights w_j: d logit_j = w_j * grad * (v_j - out), d q = sum_j d logit_j (k_j + bias_j),
    d bias_j = sum over batch and locations of d logit_j * q.
    """
    height, width = query.shape[-2:]
    grad_query = torch.zeros_like(query)
    grad_bias = []
    for j, (row, col) in enumerate(OFFSETS):
        key = shifted(keys_padded, row, col, height, width) + bias[j, :, None, None]
        weight = exp(query * key - log_total)
        grad_logit = weight * grad * (shifted(values_padded, row, col, height, width) - out)
        grad_query = grad_query + grad_logit * key
        # Summed over locations here, over the batch after: the per-image sums share the loop over
        # (B, C, H, W) that computes grad_query, so compiled, the weights are computed once.
        grad_bias.append((grad_logit * query).sum(dim=(2, 3)))
    return grad_query, torch.stack(grad_bias).sum(dim=1)


def attention_key_value_grads(
    keys_values: Tensor,
    bias: Tensor,
    query_padded: Tensor,
    grad_padded: Tensor,
    out_padded: Tensor,
    log_total_padded: Tensor,
) -> Tensor:
    """Gradient of the keys and values, (B, 2C, H, W) as `window_attention` takes them, gathered
    rather than scattered.

    Position P is window cell j of location P - offset_j, whose weight there is
    exp(q[P - offset_j] (k[P] + bias_j) - log_total[P - offset_j]). The padded query / grad / out /
    log_total read as zero / zero / zero / zero outside the map, where grad = 0 cancels every term.
    """
    keys, values = keys_values.chunk(2, dim=1)
    height, width = keys.shape[-2:]
    grad_keys = torch.zeros_like(keys)
    grad_values = torch.zeros_like(values)
    for j, (row, col) in enumerate(OFFSETS):
        mirror_row, mirror_col = WINDOW - 1 - row, WINDOW - 1 - col  # reads P - offset_j
        query = shifted(query_padded, mirror_row, mirror_col, height, width)
        weight = exp(
            query * (keys + bias[j, :, None, None]) - shifted(log_total_padded, mirror_row, mirror_col, height, width)
        )
        grad_weighted = shifted(grad_padded, mirror_row, mirror_col, height, width) * weight
        grad_values = grad_values + grad_weighted
        grad_keys = grad_keys + query * grad_weighted * (
            values - shifted(out_padded, mirror_row, mirror_col, height, width)
        )
    return torch.cat([grad_keys, grad_values], dim=1)  # compiled, each half is written in place


ATTENTION_FORWARD = Kernel(attention_forward)
ATTENTION_QUERY_GRADS = Kernel(attention_query_grads)
ATTENTION_KEY_VALUE_GRADS = Kernel(attention_key_value_grads)


class WindowAttention(torch.autograd.Function):
    """`window_attention` with a memory-light backward: saves q, the padded keys and values, out and
    log-sum-exp (about 5 maps), never the 9 logits or weights."""

    @staticmethod
    def forward(ctx, query: Tensor, keys_values: Tensor, bias: Tensor) -> Tensor:
        keys_values_padded = pad_window(keys_values)
        out, log_total = ATTENTION_FORWARD(query, *keys_values_padded.chunk(2, dim=1), bias)
        ctx.save_for_backward(query, keys_values_padded, bias, out, log_total)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        query, keys_values_padded, bias, out, log_total = ctx.saved_tensors
        keys_padded, values_padded = keys_values_padded.chunk(2, dim=1)
        grad = grad.contiguous(memory_format=suggested_memory_format(query))
        grad_query, grad_bias = ATTENTION_QUERY_GRADS(grad, query, keys_padded, values_padded, bias, out, log_total)
        height, width = query.shape[-2:]
        grad_keys_values = ATTENTION_KEY_VALUE_GRADS(
            shifted(keys_values_padded, 1, 1, height, width),
            bias,
            pad_window(query),
            pad_window(grad),
            pad_window(out),
            pad_window(log_total),
        )
        return grad_query, grad_keys_values, grad_bias


def suggested_memory_format(x: Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
