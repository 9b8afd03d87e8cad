"""Detectron2 model-zoo Faster R-CNN R-50/R-101-FPN checkpoints as torchvision `FasterRCNN` models.

The COCO teachers of the paper's detection experiments (those of ReviewKD and DKD) are Detectron2
model-zoo checkpoints. `import_detectron2_faster_rcnn` reads one (a `.pkl` through famkd's
restricted unpickler, or a Detectron2 training `.pth` through `torch.load(weights_only=True)`),
renames every weight, and loads it strictly into a torchvision Faster R-CNN built to compute what
Detectron2 computes. Every difference between the two libraries and how it is handled is in
docs/detection.md; in short:

- ResNet: the stride of each downsampling bottleneck is moved from the 3x3 conv (torchvision) to the
  first 1x1 conv (Detectron2's MSRA models, `RESNETS.STRIDE_IN_1X1`); FrozenBatchNorm2d everywhere
  with eps 1e-5 in both libraries.
- Input: torchvision models take RGB images in [0, 1]; Detectron2's took BGR in [0, 255] minus its
  `PIXEL_MEAN`, over its `PIXEL_STD`. The transform's mean and std are those values reversed and
  divided by 255, and the stem conv's input channels are reversed, so the first conv sees the same
  numbers as in Detectron2.
- Classes: Detectron2's classifier has background last, torchvision's first; its class-specific box
  regression has no background rows, torchvision's has (zeros here). Label l of the torchvision model
  is Detectron2's contiguous class l - 1; `coco_category_id` maps it to the COCO category id.
- Anchors: Detectron2's cell anchors are not rounded and sit on the fixed strides 4..64; torchvision
  rounds them and infers each level's stride from the padded image size (wrong for P6 when the padded
  side is an odd multiple of 32). `Detectron2AnchorGenerator` does what Detectron2 does.
- Box pooling: Detectron2's "ROIAlignV2" (aligned=True, adaptive sampling, its own level rule), where
  torchvision's `MultiScaleRoIAlign` has aligned=False. `Detectron2RoIPooler` does what Detectron2 does.
- Box coder weights (RPN 1,1,1,1; ROI heads 10,10,5,5) and the RPN/ROI settings of Detectron2's
  Base-RCNN-FPN config are set explicitly.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from famkd.errors import ConfigError, FamkdError, shown
from famkd.weights import load_checkpoint, state_dict_mismatch
from famkd.weights.safe_pickle import load_numpy_pickle

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
"""Bottleneck blocks in res2..res5 (torchvision's layer1..layer4) per ResNet depth."""

DETECTRON2_PIXEL_MEAN = (103.530, 116.280, 123.675)
"""MODEL.PIXEL_MEAN of the MSRA-initialised zoo models: BGR order, 0-255 scale."""
DETECTRON2_PIXEL_STD = (1.0, 1.0, 1.0)
"""MODEL.PIXEL_STD of the MSRA-initialised zoo models."""
FROZEN_BN_EPS = 1e-5
"""detectron2.layers.FrozenBatchNorm2d's eps; torchvision.ops.FrozenBatchNorm2d's default is the same."""

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
"""MODEL.RPN.BBOX_REG_WEIGHTS."""
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
"""MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS."""

ANCHOR_SIZES = (32, 64, 128, 256, 512)
"""MODEL.ANCHOR_GENERATOR.SIZES of Base-RCNN-FPN: one size per level P2..P6."""
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
"""MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS (height / width), the same on every level."""
ANCHOR_STRIDES = (4, 8, 16, 32, 64)
"""The strides of P2..P6, on which Detectron2 places the anchors of each level (offset 0)."""

POOLER_RESOLUTION = 7
"""MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION of Base-RCNN-FPN."""
POOLER_SAMPLING_RATIO = 0
"""MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO: 0 is adaptive, ceil(bin size) samples per bin."""
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4
"""The FPN paper's level rule, as Detectron2's ROIPooler writes it."""

FASTER_RCNN_SETTINGS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 2000,  # MODEL.RPN.PRE_NMS_TOPK_TRAIN (per level)
    "rpn_pre_nms_top_n_test": 1000,  # MODEL.RPN.PRE_NMS_TOPK_TEST (per level)
    "rpn_post_nms_top_n_train": 1000,  # MODEL.RPN.POST_NMS_TOPK_TRAIN (per image; torchvision's default is 2000)
    "rpn_post_nms_top_n_test": 1000,  # MODEL.RPN.POST_NMS_TOPK_TEST
    "rpn_nms_thresh": 0.7,  # MODEL.RPN.NMS_THRESH
    "rpn_fg_iou_thresh": 0.7,  # MODEL.RPN.IOU_THRESHOLDS
    "rpn_bg_iou_thresh": 0.3,
    "rpn_batch_size_per_image": 256,  # MODEL.RPN.BATCH_SIZE_PER_IMAGE
    "rpn_positive_fraction": 0.5,  # MODEL.RPN.POSITIVE_FRACTION
    "box_score_thresh": 0.05,  # MODEL.ROI_HEADS.SCORE_THRESH_TEST
    "box_nms_thresh": 0.5,  # MODEL.ROI_HEADS.NMS_THRESH_TEST
    "box_detections_per_img": 100,  # TEST.DETECTIONS_PER_IMAGE
    "box_fg_iou_thresh": 0.5,  # MODEL.ROI_HEADS.IOU_THRESHOLDS
    "box_bg_iou_thresh": 0.5,
    "box_batch_size_per_image": 512,  # MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    "box_positive_fraction": 0.25,  # MODEL.ROI_HEADS.POSITIVE_FRACTION
    "bbox_reg_weights": ROI_BOX_WEIGHTS,
}
"""torchvision FasterRCNN arguments with the values of Detectron2's Base-RCNN-FPN config (the key in comments)."""

COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
"""COCO category id of Detectron2's contiguous classes 0..79: 1..90 without 12 26 29 30 45 66 68 69 71 83."""

CELL_ANCHORS_PREFIX = "proposal_generator.anchor_generator.cell_anchors."
"""Cell-anchor buffers older Detectron2 checkpoints store next to the weights."""

_NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")
_STEM_WEIGHT = "backbone.body.conv1.weight"
_CLS_SCORE = "roi_heads.box_predictor.cls_score"
_BBOX_PRED = "roi_heads.box_predictor.bbox_pred"
_KEYS_SHOWN = 8
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class Detectron2Spec:
    """What the Detectron2 config of a checkpoint says that its weights do not.

    The defaults are those of the COCO-Detection faster_rcnn_R_{50,101}_FPN_{1x,3x} zoo models.
    `min_size` and `max_size` are INPUT.MIN_SIZE_TEST and INPUT.MAX_SIZE_TEST.
    """

    depth: int = 50
    num_classes: int = 80
    stride_in_1x1: bool = True
    input_format: str = "BGR"
    pixel_mean: tuple[float, float, float] = DETECTRON2_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = DETECTRON2_PIXEL_STD
    min_size: int = 800
    max_size: int = 1333

    def __post_init__(self) -> None:
        if self.depth not in RESNET_BLOCKS:
            raise ConfigError(f"depth must be one of {sorted(RESNET_BLOCKS)}, got {self.depth}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")
        if self.input_format not in ("BGR", "RGB"):
            raise ConfigError(
                f"input_format must be 'BGR' or 'RGB' (Detectron2's INPUT.FORMAT), got {self.input_format!r}"
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ConfigError(
                f"pixel_mean and pixel_std need 3 values each, std > 0: {self.pixel_mean}, {self.pixel_std}"
            )
        if not 0 < self.min_size <= self.max_size:
            raise ConfigError(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")

    def image_mean_std(self) -> tuple[list[float], list[float]]:
        """The transform's mean and std for RGB images in [0, 1] that give Detectron2's normalised values.

        For a BGR model these come out in RGB order, matching the reversed stem (see `stem_for_rgb`).
        """
        mean, std = list(self.pixel_mean), list(self.pixel_std)
        if self.input_format == "BGR":
            mean.reverse()
            std.reverse()
        return [value / 255 for value in mean], [value / 255 for value in std]


def coco_category_id(label: int) -> int:
    """The COCO category id of label `label` (1..80) of an imported model; label 0 is background."""
    if not 1 <= label <= len(COCO_CATEGORY_IDS):
        raise FamkdError(f"label {label} is not a COCO class label (1..{len(COCO_CATEGORY_IDS)})")
    return COCO_CATEGORY_IDS[label - 1]


def detectron2_cell_anchors(size: float, aspect_ratios: tuple[float, ...] = ANCHOR_ASPECT_RATIOS) -> list[list[float]]:
    """Detectron2's DefaultAnchorGenerator cell anchors: (x0, y0, x1, y1) centred on 0, one per ratio, not rounded."""
    anchors = []
    for ratio in aspect_ratios:
        width = math.sqrt(size * size / ratio)
        height = ratio * width
        anchors.append([-width / 2, -height / 2, width / 2, height / 2])
    return anchors


class Detectron2AnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator placing Detectron2's anchors: unrounded, on the fixed strides 4..64.

    torchvision rounds its cell anchors to integers and takes each level's stride as the padded image
    side // the level's side, which for P6 (a stride-2 max pool of P5, rounding up) is not 64 when the
    padded side is an odd multiple of 32: 800 // 13 = 61.
    """

    def __init__(self) -> None:
        super().__init__(tuple((size,) for size in ANCHOR_SIZES), (ANCHOR_ASPECT_RATIOS,) * len(ANCHOR_SIZES))

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = _CPU,
    ) -> Tensor:
        anchors = [anchor for size in scales for anchor in detectron2_cell_anchors(size, tuple(aspect_ratios))]
        return torch.tensor(anchors, dtype=dtype, device=device)

    def grid_anchors(self, grid_sizes: list[list[int]], strides: list[list[Tensor]]) -> list[Tensor]:
        fixed_strides = [[torch.tensor(stride), torch.tensor(stride)] for stride in ANCHOR_STRIDES]
        return super().grid_anchors(grid_sizes, fixed_strides)


class Detectron2RoIPooler(MultiScaleRoIAlign):
    """Detectron2's ROIPooler as Base-RCNN-FPN sets it up ("ROIAlignV2"), in place of torchvision's pooler.

    Each box is pooled from level floor(4 + log2(sqrt(area) / 224 + 1e-8)) clamped to P2..P5 with
    `roi_align(aligned=True, sampling_ratio=0)`. torchvision's `MultiScaleRoIAlign` pools with
    aligned=False (no half-pixel shift, boxes widened to at least one feature pixel), infers the
    scales from the image size, and its level rule adds 1e-6 to the level instead.
    """

    def __init__(
        self, featmap_names: tuple[str, ...] = ("0", "1", "2", "3"), strides: tuple[int, ...] = (4, 8, 16, 32)
    ):
        super().__init__(list(featmap_names), POOLER_RESOLUTION, POOLER_SAMPLING_RATIO)
        self.strides = strides
        self.min_level = int(math.log2(strides[0]))

    def levels(self, boxes: list[Tensor]) -> Tensor:
        """The index into `featmap_names` each box (all images, in order) is pooled from."""
        sizes = torch.sqrt(torch.cat([(box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) for box in boxes]))
        levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 1e-8))
        max_level = self.min_level + len(self.strides) - 1
        return levels.clamp(self.min_level, max_level).to(torch.int64) - self.min_level

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pooled features (boxes, channels, 7, 7); `image_shapes` is unused: the strides are fixed."""
        rois = torch.cat([torch.cat([box.new_full((len(box), 1), index), box], 1) for index, box in enumerate(boxes)])
        levels = self.levels(boxes)
        first = features[self.featmap_names[0]]
        pooled = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (name, stride) in enumerate(zip(self.featmap_names, self.strides)):
            chosen = torch.nonzero(levels == level).squeeze(1)
            pooled[chosen] = roi_align(
                features[name],
                rois[chosen],
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            ).to(pooled.dtype)
        return pooled


def move_stride_to_1x1(body: nn.Module) -> None:
    """Put the stride of each downsampling bottleneck in its first 1x1 conv, as in the MSRA ResNets."""
    for layer_name in ("layer2", "layer3", "layer4"):
        block = getattr(body, layer_name)[0]
        block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride


def build_faster_rcnn(spec: Detectron2Spec | None = None) -> FasterRCNN:
    """A randomly initialised torchvision Faster R-CNN that computes what Detectron2's model of `spec` computes.

    Its labels are 0 (background) and 1..num_classes (Detectron2's classes 0..num_classes-1). The
    stem and res2 are frozen (MODEL.BACKBONE.FREEZE_AT 2); the model is returned in eval mode.
    """
    spec = spec or Detectron2Spec()
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{spec.depth}",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=3,
        returned_layers=[1, 2, 3, 4],
        extra_blocks=LastLevelMaxPool(),
    )
    if spec.stride_in_1x1:
        move_stride_to_1x1(backbone.body)
    image_mean, image_std = spec.image_mean_std()
    model = FasterRCNN(
        backbone,
        num_classes=spec.num_classes + 1,
        min_size=spec.min_size,
        max_size=spec.max_size,
        image_mean=image_mean,
        image_std=image_std,
        rpn_anchor_generator=Detectron2AnchorGenerator(),
        box_roi_pool=Detectron2RoIPooler(),
        **FASTER_RCNN_SETTINGS,
    )
    model.rpn.box_coder = BoxCoder(RPN_BOX_WEIGHTS)
    return model.eval()


def _conv_with_norm(detectron2: str, conv: str, norm: str) -> dict[str, str]:
    keys = {f"{detectron2}.weight": f"{conv}.weight"}
    keys.update({f"{detectron2}.norm.{buffer}": f"{norm}.{buffer}" for buffer in _NORM_BUFFERS})
    return keys


def _with_bias(detectron2: str, torchvision: str) -> dict[str, str]:
    return {f"{detectron2}.{name}": f"{torchvision}.{name}" for name in ("weight", "bias")}


def _resnet_keys(depth: int) -> dict[str, str]:
    keys = _conv_with_norm("backbone.bottom_up.stem.conv1", "backbone.body.conv1", "backbone.body.bn1")
    for stage, blocks in enumerate(RESNET_BLOCKS[depth], start=2):
        for block in range(blocks):
            detectron2 = f"backbone.bottom_up.res{stage}.{block}"
            torchvision = f"backbone.body.layer{stage - 1}.{block}"
            for conv in (1, 2, 3):
                keys |= _conv_with_norm(
                    f"{detectron2}.conv{conv}", f"{torchvision}.conv{conv}", f"{torchvision}.bn{conv}"
                )
            if block == 0:
                keys |= _conv_with_norm(
                    f"{detectron2}.shortcut", f"{torchvision}.downsample.0", f"{torchvision}.downsample.1"
                )
    return keys


def detectron2_key_map(depth: int = 50) -> dict[str, str]:
    """Detectron2 name -> torchvision name of every weight of a Faster R-CNN R-`depth`-FPN."""
    keys = _resnet_keys(depth)
    for level, stage in enumerate(range(2, 6)):
        keys |= _with_bias(f"backbone.fpn_lateral{stage}", f"backbone.fpn.inner_blocks.{level}.0")
        keys |= _with_bias(f"backbone.fpn_output{stage}", f"backbone.fpn.layer_blocks.{level}.0")
    heads = {
        "proposal_generator.rpn_head.conv": "rpn.head.conv.0.0",
        "proposal_generator.rpn_head.objectness_logits": "rpn.head.cls_logits",
        "proposal_generator.rpn_head.anchor_deltas": "rpn.head.bbox_pred",
        "roi_heads.box_head.fc1": "roi_heads.box_head.fc6",
        "roi_heads.box_head.fc2": "roi_heads.box_head.fc7",
        "roi_heads.box_predictor.cls_score": _CLS_SCORE,
        "roi_heads.box_predictor.bbox_pred": _BBOX_PRED,
    }
    for detectron2, torchvision in heads.items():
        keys |= _with_bias(detectron2, torchvision)
    return keys


def _as_tensor(key: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        return torch.from_numpy(np.array(value))
    raise FamkdError(f"Detectron2 checkpoint entry {key} is a {type(value).__name__}, not a numeric array")


def model_weights(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights, as tensors, of a Detectron2 checkpoint dict ({"model": weights, ...}) or of the weights."""
    weights = checkpoint.get("model", checkpoint)
    if not isinstance(weights, Mapping) or not all(isinstance(key, str) for key in weights):
        raise FamkdError(
            "not a Detectron2 checkpoint: expected {'model': {name: array}, ...} (the model-zoo layout) or "
            "{name: array}; Caffe2/Detectron1 files ({'blobs': ...}) are not supported"
        )
    return {key: _as_tensor(key, value) for key, value in weights.items()}


def load_detectron2_weights(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights of a Detectron2 checkpoint: a file path or an already loaded dict.

    A `.pkl` (any pickle) is read with famkd's restricted unpickler, a zip file (`torch.save`, e.g.
    Detectron2's own `model_final.pth`) with `torch.load(weights_only=True)`: no code in the file runs.
    """
    if isinstance(source, Mapping):
        return model_weights(source)
    checkpoint = load_checkpoint(source) if zipfile.is_zipfile(source) else load_numpy_pickle(source)
    if not isinstance(checkpoint, Mapping):
        raise FamkdError(f"{source} holds a {type(checkpoint).__name__}, not a Detectron2 checkpoint dict")
    return model_weights(checkpoint)


def expected_buffers(spec: Detectron2Spec) -> dict[str, Tensor]:
    """The values the non-weight buffers of older checkpoints must hold for `spec` (pixel mean/std, cell anchors)."""
    buffers = {
        "pixel_mean": torch.tensor(spec.pixel_mean).view(3, 1, 1),
        "pixel_std": torch.tensor(spec.pixel_std).view(3, 1, 1),
    }
    for level, size in enumerate(ANCHOR_SIZES):
        buffers[f"{CELL_ANCHORS_PREFIX}{level}"] = torch.tensor(detectron2_cell_anchors(size))
    return buffers


def _check_buffers(weights: Mapping[str, Tensor], spec: Detectron2Spec) -> None:
    """Raise unless every non-weight buffer the checkpoint stores matches what the built model does."""
    for key, expected in expected_buffers(spec).items():
        stored = weights.get(key)
        if stored is not None and (
            stored.shape != expected.shape or not torch.allclose(stored.double(), expected.double())
        ):
            raise FamkdError(
                f"the checkpoint's {key} is {stored.flatten().tolist()} but famkd's model uses "
                f"{expected.flatten().tolist()}; set Detectron2Spec's pixel_mean/pixel_std to the checkpoint's "
                "config (anchors other than Base-RCNN-FPN's are not supported)"
            )


def _check_keys(weights: Mapping[str, Tensor], key_map: dict[str, str], spec: Detectron2Spec) -> None:
    non_weights = set(expected_buffers(spec))
    unused = sorted(set(weights) - set(key_map) - non_weights)
    missing = sorted(set(key_map) - set(weights))
    if unused or missing:
        problems = [
            f"{label}: {shown(keys, _KEYS_SHOWN)}"
            for label, keys in (("unmapped", unused), ("missing", missing))
            if keys
        ]
        raise FamkdError(
            f"the checkpoint is not a Detectron2 Faster R-CNN R-{spec.depth}-FPN ({'; '.join(problems)}); famkd "
            "imports Faster R-CNN R-50-FPN and R-101-FPN: check Detectron2Spec.depth"
        )


def stem_for_rgb(weight: Tensor) -> Tensor:
    """The stem conv weight for RGB input channels, from Detectron2's weight for BGR ones."""
    return weight.flip(1)


def _background_first(state: dict[str, Tensor], num_classes: int) -> None:
    """Detectron2's classifier has background last and no background box rows; torchvision wants them first."""
    scores, boxes = state[f"{_CLS_SCORE}.weight"], state[f"{_BBOX_PRED}.weight"]
    if scores.shape[0] != num_classes + 1 or boxes.shape[0] != 4 * num_classes:
        raise FamkdError(
            f"the checkpoint's box predictor has {scores.shape[0]} class scores and {boxes.shape[0]} box outputs; "
            f"{num_classes} classes need {num_classes + 1} and {4 * num_classes} (class-specific regression). "
            "Set Detectron2Spec.num_classes"
        )
    order = [num_classes, *range(num_classes)]
    for name in ("weight", "bias"):
        state[f"{_CLS_SCORE}.{name}"] = state[f"{_CLS_SCORE}.{name}"][order]
        box_rows = state[f"{_BBOX_PRED}.{name}"]
        state[f"{_BBOX_PRED}.{name}"] = torch.cat([box_rows.new_zeros((4, *box_rows.shape[1:])), box_rows])


def convert_detectron2_weights(weights: Mapping[str, Tensor], spec: Detectron2Spec | None = None) -> dict[str, Tensor]:
    """The state dict of `build_faster_rcnn(spec)` holding Detectron2's `weights` (as from `load_detectron2_weights`).

    Every weight is used and every torchvision weight is set, or `FamkdError` lists the keys that are
    not. Buffers older checkpoints also store (pixel_mean, pixel_std, cell anchors) are checked
    against the model and dropped.
    """
    spec = spec or Detectron2Spec()
    key_map = detectron2_key_map(spec.depth)
    _check_keys(weights, key_map, spec)
    _check_buffers(weights, spec)
    state = {key_map[key]: value for key, value in weights.items() if key in key_map}
    if spec.input_format == "BGR":
        state[_STEM_WEIGHT] = stem_for_rgb(state[_STEM_WEIGHT])
    _background_first(state, spec.num_classes)
    return state


def import_detectron2_faster_rcnn(
    source: str | os.PathLike | Mapping[str, Any], spec: Detectron2Spec | None = None
) -> FasterRCNN:
    """A torchvision Faster R-CNN (eval mode, CPU) holding a Detectron2 Faster R-CNN R-50/R-101-FPN checkpoint.

    `source` is the checkpoint file or its loaded dict; `spec` says what its config said (defaults:
    the COCO zoo models). The model takes RGB images in [0, 1], like every torchvision detector, and
    predicts labels 1..num_classes (`coco_category_id` gives the COCO id of each).
    """
    spec = spec or Detectron2Spec()
    state = convert_detectron2_weights(load_detectron2_weights(source), spec)
    model = build_faster_rcnn(spec)
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise FamkdError(f"the converted weights do not fit torchvision's Faster R-CNN R-{spec.depth}-FPN: {mismatch}")
    model.load_state_dict(state)
    return model
