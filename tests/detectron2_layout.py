"""Synthetic Detectron2 model-zoo checkpoints: Faster R-CNN R-50/R-101-FPN keys and shapes, random weights.

The names and shapes are those of Detectron2's GeneralizedRCNN with build_resnet_fpn_backbone,
StandardRPNHead and StandardROIHeads (FastRCNNConvFCHead with two fc layers), written out here from
Detectron2's module layout, independently of famkd's key map. The weights are scaled so that the
activations of a forward pass stay of order one.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")
FPN_CHANNELS = 256
ANCHORS_PER_LOCATION = 3
BOX_HEAD_INPUT = FPN_CHANNELS * 7 * 7
FC_DIM = 1024


def _conv_with_norm(shapes: dict[str, tuple[int, ...]], name: str, out: int, inp: int, kernel: int) -> None:
    shapes[f"{name}.weight"] = (out, inp, kernel, kernel)
    for buffer in NORM_BUFFERS:
        shapes[f"{name}.norm.{buffer}"] = (out,)


def _with_bias(shapes: dict[str, tuple[int, ...]], name: str, weight: tuple[int, ...]) -> None:
    shapes[f"{name}.weight"] = weight
    shapes[f"{name}.bias"] = (weight[0],)


def detectron2_shapes(depth: int = 50, num_classes: int = 80) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every entry of a Detectron2 Faster R-CNN R-`depth`-FPN checkpoint's "model" dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    _conv_with_norm(shapes, "backbone.bottom_up.stem.conv1", 64, 3, 7)
    channels = 64
    for stage, blocks in zip(range(2, 6), BLOCKS[depth]):
        width = 64 * 2 ** (stage - 2)
        for block in range(blocks):
            prefix = f"backbone.bottom_up.res{stage}.{block}"
            if block == 0:
                _conv_with_norm(shapes, f"{prefix}.shortcut", 4 * width, channels, 1)
            _conv_with_norm(shapes, f"{prefix}.conv1", width, channels, 1)
            _conv_with_norm(shapes, f"{prefix}.conv2", width, width, 3)
            _conv_with_norm(shapes, f"{prefix}.conv3", 4 * width, width, 1)
            channels = 4 * width
        _with_bias(shapes, f"backbone.fpn_lateral{stage}", (FPN_CHANNELS, channels, 1, 1))
        _with_bias(shapes, f"backbone.fpn_output{stage}", (FPN_CHANNELS, FPN_CHANNELS, 3, 3))
    rpn = "proposal_generator.rpn_head"
    _with_bias(shapes, f"{rpn}.conv", (FPN_CHANNELS, FPN_CHANNELS, 3, 3))
    _with_bias(shapes, f"{rpn}.objectness_logits", (ANCHORS_PER_LOCATION, FPN_CHANNELS, 1, 1))
    _with_bias(shapes, f"{rpn}.anchor_deltas", (4 * ANCHORS_PER_LOCATION, FPN_CHANNELS, 1, 1))
    _with_bias(shapes, "roi_heads.box_head.fc1", (FC_DIM, BOX_HEAD_INPUT))
    _with_bias(shapes, "roi_heads.box_head.fc2", (FC_DIM, FC_DIM))
    _with_bias(shapes, "roi_heads.box_predictor.cls_score", (num_classes + 1, FC_DIM))
    _with_bias(shapes, "roi_heads.box_predictor.bbox_pred", (4 * num_classes, FC_DIM))
    return shapes


def _random_entry(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name.endswith("running_var"):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if name.endswith("norm.weight"):
        return rng.uniform(0.3, 1.0, shape).astype(np.float32)
    if len(shape) == 1:
        return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))).astype(np.float32)


def random_detectron2_weights(depth: int = 50, num_classes: int = 80, seed: int = 0) -> dict[str, np.ndarray]:
    """A Detectron2 R-`depth`-FPN "model" dict of float32 numpy arrays with random values."""
    rng = np.random.default_rng(seed)
    return {name: _random_entry(rng, name, shape) for name, shape in detectron2_shapes(depth, num_classes).items()}


def zero_detectron2_weights(depth: int = 50, num_classes: int = 80) -> dict[str, np.ndarray]:
    """The same layout filled with zeros (cheap, for tests of names and shapes only)."""
    return {name: np.zeros(shape, np.float32) for name, shape in detectron2_shapes(depth, num_classes).items()}


def write_detectron2_pickle(
    path: Path, weights: dict[str, np.ndarray], protocol: int = pickle.HIGHEST_PROTOCOL
) -> Path:
    """Write `weights` as a model-zoo `.pkl` does: {"model": weights, "__author__": ..., "matching_heuristics": ...}."""
    checkpoint = {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    with open(path, "wb") as file:
        pickle.dump(checkpoint, file, protocol=protocol)
    return path
