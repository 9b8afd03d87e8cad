"""CIFAR ResNets of depth 6n + 2 (resnet8 ... resnet110, resnet8x4, resnet32x4).

Layout: a 3x3 stem conv-BN-ReLU, three stages of n basic blocks (stride 1, 2, 2), 8x8 average
pooling and a linear classifier. State-dict keys follow the community CIFAR zoo
(`conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}`, `fc`).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import check_num_classes, init_conv_kaiming_fan_out, run_stages
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity, or 1x1 conv-BN when the shape changes).

    forward(x) -> (relu(preact), preact), preact = residual branch + shortcut.
    """

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        return F.relu(preact), preact


class CifarResNet(FeatureModel):
    """CIFAR ResNet with `(depth - 2) / 6` basic blocks per stage.

    Features for a 32x32 input (widths w = `widths`):
      stages: outputs of layer1, layer2, layer3 (after the last block's ReLU):
        (B, w1, 32, 32), (B, w2, 16, 16), (B, w3, 8, 8);
      preact: the same three maps before that final ReLU (residual sum);
      pooled: 8x8 average of layer3's output, (B, w3).
    """

    # registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        check_num_classes(num_classes)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem_width, *stage_widths = widths
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_channels = stem_width
        for index, (width, stride) in enumerate(zip(stage_widths, (1, 2, 2)), start=1):
            blocks = [
                BasicBlock(in_channels if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(blocks_per_stage)
            ]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = width
        self.fc = nn.Linear(stage_widths[-1], num_classes)
        init_conv_kaiming_fan_out(self)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(f"layer{i}", w, s) for i, (w, s) in enumerate(zip(stage_widths, (1, 2, 4)), 1)),
            pooled_channels=stage_widths[-1],
        )

    def forward_features(self, x: Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = run_stages((self.layer1, self.layer2, self.layer3), x)
        pooled = F.avg_pool2d(stages[-1], 8).flatten(1)
        return Features(stages, preacts, pooled, self.fc(pooled))


THIN_WIDTHS = (16, 16, 32, 64)
WIDE_WIDTHS = (32, 64, 128, 256)
# name -> (depth, widths of the stem and stages 1-3)
RESNET_CONFIGS = {
    "resnet8": (8, THIN_WIDTHS),
    "resnet14": (14, THIN_WIDTHS),
    "resnet20": (20, THIN_WIDTHS),
    "resnet32": (32, THIN_WIDTHS),
    "resnet44": (44, THIN_WIDTHS),
    "resnet56": (56, THIN_WIDTHS),
    "resnet110": (110, THIN_WIDTHS),
    "resnet8x4": (8, WIDE_WIDTHS),
    "resnet32x4": (32, WIDE_WIDTHS),
}

for _name, (_depth, _widths) in RESNET_CONFIGS.items():
    register_model(_name)(partial(CifarResNet, _depth, _widths))
