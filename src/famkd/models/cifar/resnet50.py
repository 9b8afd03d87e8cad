"""CIFAR ResNet50: bottleneck blocks 3/4/6/3 on a full-resolution 3x3 stem, registered as "ResNet50".

Layout: 3x3 conv-BN-ReLU stem (64 channels, stride 1), four stages of bottlenecks with output
widths 256, 512, 1024, 2048 (stride 1, 2, 2, 2), global average pooling and a linear classifier.
State-dict keys follow the community CIFAR zoo (`conv1`, `bn1`,
`layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0,shortcut.1}`, `linear`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import check_num_classes, init_conv_kaiming_fan_out, run_stages
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3 (strided)-BN-ReLU, 1x1-BN to 4x the width, plus a shortcut (identity, or
    1x1 conv-BN when the shape changes). forward(x) -> (relu(preact), preact)."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = EXPANSION * width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        preact = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(preact), preact


class CifarBottleneckResNet(FeatureModel):
    """Bottleneck ResNet for 32x32 inputs with `num_blocks` blocks per stage.

    Features for a 32x32 input:
      stages: outputs of layer1..layer4 (after the last block's ReLU):
        (B, 256, 32, 32), (B, 512, 16, 16), (B, 1024, 8, 8), (B, 2048, 4, 4);
      preact: the same four maps before that ReLU (residual sum);
      pooled: global average of layer4's output, (B, 2048).
    """

    # registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        check_num_classes(num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        widths = (64, 128, 256, 512)
        for index, (width, count, stride) in enumerate(zip(widths, num_blocks, (1, 2, 2, 2)), start=1):
            blocks = [
                Bottleneck(in_channels if i == 0 else EXPANSION * width, width, stride if i == 0 else 1)
                for i in range(count)
            ]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = EXPANSION * width
        self.linear = nn.Linear(in_channels, num_classes)
        init_conv_kaiming_fan_out(self)
        self.feature_info = FeatureInfo(
            stages=tuple(
                StageInfo(f"layer{i}", EXPANSION * w, s) for i, (w, s) in enumerate(zip(widths, (1, 2, 4, 8)), 1)
            ),
            pooled_channels=in_channels,
        )

    def forward_features(self, x: Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = run_stages((self.layer1, self.layer2, self.layer3, self.layer4), x)
        pooled = F.adaptive_avg_pool2d(stages[-1], 1).flatten(1)
        return Features(stages, preacts, pooled, self.linear(pooled))


@register_model("ResNet50")
def resnet50(num_classes: int = 100) -> CifarBottleneckResNet:
    """CIFAR ResNet50: bottleneck blocks 3/4/6/3, output widths 256/512/1024/2048."""
    return CifarBottleneckResNet((3, 4, 6, 3), num_classes)
