"""Seeding and determinism: one call puts every random generator and kernel choice in a known state."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_deterministic_algorithms(enabled: bool) -> None:
    """torch.use_deterministic_algorithms, called only on a change (its first call imports the compiler, ~3 s)."""
    if torch.are_deterministic_algorithms_enabled() != enabled:
        torch.use_deterministic_algorithms(enabled)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with `deterministic`, forbid non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
    set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
