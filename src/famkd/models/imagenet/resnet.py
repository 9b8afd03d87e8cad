"""torchvision's ImageNet ResNets (resnet18, resnet34, resnet50) with famkd's feature taps.

`ImageNetResNet` subclasses `torchvision.models.ResNet` and adds no module, so its state dict is
exactly torchvision's (same keys, same shapes): torchvision's published weight files load with
`load_state_dict` unchanged. `forward` is torchvision's.

`forward_features` runs one FX graph traced from that forward by torchvision's
`create_feature_extractor`. It returns, for an input of side s:
  stages: the outputs of layer1 .. layer4 after the last block's ReLU, sides s/4, s/8, s/16, s/32
    (rounded up), channels 64/128/256/512 (basic blocks) or 256/512/1024/2048 (bottlenecks);
  preact: the same four maps before that ReLU: the residual sum, the `add` node of each stage's
    last block (e.g. `layer1.1.add` for resnet18, `layer1.2.add` for resnet50);
  pooled: the flattened average pool (`flatten`), (B, 512) or (B, 2048);
  logits: `fc`.
The node names are read from `get_graph_node_names`: a stage's output is its last node, its
pre-activation its last `add` node. torchvision's blocks apply `ReLU(inplace=True)` to the residual
sum, which would overwrite the returned pre-activation, so in the extractor's graph the ReLUs that
read a returned node run out of place (the model's own `forward` is unchanged).

The extractor is built on the first `forward_features` call and cached on the model, outside its
modules (so outside the state dict, `parameters()` and `.to()`): it calls the model's own
submodules, so it shares their parameters, buffers and train/eval modes. torchvision's forward does
not branch on the training mode, so the one traced graph serves both modes. Copies of the model
(deepcopy, pickle) drop the cache and build their own. Modules swapped in after the first call (e.g.
by `nn.SyncBatchNorm.convert_sync_batchnorm`) are not seen by an existing extractor: swap first.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, fx, nn
from torchvision.models import ResNet
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.models.resnet import BasicBlock, Bottleneck

from famkd.models.cifar._common import check_num_classes
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import register_model

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
STAGE_WIDTHS = (64, 128, 256, 512)  # torchvision's planes per stage, before the block's expansion
STAGE_STRIDES = (4, 8, 16, 32)
POOLED, LOGITS = "pooled", "logits"
_EXTRACTOR = "_cached_feature_extractor"  # key of the cached extractor in the model's __dict__


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
        taps = self.feature_extractor()(x)
        return Features(
            stages=[taps[f"stage.{name}"] for name in STAGE_NAMES],
            preact=[taps[f"preact.{name}"] for name in STAGE_NAMES],
            pooled=taps[POOLED],
            logits=taps[LOGITS],
        )

    def __getstate__(self) -> dict[str, Any]:
        """The module's state without the cached extractor: a copy builds its own on its own modules."""
        state = super().__getstate__()
        state.pop(_EXTRACTOR, None)
        return state

    def feature_extractor(self) -> fx.GraphModule:
        """The FX graph module `forward_features` runs (returning a dict of taps), built on first use and cached."""
        extractor = self.__dict__.get(_EXTRACTOR)
        if extractor is None:
            extractor = build_feature_extractor(self)
            self.__dict__[_EXTRACTOR] = extractor  # not setattr: that would register it as a submodule
        return extractor


def feature_node_names(model: nn.Module) -> dict[str, str]:
    """FX node name -> tap name ("stage.layer1", "preact.layer1", ..., "pooled", "logits") of a torchvision ResNet.

    A stage's output is its last node, its pre-activation the last residual `add` in it; the
    logits are the graph's last node and the pooled vector the node feeding them (the flatten).
    """
    nodes, _ = get_graph_node_names(model)
    return_nodes = {}
    for stage in STAGE_NAMES:
        inside = [node for node in nodes if node.startswith(f"{stage}.")]
        return_nodes[inside[-1]] = f"stage.{stage}"
        return_nodes[[node for node in inside if node.rsplit(".", 1)[-1] == "add"][-1]] = f"preact.{stage}"
    return_nodes[nodes[-2]] = POOLED
    return_nodes[nodes[-1]] = LOGITS
    return return_nodes


def build_feature_extractor(model: nn.Module) -> fx.GraphModule:
    """An FX graph module over `model`'s own submodules returning every tap of `feature_node_names`.

    Each module's training flag is kept: tracing sets every module to the model's mode, which
    would undo e.g. a frozen BatchNorm's eval mode inside a training model.
    """
    modes = {module: module.training for module in model.modules()}
    extractor = create_feature_extractor(model, return_nodes=feature_node_names(model))
    for module, training in modes.items():
        module.training = training
    for graph in (extractor.train_graph, extractor.eval_graph):
        run_relus_reading_outputs_out_of_place(extractor, graph)
    extractor.recompile()
    return extractor


def run_relus_reading_outputs_out_of_place(root: nn.Module, graph: fx.Graph) -> None:
    """Replace each in-place ReLU module call that reads a returned node by an out-of-place `torch.relu`."""
    output = next(node for node in graph.nodes if node.op == "output")
    for returned in list(output.args[0].values()):
        for user in list(returned.users):
            if user.op == "call_module" and _is_inplace_relu(root.get_submodule(user.target)):
                with graph.inserting_after(user):
                    out_of_place = graph.call_function(torch.relu, user.args)
                user.replace_all_uses_with(out_of_place)
                graph.erase_node(user)
    graph.lint()


def _is_inplace_relu(module: nn.Module) -> bool:
    return isinstance(module, nn.ReLU) and module.inplace


# name -> (block, blocks per stage), as torchvision builds them
RESNET_CONFIGS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

for _name, (_block, _layers) in RESNET_CONFIGS.items():
    register_model(_name)(partial(ImageNetResNet, _block, _layers))
