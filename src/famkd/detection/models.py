"""Faster R-CNN + FPN teachers and students (torchvision), and one training forward that keeps the FPN features.

Backbones (`BACKBONES`): ResNet-18/50/101 as torchvision's `resnet_fpn_backbone` builds them (frozen batch
norm, stem and layer1 frozen, FPN over layer1..layer4 plus a max-pooled P6), and MobileNetV2 with an FPN over
the outputs of its stride-4, 8, 16 and 32 stages (24, 32, 96 and 320 channels) plus the same P6, all of it
trainable, as the MobileNetV2 student of ReviewKD/DKD's detection code (FREEZE_AT 0). Every model has the
FPN levels "0".."3" (P2..P5, strides 4..32) and "pool" (P6, stride 64), 256 channels each.

The RPN and box-head settings are Detectron2's Base-RCNN-FPN (`FASTER_RCNN_SETTINGS` of
famkd.detection.detectron2_import), the recipe of the teachers famkd imports. `min_size` and `max_size` must
be the dataset's (famkd.detection.coco resizes; the model's transform then scales by exactly 1).

`detector_forward` is torchvision's `GeneralizedRCNN.forward` in training, written out so that the
distillers get the FPN features, the sampled proposals and their class logits of the same forward that
computes the four detection losses (no second backbone pass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.mobilenetv2 import mobilenet_v2
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from famkd.detection.detectron2_import import FASTER_RCNN_SETTINGS, Detectron2Spec, import_detectron2_faster_rcnn
from famkd.errors import FamkdError, shown
from famkd.weights import fetch_torchvision_weights, load_checkpoint

FPN_CHANNELS = 256
FPN_LEVELS = ("0", "1", "2", "3", "pool")  # P2..P6
IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
}
BACKBONES = tuple(IMAGENET_WEIGHTS)
RESNET_TRAINABLE_LAYERS = 3  # Detectron2's BACKBONE.FREEZE_AT 2: the stem and res2 (layer1) frozen
# MobileNetV2 `features` indices ending the stride-4, 8, 16 and 32 stages, and their channels.
MOBILENET_STAGES = {"3": "0", "6": "1", "13": "2", "17": "3"}
MOBILENET_CHANNELS = [24, 32, 96, 320]
# The keys of torchvision's ImageNet classifiers that an FPN body does not use: the classifier, and for
# MobileNetV2 the 1x1 convolution to 1280 channels after its last FPN input.
UNUSED_CLASSIFIER_KEYS = {
    "resnet18": ("fc.",),
    "resnet50": ("fc.",),
    "resnet101": ("fc.",),
    "mobilenet_v2": ("classifier.", "features.18."),
}
DETECTRON2_DEPTHS = {"resnet50": 50, "resnet101": 101}
TORCHVISION_COCO_CLASSES = 91  # torchvision's COCO detectors: the background and category ids 1..90
BOX_PREDICTOR = "roi_heads.box_predictor"


def imagenet_state(backbone: str, init: str) -> dict[str, Tensor] | None:
    """The ImageNet classification state dict `init` names for `backbone`: torchvision's published weights
    ("imagenet", fetched once into torch's cache), a local file of the same layout (a path, e.g.
    resnet18-f37072fd.pth), or none ("none": random initialisation)."""
    if backbone not in IMAGENET_WEIGHTS:
        raise FamkdError(f"unknown detection backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if init == "none":
        return None
    if init == "imagenet":
        return fetch_torchvision_weights(IMAGENET_WEIGHTS[backbone], "train.student_init")
    path = Path(init).expanduser()
    if not path.is_file():
        raise FamkdError(
            f"train.student_init={init!r}: no such file; give 'imagenet' (torchvision's weights), 'none', or the "
            f"path of a torchvision {backbone} ImageNet state dict"
        )
    return load_checkpoint(path)


def load_backbone_body(body: nn.Module, state: dict[str, Tensor], backbone: str, source: str) -> None:
    """Load a torchvision classification state dict of `backbone` into an FPN backbone's body (its layers up
    to the last FPN input; ResNet keys as they are, MobileNetV2's under "features."), strictly: the keys
    left over may only be the classifier's and those of the layers after the last FPN input
    (`UNUSED_CLASSIFIER_KEYS`), so that e.g. a resnet34 file is not taken for a resnet18."""
    prefix = "features." if backbone == "mobilenet_v2" else ""
    keys = list(body.state_dict())
    names = [prefix + key for key in keys]
    missing = [name for name in names if name not in state]
    unused = set(state) - set(names)  # frozen batch norm has no num_batches_tracked to load
    extra = sorted(
        key
        for key in unused
        if not key.startswith(UNUSED_CLASSIFIER_KEYS[backbone]) and not key.endswith(".num_batches_tracked")
    )
    if missing or extra:
        problem = f"it lacks {shown(missing)}" if missing else f"it has keys a {backbone} has not: {shown(extra)}"
        raise FamkdError(f"{source} is not a torchvision {backbone} ImageNet state dict: {problem}")
    try:
        body.load_state_dict({key: state[name] for key, name in zip(keys, names)})
    except RuntimeError as error:
        raise FamkdError(f"{source} does not fit a {backbone}: {str(error).splitlines()[-1].strip()}") from None


def fpn_backbone(backbone: str, init: str = "none") -> BackboneWithFPN:
    """The backbone + FPN (levels FPN_LEVELS, FPN_CHANNELS each) of `backbone`, its body initialised as `init`
    says (`imagenet_state`), the FPN random."""
    state = imagenet_state(backbone, init)
    if backbone == "mobilenet_v2":
        features = mobilenet_v2().features
        model = BackboneWithFPN(features, MOBILENET_STAGES, MOBILENET_CHANNELS, FPN_CHANNELS, LastLevelMaxPool())
    else:
        model = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=RESNET_TRAINABLE_LAYERS)
    if state is not None:
        load_backbone_body(model.body, state, backbone, f"train.student_init={init}")
    return model


def build_detector(
    backbone: str, num_classes: int, min_size: int, max_size: int, backbone_init: str = "none"
) -> FasterRCNN:
    """A Faster R-CNN + FPN over `backbone` for num_classes (C + 1) labels and the dataset's min/max size,
    the backbone initialised as `backbone_init` says (`imagenet_state`)."""
    return FasterRCNN(
        fpn_backbone(backbone, backbone_init),
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        **FASTER_RCNN_SETTINGS,
    )


def load_teacher(
    backbone: str, checkpoint: str | os.PathLike, category_ids: tuple[int, ...], min_size: int, max_size: int
) -> FasterRCNN:
    """The frozen teacher (eval mode, no gradients) for the dataset's categories `category_ids` (its labels
    1..C): a Detectron2 model-zoo .pkl (ResNet-50/101 only), or a torchvision-format state dict (.pt/.pth):
    one over the same labels (e.g. a famkd run's student_last.pt), or torchvision's COCO detection weights
    over category ids (`torchvision_coco_state`)."""
    path = Path(checkpoint)
    num_classes = len(category_ids) + 1
    if path.suffix == ".pkl":
        if backbone not in DETECTRON2_DEPTHS:
            raise FamkdError(
                f"a Detectron2 .pkl teacher is a resnet50 or resnet101 (Detectron2's R-50/R-101 FPN), not {backbone!r}"
            )
        spec = Detectron2Spec(
            depth=DETECTRON2_DEPTHS[backbone], num_classes=num_classes - 1, min_size=min_size, max_size=max_size
        )
        teacher = import_detectron2_faster_rcnn(path, spec)
    else:
        teacher = build_detector(backbone, num_classes, min_size, max_size)
        state = torchvision_coco_state(load_checkpoint(path), category_ids)
        try:
            teacher.load_state_dict(state)
        except RuntimeError as error:
            raise FamkdError(
                f"teacher checkpoint {path} does not fit a {backbone} Faster R-CNN with {num_classes} classes: "
                f"{str(error).splitlines()[0]}"
            ) from error
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def torchvision_coco_state(state: dict[str, Tensor], category_ids: tuple[int, ...]) -> dict[str, Tensor]:
    """A detector state dict over the labels 0..C of `category_ids`, from one over COCO category ids.

    torchvision's COCO detection weights (e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth) have a box
    predictor of TORCHVISION_COCO_CLASSES outputs, output i being COCO category id i (0: background). Their
    rows of the background and of `category_ids`, in that order, are the rows of labels 0..C (four box
    deltas per class for bbox_pred). Any other state dict, or one already of C + 1 classes, is returned
    as it is."""
    scores = state.get(f"{BOX_PREDICTOR}.cls_score.weight")
    if scores is None or len(scores) != TORCHVISION_COCO_CLASSES or len(category_ids) + 1 == len(scores):
        return state
    if max(category_ids) >= TORCHVISION_COCO_CLASSES:
        raise FamkdError(
            f"the teacher predicts COCO category ids 1..{TORCHVISION_COCO_CLASSES - 1} but the data has category "
            f"id {max(category_ids)}"
        )
    rows = torch.tensor((0, *category_ids))
    deltas = (4 * rows[:, None] + torch.arange(4)).flatten()
    selected = {
        f"{BOX_PREDICTOR}.cls_score.weight": rows,
        f"{BOX_PREDICTOR}.cls_score.bias": rows,
        f"{BOX_PREDICTOR}.bbox_pred.weight": deltas,
        f"{BOX_PREDICTOR}.bbox_pred.bias": deltas,
    }
    return {key: value[selected[key]] if key in selected else value for key, value in state.items()}


@dataclass
class DetectorOutputs:
    """What one training forward of a detector yields.

    losses: torchvision's four terms (loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg);
    features: the FPN maps by level name (FPN_LEVELS); proposals: the sampled box-head proposals per image,
    in pixels of the model's input; class_logits: the box classifier's logits on them, (sum of counts, C + 1);
    image_sizes: each image's (height, width) before padding.
    """

    losses: dict[str, Tensor]
    features: dict[str, Tensor]
    proposals: list[Tensor]
    class_logits: Tensor
    image_sizes: list[tuple[int, int]]


def detector_forward(model: FasterRCNN, images: list[Tensor], targets: list[dict[str, Tensor]]) -> DetectorOutputs:
    """The training forward of `model` (GeneralizedRCNN.forward and RoIHeads.forward for boxes), keeping the
    FPN features, the sampled proposals and their class logits."""
    image_list, targets_in = model.transform(images, targets)
    assert targets_in is not None  # the transform returns the targets it was given
    features = model.backbone(image_list.tensors)
    proposals, rpn_losses = model.rpn(image_list, features, targets_in)
    heads = model.roi_heads
    proposals, _, labels, regression_targets = heads.select_training_samples(proposals, targets_in)
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    losses = {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    return DetectorOutputs(losses, features, proposals, class_logits, image_list.image_sizes)


def teacher_features(teacher: FasterRCNN, images: list[Tensor]) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
    """The teacher's FPN maps of `images` (its own normalisation; resize factor 1) and the image sizes."""
    image_list, _ = teacher.transform(images)
    return teacher.backbone(image_list.tensors), image_list.image_sizes


def teacher_class_logits(
    teacher: FasterRCNN, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
) -> Tensor:
    """The teacher's box-classifier logits on `proposals` (its own box pooler, box head and predictor)."""
    heads = teacher.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
    class_logits, _ = heads.box_predictor(box_features)
    return class_logits
