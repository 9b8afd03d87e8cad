"""Device, memory layout and mixed-precision selection."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import torch

from famkd.errors import FamkdError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FamkdError("device=cuda but CUDA is not available here; use device=cpu or device=auto")
    return torch.device(name)


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context for `amp` (off | bf16 | fp16)."""
    if amp == "off":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return lambda: torch.autocast(device.type, dtype=dtype)


def to_channels_last(module: torch.nn.Module) -> None:
    """Channels-last storage for every 4-D parameter and buffer (the convolution weights).

    Module.to(memory_format=torch.channels_last) would also convert 5-D tensors, and it fails on
    FAM's (C_in, C_out, S, S, 2) filter, which channels-last does not describe.
    """
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
