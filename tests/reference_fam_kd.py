"""A direct, functional FAM-KD (review form) oracle reading a published-layout state dict.

Written from docs/method.md with the literal formulas, independent of famkd's modules:
full-spectrum FFT2, a complex einsum, an fftshift-ed box mask, IFFT2 and the real part; the
3x3 cross-attention as a loop over the nine window offsets; BatchNorm in training mode through
F.batch_norm (the running statistics in `state` are updated in place, as a module would); and
nearest resizing by explicit index arithmetic. Heterogeneous pairs (a student map smaller than the
teacher's, e.g. ShuffleV1's 16/8/4 against wrn_40_2's 32/16/8) take the level's map, once fused, to
its FAM's side by that nearest resize, and pass the resized map on as the next residual.

`state` holds the published keys without the `atfs.` prefix split off, e.g.
`atfs.1.conv2.0.weights1` (complex, C_in x C_out x S x S), `atfs.1.att_conv.rel_h` (C/2,1,1,3,1).
Level 0 is the deepest (pooled) one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
CUTOFF = 0.1


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """sum_i W[o, i] x[b, i, y, x] (+ bias[o]); weight (C_out, C_in, 1, 1)."""
    out = torch.einsum("oi,biyx->boyx", weight[:, :, 0, 0], x)
    return out if bias is None else out + bias[None, :, None, None]


def batch_norm_train(x: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    """BatchNorm2d in training mode (batch statistics), updating `prefix`running_* in place."""
    return F.batch_norm(
        x,
        state[prefix + "running_mean"],
        state[prefix + "running_var"],
        state[prefix + "weight"],
        state[prefix + "bias"],
        training=True,
        momentum=BN_MOMENTUM,
        eps=BN_EPS,
    )


def nearest_resize(x: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize of the last two axes to size x size: source index floor(i * in / out)."""
    rows = torch.arange(size) * x.shape[-2] // size
    cols = torch.arange(size) * x.shape[-1] // size
    return x[..., rows, :][..., cols]


def centered_box_mask(size: int, cutoff: float = CUTOFF) -> Tensor:
    """Mask in fftshift-ed order: zero on rows/cols [c - r, c + r), c = floor(S/2), r = floor(cutoff * c)."""
    center = size // 2
    radius = int(cutoff * center)
    mask = torch.ones(size, size, dtype=torch.float64)
    mask[center - radius : center + radius, center - radius : center + radius] = 0.0
    return mask


def fam(x: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    """rate1 * Re(IFFT2(ifftshift(M * fftshift(K . FFT2(x))))) + rate2 * (1x1 conv with bias)(x)."""
    kernel = state[prefix + "weights1"]
    spectrum = torch.fft.fft2(x, norm="ortho")
    product = torch.einsum("bixy,ioxy->boxy", spectrum, kernel)
    shifted = torch.fft.fftshift(product, dim=(-2, -1)) * centered_box_mask(x.shape[-1])
    global_out = torch.fft.ifft2(torch.fft.ifftshift(shifted, dim=(-2, -1)), norm="ortho").real
    local_out = conv1x1(x, state[prefix + "w0.weight"], state[prefix + "w0.bias"])
    return state[prefix + "rate1"] * global_out + state[prefix + "rate2"] * local_out


def cross_attention(x: Tensor, residual: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    """Per-channel 3x3 window attention, queries from the residual, keys/values from x (zero padding 1).

    logit_j = q[c, p] * (k[c, p + j] + rel[c, j]) for j = 3 * row + col; out = sum_j softmax_j v[c, p + j].
    """
    channels, height, width = x.shape[1:]
    half = channels // 2
    query = conv1x1(residual, state[prefix + "query_conv.weight"])
    keys = F.pad(conv1x1(x, state[prefix + "key_conv.weight"]), (1, 1, 1, 1))
    values = F.pad(conv1x1(x, state[prefix + "value_conv.weight"]), (1, 1, 1, 1))
    rel_h = state[prefix + "rel_h"].reshape(half, 3)
    rel_w = state[prefix + "rel_w"].reshape(half, 3)
    logits, windows = [], []
    for row in range(3):
        for col in range(3):
            rel = torch.cat([rel_h[:, row], rel_w[:, col]])
            key = keys[:, :, row : row + height, col : col + width]
            logits.append(query * (key + rel[None, :, None, None]))
            windows.append(values[:, :, row : row + height, col : col + width])
    weights = torch.softmax(torch.stack(logits), dim=0)
    return (weights * torch.stack(windows)).sum(dim=0)


def projection(x: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    """ReLU(BN(1x1 conv without bias)); prefix ends with `conv1.` or `conv1_x.`."""
    return F.relu(batch_norm_train(conv1x1(x, state[prefix + "0.weight"]), state, prefix + "1."))


def head_outputs(student_maps: list[Tensor], state: dict[str, Tensor]) -> list[Tensor]:
    """Outputs of the head chain, deepest level first; `student_maps` deepest first as well.

    The FAM's side (its filter's last axis) is the size the level is resized to before it.
    """
    outputs, residual = [], None
    for level, x in enumerate(student_maps):
        prefix = f"atfs.{level}."
        if prefix + "conv1_x.0.weight" in state:
            x = projection(x, state, prefix + "conv1_x.")
        if level > 0:
            if prefix + "conv1.0.weight" in state:
                residual = projection(residual, state, prefix + "conv1.")
            x = cross_attention(x, nearest_resize(residual, x.shape[-1]), state, prefix + "att_conv.")
        fam_size = state[prefix + "conv2.0.weights1"].shape[-1]
        if x.shape[-1] != fam_size:
            x = nearest_resize(x, fam_size)
        outputs.append(F.relu(batch_norm_train(fam(x, state, prefix + "conv2.0."), state, prefix + "conv2.1.")))
        residual = x
    return outputs


def feature_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], state: dict[str, Tensor]) -> Tensor:
    """Sum over levels of mean((head output - teacher map)^2); both lists deepest first."""
    outputs = head_outputs(student_maps, state)
    return sum(((out - target) ** 2).mean() for out, target in zip(outputs, teacher_maps))
