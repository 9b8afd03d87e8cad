"""Cross-attention against a direct loop over channels, locations and window offsets."""

from __future__ import annotations

import math

import pytest
import torch

from famkd.nn.cross_attention import CrossAttention


def loop_cross_attention(x, r, wq, wk, wv, rel_h, rel_w):
    """out[c,p] = sum_j softmax_j(q[c,p] (k[c,p+j] + rel[c,j])) v[c,p+j], zero padding, plain Python loops."""
    batch, channels, height, width = x.shape
    q = torch.einsum("oi,bihw->bohw", wq, r)
    k = torch.einsum("oi,bihw->bohw", wk, x)
    v = torch.einsum("oi,bihw->bohw", wv, x)
    out = torch.zeros_like(x)
    half = channels // 2
    for b in range(batch):
        for c in range(channels):
            for i in range(height):
                for j in range(width):
                    logits, values = [], []
                    for row in range(3):
                        for col in range(3):
                            y, z = i + row - 1, j + col - 1
                            inside = 0 <= y < height and 0 <= z < width
                            key = k[b, c, y, z] if inside else 0.0
                            value = float(v[b, c, y, z].detach()) if inside else 0.0
                            rel = rel_h[c, row] if c < half else rel_w[c - half, col]
                            logits.append(q[b, c, i, j] * (key + rel))
                            values.append(value)
                    top = max(float(logit.detach()) for logit in logits)
                    weights = [math.exp(float(logit.detach()) - top) for logit in logits]
                    total = sum(weights)
                    out[b, c, i, j] = sum(w / total * val for w, val in zip(weights, values))
    return out


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (1, 6, 4, 5), (1, 8, 1, 1)])
def test_cross_attention_equals_loop(shape):
    torch.manual_seed(sum(shape))
    attention = CrossAttention(shape[1]).double()
    x = torch.randn(*shape, dtype=torch.float64)
    r = torch.randn(*shape, dtype=torch.float64)
    fast = attention(x, r)
    reference = loop_cross_attention(
        x,
        r,
        attention.query.weight[:, :, 0, 0],
        attention.key.weight[:, :, 0, 0],
        attention.value.weight[:, :, 0, 0],
        attention.rel_h,
        attention.rel_w,
    )
    assert (fast - reference).abs().max().item() < 1e-12


def test_odd_channels_are_rejected():
    with pytest.raises(ValueError, match="even channel count"):
        CrossAttention(5)
