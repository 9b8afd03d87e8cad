"""Faster R-CNN + FPN teachers and students (torchvision), and one training forward that keeps the FPN features.

Backbones (`BACKBONES`): ResNet-18/50/101 as torchvision's `resnet_fpn_backbone` builds them (stem and layer1
frozen, FPN over layer1..layer4 plus a max-pooled P6), and MobileNetV2 with an FPN over the outputs of its
stride-4, 8, 16 and 32 stages (24, 32, 96 and 320 channels) plus the same P6, all of it trainable, as the
MobileNetV2 student of ReviewKD/DKD's detection code (FREEZE_AT 0). Every model has the FPN levels "0".."3"
(P2..P5, strides 4..32) and "pool" (P6, stride 64), 256 channels each. `frozen_bn` (the default) builds the
body's batch norms as FrozenBatchNorm2d: the ImageNet statistics and affine, never trained (Detectron2's
RESNETS.NORM "FrozenBN", mdistiller's MOBILENETV2.NORM "FrozenBN"); without it they are trainable
BatchNorm2d, except in a ResNet's frozen stem and layer1, which stay frozen altogether.

The RPN and box-head settings are Detectron2's Base-RCNN-FPN (`FASTER_RCNN_SETTINGS` of
famkd.detection.detectron2_import), the recipe of the teachers famkd imports. The box-regression losses of
the RPN and the box head are smooth L1 with a beta of their own (`SmoothL1RPN`, `SmoothL1RoIHeads`; 0 is
L1, Detectron2's; torchvision hard-codes 1/9). `min_size` and `max_size` must be the dataset's: famkd.detection.coco
resizes, and the model takes a training image at the size it is given (multi-scale training), and resizes
an image to evaluate to `min_size`, which is then a scale of exactly 1.

`detector_forward` is torchvision's `GeneralizedRCNN.forward` in training, written out so that the
distillers get the FPN features, the sampled proposals and their class logits of the same forward that
computes the four detection losses (no second backbone pass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.mobilenetv2 import mobilenet_v2
from torchvision.ops import FrozenBatchNorm2d
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
TORCHVISION_SMOOTH_L1_BETA = 1 / 9  # torchvision's RPN and box losses (hard-coded in rpn.py and roi_heads.py)
DETECTRON2_SMOOTH_L1_BETA = 0.0  # Detectron2's MODEL.RPN.SMOOTH_L1_BETA and MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA: L1


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


def frozen_batch_norms(module: nn.Module) -> nn.Module:
    """`module` with each BatchNorm2d in it replaced by a FrozenBatchNorm2d of the same statistics, affine and eps."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        assert module.running_mean is not None and module.running_var is not None  # tracked, as torchvision's
        for name, value in (("weight", module.weight), ("bias", module.bias)):
            getattr(frozen, name).copy_(value.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, frozen_batch_norms(child))
    return module


def fpn_backbone(backbone: str, init: str = "none", frozen_bn: bool = True) -> BackboneWithFPN:
    """The backbone + FPN (levels FPN_LEVELS, FPN_CHANNELS each) of `backbone`, its body initialised as `init`
    says (`imagenet_state`), the FPN random; the body's batch norms frozen (FrozenBatchNorm2d) where
    `frozen_bn`, else trainable (but for a ResNet's frozen stem and layer1, frozen whole, statistics too)."""
    state = imagenet_state(backbone, init)
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    if backbone == "mobilenet_v2":
        features = mobilenet_v2(norm_layer=norm_layer).features
        model = BackboneWithFPN(features, MOBILENET_STAGES, MOBILENET_CHANNELS, FPN_CHANNELS, LastLevelMaxPool())
    else:
        model = resnet_fpn_backbone(
            backbone_name=backbone, weights=None, norm_layer=norm_layer, trainable_layers=RESNET_TRAINABLE_LAYERS
        )
        for name, child in model.body.named_children():  # Detectron2 freezes a frozen stage's norms as well
            if not any(parameter.requires_grad for parameter in child.parameters()):
                setattr(model.body, name, frozen_batch_norms(child))
    if state is not None:
        load_backbone_body(model.body, state, backbone, f"train.student_init={init}")
    return model


def box_regression_loss(deltas: Tensor, targets: Tensor, beta: float, count: int) -> Tensor:
    """The smooth-L1 loss (transition at `beta`; 0: L1) of box deltas, summed over them and divided by `count`."""
    return F.smooth_l1_loss(deltas, targets, beta=beta, reduction="sum") / count


class SmoothL1RPN(RegionProposalNetwork):
    """torchvision's RPN with the smooth-L1 beta of its box-regression loss an attribute, `box_loss_beta`.

    The loss is torchvision's otherwise: the same anchor sampling (its fg_bg_sampler), the objectness
    cross-entropy over the sampled anchors, the box term summed over the sampled positive anchors and divided
    by the number of sampled anchors."""

    box_loss_beta: float = TORCHVISION_SMOOTH_L1_BETA

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        positive_masks, negative_masks = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive_masks))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative_masks))[0]])
        all_labels, all_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = box_regression_loss(
            pred_bbox_deltas[positive], all_targets[positive], self.box_loss_beta, sampled.numel()
        )
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], all_labels[sampled])
        return objectness_loss, box_loss


class SmoothL1RoIHeads(RoIHeads):
    """torchvision's box head with the smooth-L1 beta of its box-regression loss an attribute, `box_loss_beta`.

    `box_losses` is torchvision's fastrcnn_loss otherwise (cross-entropy over the sampled proposals; the box
    term at each positive proposal's class, summed and divided by the number of proposals). Its training
    forward (boxes only: famkd's detectors have no mask or keypoint head) uses it; evaluation is torchvision's.
    """

    box_loss_beta: float = TORCHVISION_SMOOTH_L1_BETA

    def box_losses(
        self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """(loss_classifier, loss_box_reg) of the sampled proposals' logits and deltas (C + 1 classes x 4)."""
        all_labels, all_targets = torch.cat(labels), torch.cat(regression_targets)
        positive = torch.where(all_labels > 0)[0]
        deltas = box_regression.reshape(len(all_labels), -1, 4)[positive, all_labels[positive]]
        box_loss = box_regression_loss(deltas, all_targets[positive], self.box_loss_beta, all_labels.numel())
        return F.cross_entropy(class_logits, all_labels), box_loss

    def training_forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> tuple[list[Tensor], Tensor, dict[str, Tensor]]:
        """The sampled proposals, their class logits and the two box-head losses."""
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_sizes))
        )
        loss_classifier, loss_box_reg = self.box_losses(class_logits, box_regression, labels, regression_targets)
        return proposals, class_logits, {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("the box head needs targets in training")
        return [], self.training_forward(features, proposals, image_shapes, targets)[2]


def build_detector(
    backbone: str,
    num_classes: int,
    min_size: int,
    max_size: int,
    backbone_init: str = "none",
    *,
    frozen_bn: bool = True,
    rpn_smooth_l1_beta: float = DETECTRON2_SMOOTH_L1_BETA,
    box_smooth_l1_beta: float = DETECTRON2_SMOOTH_L1_BETA,
) -> FasterRCNN:
    """A Faster R-CNN + FPN over `backbone` for num_classes (C + 1) labels and the dataset's min/max size,
    the backbone initialised as `backbone_init` says (`imagenet_state`), its batch norms frozen where
    `frozen_bn`, the RPN's and the box head's box-regression losses smooth L1 of the betas given (0: L1).
    In training it takes the images at the size it is given (the data resized them, at one of several sizes
    in multi-scale training); to evaluate it resizes them to `min_size` / `max_size`."""
    model = FasterRCNN(
        fpn_backbone(backbone, backbone_init, frozen_bn),
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        _skip_resize=True,  # GeneralizedRCNNTransform's own switch: no resize in training
        **FASTER_RCNN_SETTINGS,
    )
    # The subclasses add a beta attribute and override the loss methods, nothing else: the modules keep the
    # state torchvision built.
    model.rpn.__class__ = SmoothL1RPN
    model.rpn.box_loss_beta = rpn_smooth_l1_beta
    model.roi_heads.__class__ = SmoothL1RoIHeads
    model.roi_heads.box_loss_beta = box_smooth_l1_beta
    return model


def for_inference(model: FasterRCNN) -> FasterRCNN:
    """`model` with torchvision's own RPN and box-head classes back: the smooth-L1 subclasses change training
    losses only, and TorchScript cannot compile their training forward (an exported detector predicts)."""
    model.rpn.__class__ = RegionProposalNetwork
    model.roi_heads.__class__ = RoIHeads
    return model


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


def presized_input(transform: GeneralizedRCNNTransform, images: list[Tensor]) -> ImageList:
    """`images` as a model's transform makes its input, but not resized (the data resized them): normalised
    and padded together to a multiple of its size_divisible, with each image's (height, width)."""
    normalised = [transform.normalize(image) for image in images]
    padded = transform.batch_images(normalised, size_divisible=transform.size_divisible)
    return ImageList(padded, [(int(image.shape[-2]), int(image.shape[-1])) for image in images])


def detector_forward(model: FasterRCNN, images: list[Tensor], targets: list[dict[str, Tensor]]) -> DetectorOutputs:
    """The training forward of `model` (GeneralizedRCNN.forward and RoIHeads.forward for boxes) on the images
    as given, keeping the FPN features, the sampled proposals and their class logits. `model` is one of
    `build_detector`, whose losses have the betas it was built with."""
    heads = model.roi_heads
    if not isinstance(heads, SmoothL1RoIHeads):
        raise FamkdError("detector_forward trains a detector of famkd.detection.models.build_detector")
    image_list = presized_input(model.transform, images)
    features = model.backbone(image_list.tensors)
    proposals, rpn_losses = model.rpn(image_list, features, targets)
    proposals, class_logits, box_losses = heads.training_forward(features, proposals, image_list.image_sizes, targets)
    return DetectorOutputs({**rpn_losses, **box_losses}, features, proposals, class_logits, image_list.image_sizes)


def teacher_features(teacher: FasterRCNN, images: list[Tensor]) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
    """The teacher's FPN maps of `images` at the size they are given (its own normalisation) and the image
    sizes: in multi-scale training the teacher sees the student's images, whatever their size."""
    image_list = presized_input(teacher.transform, images)
    return teacher.backbone(image_list.tensors), image_list.image_sizes


def teacher_class_logits(
    teacher: FasterRCNN, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
) -> Tensor:
    """The teacher's box-classifier logits on `proposals` (its own box pooler, box head and predictor)."""
    heads = teacher.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
    class_logits, _ = heads.box_predictor(box_features)
    return class_logits
