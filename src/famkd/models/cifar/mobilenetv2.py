"""CIFAR MobileNetV2 at half width (expansion T = 6, width 0.5), registered as "MobileNetV2".

Layout: a stride-2 3x3 conv-BN-ReLU stem, seven groups of inverted residual blocks, a 1x1
conv-BN-ReLU to 1280 channels, 2x2 average pooling and a linear classifier. State-dict keys
follow the community CIFAR zoo (`conv1.{0,1}`, `blocks.{g}.{i}.conv.{0,1,3,4,6,7}`, `conv2.{0,1}`,
`classifier.0`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import check_num_classes
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model

# per group: (expansion, output channels at width 1, blocks, stride of the first block);
# expansion None means the model's T
GROUP_SETTINGS = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
STAGE_GROUPS = (1, 2, 4, 6)  # the groups whose outputs are the feature stages
STAGE_STRIDES = (2, 4, 8, 16)
LAST_CHANNELS = 1280


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear), plus the input when
    stride is 1 and the width is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(FeatureModel):
    """MobileNetV2 for 32x32 inputs with expansion `expansion` and width multiplier `width`.

    Features for a 32x32 input at width 0.5:
      stages: outputs of block groups 1, 2, 4, 6 = (B, 12, 16, 16), (B, 16, 8, 8), (B, 48, 4, 4),
        (B, 160, 2, 2);
      preact: the same tensors (each group ends at a linear BN with no activation after it);
      pooled: 2x2 average of the 1x1 conv-BN-ReLU head (applied after group 6), (B, 1280).
    """

    def __init__(self, expansion: int = 6, width: float = 0.5, num_classes: int = 100):
        super().__init__()
        check_num_classes(num_classes)
        in_channels = int(32 * width)
        self.conv1 = conv_bn_relu(3, in_channels, 3, 2)
        self.blocks = nn.ModuleList()
        for group_expansion, channels, num_blocks, first_stride in GROUP_SETTINGS:
            out_channels = int(channels * width)
            blocks = []
            for index in range(num_blocks):
                stride = first_stride if index == 0 else 1
                blocks.append(InvertedResidual(in_channels, out_channels, stride, group_expansion or expansion))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*blocks))
        last_channels = int(LAST_CHANNELS * width) if width > 1.0 else LAST_CHANNELS
        self.conv2 = conv_bn_relu(in_channels, last_channels, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        self._init_weights()
        self.feature_info = FeatureInfo(
            stages=tuple(
                StageInfo(f"blocks.{group}", int(GROUP_SETTINGS[group][1] * width), stride)
                for group, stride in zip(STAGE_GROUPS, STAGE_STRIDES)
            ),
            pooled_channels=last_channels,
        )

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Features:
        x = self.conv1(x)
        stages = []
        for index, group in enumerate(self.blocks):
            x = group(x)
            if index in STAGE_GROUPS:
                stages.append(x)
        # 2x2 pooling with ceil mode, as the community zoo sizes it for 32x32 inputs
        pooled = F.avg_pool2d(self.conv2(x), 2, ceil_mode=True).flatten(1)
        return Features(stages, list(stages), pooled, self.classifier(pooled))


@register_model("MobileNetV2")
def mobilenetv2_half(num_classes: int = 100) -> MobileNetV2:
    """The half-width CIFAR MobileNetV2 (T = 6, width 0.5)."""
    return MobileNetV2(expansion=6, width=0.5, num_classes=num_classes)
