"""CIFAR VGG with batch norm (vgg8, vgg11, vgg13, vgg16, vgg19).

Layout: five blocks of 3x3 conv-BN(-ReLU) layers, max-pooling after blocks 0-2, global average
pooling after block 4 and one linear classifier on 512 features. Each block's last ReLU is applied
outside the block, so a block ends at its last BN. State-dict keys follow the community CIFAR zoo
(`block{0..4}.{3j, 3j+1}` for conv j and its BN, `classifier`).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models.cifar._common import check_num_classes
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model


def conv_bn_block(in_channels: int, widths: list[int]) -> nn.Sequential:
    """conv3x3-BN-ReLU per width, without the final ReLU (so the block ends at a BN)."""
    layers: list[nn.Module] = []
    for width in widths:
        conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(FeatureModel):
    """VGG-BN for 32x32 (and 64x64) inputs.

    Features for a 32x32 input:
      stages: relu(block1..block4) = (B, 128, 16, 16), (B, 256, 8, 8), (B, 512, 4, 4), (B, 512, 4, 4)
        (block 0, the stem, is not a stage; block 4 runs at block 3's resolution, because the
        pooling after block 3 is applied only to 64x64 inputs, as in the community zoo);
      preact: block1..block4 outputs before that ReLU (their last BN);
      pooled: global average of relu(block4), (B, 512).
    """

    # registered with add_module in __init__
    block0: nn.Sequential
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential

    def __init__(self, block_widths: list[list[int]], num_classes: int = 100):
        super().__init__()
        check_num_classes(num_classes)
        in_channels = 3
        for index, widths in enumerate(block_widths):
            self.add_module(f"block{index}", conv_bn_block(in_channels, widths))
            in_channels = widths[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()
        stage_widths = [widths[-1] for widths in block_widths[1:]]
        self.feature_info = FeatureInfo(
            stages=tuple(StageInfo(f"block{i}", w, s) for i, (w, s) in enumerate(zip(stage_widths, (2, 4, 8, 8)), 1)),
            pooled_channels=in_channels,
        )

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                assert module.bias is not None  # conv_bn_block builds its convolutions with a bias
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Features:
        pool_after_block3 = x.shape[-2] == 64
        x = F.relu(self.block0(x), inplace=True)
        stages, preacts = [], []
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
            if index <= 3 or pool_after_block3:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            preact = block(x)
            x = F.relu(preact)
            stages.append(x)
            preacts.append(preact)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return Features(stages, preacts, pooled, self.classifier(pooled))


# name -> output widths of the convs in blocks 0-4
VGG_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}

for _name, _widths in VGG_CONFIGS.items():
    register_model(_name)(partial(VGG, _widths))
