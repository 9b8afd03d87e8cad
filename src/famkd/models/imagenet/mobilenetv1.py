"""MobileNetV1, the ImageNet student of the KD literature's resnet50 -> MobileNetV1 benchmark (ReviewKD, DKD).

Layout and state-dict names follow that benchmark's model (mdistiller's `imagenet/mobilenetv1.py`),
so its checkpoints load: `model` is a Sequential of 15 entries, `model.0` the stem (3x3 stride-2
conv, BN, ReLU: keys `model.0.{0,1}`), `model.1` .. `model.13` depthwise-separable blocks (3x3
depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU: keys `model.{i}.{0,1,3,4}`) and `model.14`
the global average pool, then `fc` (1024 -> num_classes). Weights keep PyTorch's default init, as there.

Features for an input of side s (the benchmark's `feats` / `preact_feats`):
  stages: the outputs of blocks 3, 5, 11 and 13, the last block at each of the strides 4, 8, 16 and
    32: (B, 128, s/4, s/4), (B, 256, s/8, s/8), (B, 512, s/16, s/16), (B, 1024, s/32, s/32)
    (sides rounded up);
  preact: the same maps before the block's final ReLU (the pointwise BN's output);
  pooled: the average of the last map, (B, 1024).

One difference: there the pool is `AvgPool2d(7)`, which only fits a 224 input; here `model.14` is
an adaptive average pool to 1x1, the same at 224 and valid at any size. Neither has parameters,
so the state dicts are the same.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import check_num_classes
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model

STEM_CHANNELS, STEM_STRIDE = 32, 2
# (output channels, stride) of the depthwise-separable blocks model.1 .. model.13
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))
FIRST_STAGE_STRIDE = 4  # the stem and block 1 (stride 2) are not stages


def conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv_dw(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv, BN, ReLU, then 1x1 pointwise conv, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def stage_blocks() -> dict[int, int]:
    """Index in `model` -> total stride, of the last block at each total stride from FIRST_STAGE_STRIDE on."""
    last_at_stride = {}
    total = STEM_STRIDE
    for index, (_, stride) in enumerate(BLOCKS, start=1):
        total *= stride
        last_at_stride[total] = index
    return {index: total for total, index in last_at_stride.items() if total >= FIRST_STAGE_STRIDE}


def run_to_last_norm(block: nn.Module, x: Tensor) -> Tensor:
    """Run a block without its final ReLU: its pre-activation output."""
    *layers, _ = block.children()
    for layer in layers:
        x = layer(x)
    return x


class MobileNetV1(FeatureModel):
    """MobileNetV1 with the benchmark's layout and taps (see the module docstring)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        check_num_classes(num_classes)
        layers = [conv_bn(3, STEM_CHANNELS, STEM_STRIDE)]
        in_channels = STEM_CHANNELS
        for out_channels, stride in BLOCKS:
            layers.append(conv_dw(in_channels, out_channels, stride))
            in_channels = out_channels
        self.model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(in_channels, num_classes)
        self.stage_indices = tuple(stage_blocks())
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(f"model.{i}", BLOCKS[i - 1][0], stride) for i, stride in stage_blocks().items()),
            pooled_channels=in_channels,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.model(x).flatten(1))

    def forward_features(self, x: Tensor) -> Features:
        *blocks, pool = self.model
        stages, preacts = [], []
        for index, block in enumerate(blocks):
            if index in self.stage_indices:
                preact = run_to_last_norm(block, x)
                x = F.relu(preact)
                stages.append(x)
                preacts.append(preact)
            else:
                x = block(x)
        pooled = pool(x).flatten(1)
        return Features(stages, preacts, pooled, self.fc(pooled))


register_model("MobileNetV1")(MobileNetV1)
