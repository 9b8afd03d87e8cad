"""Load state dicts saved by the published FAM-KD code into famkd modules.

The published distiller stores its heads as `atfs.{i}` (i = 0 the deepest, pooled level):
    conv2.0.weights1 (complex C_in x C_out x S x S), conv2.0.rate1, conv2.0.rate2, conv2.0.w0.*
    conv2.1.*                                   BN after FAM
    att_conv.{query,key,value}_conv.weight, att_conv.rel_h (C/2,1,1,3,1), att_conv.rel_w (C/2,1,1,1,3)
    conv1.{0,1}.*                               residual projection + BN (never used at i = 0)
    conv1_x.{0,1}.*                             input projection + BN
and the models as `student.*` / `teacher.*` with the community zoo's keys. A leading
`module.` (DataParallel) is stripped.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from famkd.distill.fam_kd import FamKD
from famkd.fam import FrequencyAttention

FAM_KEYS = {
    "weights1": "global_filter",
    "rate1": "gamma1",
    "rate2": "gamma2",
    "w0.weight": "local.weight",
    "w0.bias": "local.bias",
}
HEAD_PREFIXES = {
    "conv2.0.": "fam.",
    "conv2.1.": "bn.",
    "att_conv.query_conv.": "attention.query.",
    "att_conv.key_conv.": "attention.key.",
    "att_conv.value_conv.": "attention.value.",
    "att_conv.": "attention.",
    "conv1.": "residual_proj.",
    "conv1_x.": "input_proj.",
}
HEAD_KEY = re.compile(r"atfs\.(\d+)\.(.+)")


class OfficialStateError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def convert_value(official_key: str, value: Tensor) -> Tensor:
    """Published tensors in famkd's layout: complex filters as real (..., 2), rel_h/rel_w as (C/2, 3)."""
    if official_key.endswith("weights1"):
        return torch.view_as_real(value.resolve_conj()) if value.is_complex() else value
    if official_key.endswith(("rel_h", "rel_w")):
        return value.reshape(value.shape[0], -1)
    return value


def fam_key(official: str) -> str | None:
    return FAM_KEYS.get(official)


def head_key(index: int, rest: str) -> str | None:
    """famkd key of `atfs.{index}.{rest}`, or None if `rest` is not a published head key."""
    for old, new in HEAD_PREFIXES.items():
        if rest.startswith(old):
            tail = rest[len(old) :]
            if new == "fam.":
                mapped = fam_key(tail)
                return None if mapped is None else f"heads.{index}.fam.{mapped}"
            return f"heads.{index}.{new}{tail}"
    return None


def map_official_key(key: str, target: nn.Module) -> str | None:
    """famkd key for a published key; None for a key to skip. Raises on a key that has no place."""
    if isinstance(target, FrequencyAttention):
        mapped = fam_key(key)
    elif key.startswith(("student.", "teacher.")):
        mapped = key
    else:
        match = HEAD_KEY.fullmatch(key)
        if match and int(match.group(1)) == 0 and match.group(2).startswith("conv1."):
            return None  # the deepest level's residual projection: built but never used by the published model
        if match and int(match.group(1)) == 0 and match.group(2).startswith("conv2.") and is_residual_pooled(target):
            return None  # the pooled level's FAM and BN: built but never compared (ImageNet, pooled_level residual)
        mapped = head_key(int(match.group(1)), match.group(2)) if match else None
    if mapped is None:
        raise OfficialStateError(f"published key {key!r} has no counterpart in {type(target).__name__}")
    return mapped


def is_residual_pooled(target: nn.Module) -> bool:
    return isinstance(target, FamKD) and target.pooled_is_residual


def load_official_state(target: FamKD | FrequencyAttention, state_dict: dict[str, Tensor]) -> None:
    """Load a published FAM-KD state dict into a `fam_kd` distiller or a lone FrequencyAttention.

    Every key must find its place and every tensor its shape; the deepest level's unused
    `conv1.*` is skipped. Errors name the offending key.
    """
    if not isinstance(target, (FamKD, FrequencyAttention)):
        raise TypeError(
            f"load_official_state loads into a fam_kd distiller or a FrequencyAttention, not {type(target).__name__}"
        )
    own = target.state_dict()
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        mapped = map_official_key(key, target)
        if mapped is None:
            continue
        if mapped not in own:
            raise OfficialStateError(
                f"published key {key!r} maps to {mapped!r}, which this {type(target).__name__} does not have "
                "(was it built for another teacher/student pair or max_mid_channels?)"
            )
        value = convert_value(key, value)
        if value.shape != own[mapped].shape:
            raise OfficialStateError(
                f"published key {key!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(own[mapped].shape)} for {mapped!r}"
            )
        converted[mapped] = value
    missing = sorted(set(own) - set(converted))
    if missing:
        raise OfficialStateError(f"published state dict lacks {len(missing)} keys, e.g. {missing[:5]}")
    target.load_state_dict(converted)
