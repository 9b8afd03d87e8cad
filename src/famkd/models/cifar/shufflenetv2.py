"""CIFAR ShuffleNetV2 at width 1 (stage widths 116/232/464, head 1024), registered as "ShuffleV2".

Layout: a 1x1 conv-BN-ReLU stem (24 channels, full resolution), three stages each made of a
stride-2 down block and 3, 7, 3 split blocks, a 1x1 conv-BN-ReLU head, 4x4 average pooling and a
linear classifier. State-dict keys follow the community CIFAR zoo (`conv1`, `bn1`,
`layer{1,2,3}.0.{conv1..conv5,bn1..bn5}`, `layer{1,2,3}.{i>0}.{conv1..conv3,bn1..bn3}`, `conv2`,
`bn2`, `linear`).
"""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import channel_shuffle, check_num_classes
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model

STEM_CHANNELS = 24


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


def depthwise3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)


class SplitBlock(nn.Module):
    """Keeps the first half of the channels and transforms the second half
    (1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU).

    forward(x) -> (shuffle(cat[kept, relu(branch)]), cat[kept, branch]): the pre-activation is
    concatenated but not shuffled, as in the community zoo.
    """

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = conv1x1(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = depthwise3x3(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv1x1(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, transformed = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(transformed)), inplace=True)
        out = self.bn2(self.conv2(out))
        branch = self.bn3(self.conv3(out))
        preact = torch.cat([kept, branch], dim=1)
        out = torch.cat([kept, F.relu(branch)], dim=1)
        return channel_shuffle(out, 2), preact


class DownBlock(nn.Module):
    """Two stride-2 branches, each giving half the output channels, concatenated and shuffled.

    left: depthwise 3x3-BN, 1x1-BN-ReLU; right: 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid_channels = out_channels // 2
        self.conv1 = depthwise3x3(in_channels, 2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv1x1(in_channels, mid_channels)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = conv1x1(in_channels, mid_channels)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = depthwise3x3(mid_channels, 2)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = conv1x1(mid_channels, mid_channels)
        self.bn5 = nn.BatchNorm2d(mid_channels)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))), inplace=True)
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(FeatureModel):
    """ShuffleNetV2 for 32x32 inputs.

    Features for a 32x32 input (widths 116, 232, 464):
      stages: outputs of layer1, layer2, layer3 (shuffled, after the last block's ReLU):
        (B, 116, 16, 16), (B, 232, 8, 8), (B, 464, 4, 4);
      preact: the last split block's cat[kept half, branch before ReLU], unshuffled;
      pooled: 4x4 average of the 1x1 conv-BN-ReLU head applied to layer3, (B, 1024).
    """

    # registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        widths: tuple[int, int, int] = (116, 232, 464),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        head_channels: int = 1024,
        num_classes: int = 100,
    ):
        super().__init__()
        check_num_classes(num_classes)
        self.conv1 = conv1x1(3, STEM_CHANNELS)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (width, count) in enumerate(zip(widths, num_blocks), start=1):
            blocks = [DownBlock(in_channels, width)] + [SplitBlock(width) for _ in range(count)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = width
        self.conv2 = conv1x1(widths[-1], head_channels)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.linear = nn.Linear(head_channels, num_classes)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(f"layer{i}", w, s) for i, (w, s) in enumerate(zip(widths, (2, 4, 8)), 1)),
            pooled_channels=head_channels,
        )

    @staticmethod
    def run_layer(layer: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
        """The layer's output and its last split block's pre-activation."""
        x = layer[0](x)
        for block in islice(layer, 1, None):
            x, preact = block(x)
        return x, preact

    def forward_features(self, x: Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = [], []
        for layer in (self.layer1, self.layer2, self.layer3):
            x, preact = self.run_layer(layer, x)
            stages.append(x)
            preacts.append(preact)
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(x)), inplace=True), 4).flatten(1)
        return Features(stages, preacts, pooled, self.linear(pooled))


@register_model("ShuffleV2")
def shufflenetv2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNetV2 at width 1: stage widths 116/232/464, 3/7/3 split blocks, 1024-channel head."""
    return ShuffleNetV2(num_classes=num_classes)
