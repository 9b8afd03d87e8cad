"""benchmarks/flop_floor.py counts multiply-adds per image: checked on layers counted by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flop_floor.py"


def load_script():
    spec = importlib.util.spec_from_file_location("flop_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multiply_adds_per_image_of_a_convolution_and_a_linear_layer():
    flop_floor = load_script()
    conv, linear = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False), nn.Linear(8, 5)
    images = torch.randn(4, 3, 32, 32)
    by_hand = (8 * 3 * 9 * 32 * 32 + 8 * 5) / 1e6  # per output pixel: C_in * k * k multiply-adds; then 8 -> 5
    assert flop_floor.mega_macs(lambda: linear(conv(images).mean((2, 3))), batch=4) == by_hand
