"""Device and mixed-precision selection."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from famkd.engine.errors import FamkdError


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
