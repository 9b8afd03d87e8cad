"""CIFAR ShuffleNetV1 (groups 3, widths 240/480/960), registered as "ShuffleV1".

Layout: a 1x1 conv-BN-ReLU stem (24 channels, full resolution), three stages of 4, 8, 4
bottlenecks whose first block halves the resolution and concatenates an average-pooled shortcut,
4x4 average pooling and a linear classifier. State-dict keys follow the community CIFAR zoo
(`conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}`, `linear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import channel_shuffle, check_num_classes, run_stages
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model

STEM_CHANNELS = 24


class ShuffleBottleneck(nn.Module):
    """Grouped 1x1 conv-BN-ReLU, channel shuffle, depthwise 3x3-BN-ReLU, grouped 1x1 conv-BN.

    The shortcut is the input (stride 1, added) or its 3x3 stride-2 average (stride 2,
    concatenated after the branch). forward(x) -> (relu(preact), preact).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        mid_channels = out_channels // 4
        # the 24-channel stem output is too narrow to split into groups
        self.first_groups = 1 if in_channels == STEM_CHANNELS else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1) if self.stride == 2 else out + x
        return F.relu(preact), preact


class ShuffleNetV1(FeatureModel):
    """ShuffleNetV1 for 32x32 inputs.

    Features for a 32x32 input (widths 240, 480, 960):
      stages: outputs of layer1, layer2, layer3 (after the last block's ReLU):
        (B, 240, 16, 16), (B, 480, 8, 8), (B, 960, 4, 4);
      preact: the same three maps before that ReLU (branch + shortcut);
      pooled: 4x4 average of layer3's output, (B, 960).
    """

    # registered with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        widths: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ):
        super().__init__()
        check_num_classes(num_classes)
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (width, count) in enumerate(zip(widths, num_blocks), start=1):
            # the first block concatenates its input, so its branch makes only the missing channels
            blocks = [ShuffleBottleneck(in_channels, width - in_channels, 2, groups)]
            blocks += [ShuffleBottleneck(width, width, 1, groups) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = width
        self.linear = nn.Linear(widths[-1], num_classes)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(f"layer{i}", w, s) for i, (w, s) in enumerate(zip(widths, (2, 4, 8)), 1)),
            pooled_channels=widths[-1],
        )

    def forward_features(self, x: Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        stages, preacts = run_stages((self.layer1, self.layer2, self.layer3), x)
        pooled = F.avg_pool2d(stages[-1], 4).flatten(1)
        return Features(stages, preacts, pooled, self.linear(pooled))


@register_model("ShuffleV1")
def shufflenetv1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNetV1, groups 3, stage widths 240/480/960, 4/8/4 blocks."""
    return ShuffleNetV1(num_classes=num_classes)
