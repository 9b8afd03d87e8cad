"""CIFAR wide ResNets WRN-d-k (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2), pre-activation blocks.

Layout: a 3x3 stem conv, three groups of (d - 4) / 6 blocks of widths 16k, 32k, 64k
(stride 1, 2, 2), a final BN-ReLU, 8x8 average pooling and a linear classifier. State-dict keys
follow the community CIFAR zoo (`conv1`, `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`,
`bn1`, `fc`).
"""

from __future__ import annotations

from functools import partial
from itertools import islice

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import check_num_classes, init_conv_kaiming_fan_out
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    The shortcut is the raw input when the shape is kept, else a 1x1 conv of the activated input.
    forward(x) -> (output, bn1(x)); bn1(x) is the block's entry normalisation, which the model
    reports as the previous stage's pre-activation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        # camelCase name kept so that community checkpoints load unchanged
        self.convShortcut = None
        if in_channels != out_channels:
            self.convShortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        entry = self.bn1(x)
        activated = F.relu(entry)
        out = self.conv2(F.relu(self.bn2(self.conv1(activated)), inplace=True))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out, entry


class WideGroup(nn.Module):
    """A group of wide blocks (only the first one changes width or stride), held in `layer`.

    forward(x) -> (output, entry normalisation of the group's first block).
    """

    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
                for i in range(num_blocks)
            )
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, first_entry = self.layer[0](x)
        for block in islice(self.layer, 1, None):
            x, _ = block(x)
        return x, first_entry


class WideResNet(FeatureModel):
    """WRN-depth-widen (depth = 6n + 4).

    Features for a 32x32 input (widths 16k, 32k, 64k):
      stages: outputs of block1, block2, block3 (residual sums; a WRN block ends without ReLU):
        (B, 16k, 32, 32), (B, 32k, 16, 16), (B, 64k, 8, 8);
      preact: the BN that follows each output, i.e. block2's and block3's first-block bn1 and the
        final bn1, applied to stages 1, 2, 3 (the same values the forward pass uses);
      pooled: 8x8 average of relu(bn1(block3 output)), (B, 64k).
    The community model re-applies those three BNs after its pass, so in training mode their
    running statistics move twice per step; here each BN runs once (all outputs are identical).
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        check_num_classes(num_classes)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.block1 = WideGroup(blocks_per_group, 16, widths[0], 1)
        self.block2 = WideGroup(blocks_per_group, widths[0], widths[1], 2)
        self.block3 = WideGroup(blocks_per_group, widths[1], widths[2], 2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        init_conv_kaiming_fan_out(self)
        nn.init.zeros_(self.fc.bias)
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(f"block{i}", w, s) for i, (w, s) in enumerate(zip(widths, (1, 2, 4)), 1)),
            pooled_channels=widths[2],
        )

    def forward_features(self, x: Tensor) -> Features:
        stage1, _ = self.block1(self.conv1(x))
        stage2, preact1 = self.block2(stage1)
        stage3, preact2 = self.block3(stage2)
        preact3 = self.bn1(stage3)
        pooled = F.avg_pool2d(F.relu(preact3), 8).flatten(1)
        return Features([stage1, stage2, stage3], [preact1, preact2, preact3], pooled, self.fc(pooled))


# name -> (depth, widen factor)
WRN_CONFIGS = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}

for _name, (_depth, _widen) in WRN_CONFIGS.items():
    register_model(_name)(partial(WideResNet, _depth, _widen))
