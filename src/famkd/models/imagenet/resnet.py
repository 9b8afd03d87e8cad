"""torchvision's ImageNet ResNets (resnet18, resnet34, resnet50) with famkd's feature taps.

`ImageNetResNet` subclasses `torchvision.models.ResNet` and adds no module, so its state dict is
exactly torchvision's (same keys, same shapes): torchvision's published weight files load with
`load_state_dict` unchanged. `forward` is torchvision's.

`forward_features` reads its taps with famkd.models.taps' forward hooks, attached on the first call (and again
on a copy, which carries none). For an input of side s:
  stages: the outputs of layer1 .. layer4 after the last block's ReLU, sides s/4, s/8, s/16, s/32
    (rounded up), channels 64/128/256/512 (basic blocks) or 256/512/1024/2048 (bottlenecks);
  preact: the same four maps before that ReLU: the residual sum, the input of the last block's final
    ReLU call (copied when taken, as that ReLU works in place);
  pooled: the flattened average pool, the input of `fc`, (B, 512) or (B, 2048);
  logits: `fc`.
Modules swapped in after the first call (e.g. by `nn.SyncBatchNorm.convert_sync_batchnorm`) are hooked again
by famkd.models.taps.refresh_taps.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from famkd.models.cifar._common import check_num_classes
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model
from famkd.models.taps import attach_taps, tap_reader

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
STAGE_WIDTHS = (64, 128, 256, 512)  # torchvision's planes per stage, before the block's expansion
STAGE_STRIDES = (4, 8, 16, 32)
PROBE_SIZE = 64  # the side of the image the taps are found with (any side works: the hooks do not depend on it)


class ImageNetResNet(ResNet, FeatureModel):
    """torchvision's ResNet with `forward_features` and `feature_info` (see the module docstring)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000):
        super().__init__(block, layers, num_classes=check_num_classes(num_classes))
        self.feature_info = FeatureInfo(
            stages=tuple(
                StageInfo(name, width * block.expansion, stride)
                for name, width, stride in zip(STAGE_NAMES, STAGE_WIDTHS, STAGE_STRIDES)
            ),
            pooled_channels=STAGE_WIDTHS[-1] * block.expansion,
        )

    def forward_features(self, x: Tensor) -> Features:
        reader = tap_reader(self) or attach_taps(self, PROBE_SIZE, STAGE_NAMES, label=type(self).__name__)
        return reader(x)


# name -> (block, blocks per stage), as torchvision builds them
RESNET_CONFIGS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

for _name, (_block, _layers) in RESNET_CONFIGS.items():
    register_model(_name)(partial(ImageNetResNet, _block, _layers))
