"""Detection distillers: a Faster R-CNN student, a frozen Faster R-CNN teacher and the method's heads.

Every distiller is a famkd.distill.Distiller registered for the detection task, built with
`create_distiller(method, task="detection", student=..., teacher=..., **options)`. Its
`forward(images, targets, iteration)` returns `(None, {term: scalar})`: the student's four detection losses
unchanged (loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg) plus the method's weighted
term, all of which the trainer sums and logs. The teacher runs in eval mode under no_grad and is not a
parameter of the optimiser. The distillation weight ramps linearly over the first
`warmup_iters` iterations: weight * min(iteration / warmup_iters, 1) (iterations count from 1).

Methods, on the FPN levels P2..P6 ("0".."3", "pool", 256 channels each):

- `vanilla`: the student alone.
- `kd`: KD on the box classifier: the teacher pools its own FPN maps at the student's sampled proposals
  (its box_roi_pool), runs its box head and predictor, and the term is kd_loss(student logits, teacher
  logits, T) (famkd.distill.kd), T^2-scaled KL over the C + 1 classes, mean over the proposals.
- `reviewkd`: ReviewKD's detection form: ABF (famkd.distill.reviewkd.AttentionFusion, C_mid 256) down the
  levels from P6 to P2 at their own sizes (the deeper residual nearest-upsampled to each level's size),
  3x3 conv + BN output heads, and the hierarchical context loss against the teacher's FPN maps.
- `fam_kd`: famkd's detection forms of FAM-KD (the paper gives no detection details; see docs/detection.md),
  chosen by `form`. `review`: ReviewKD's chain above (ABF at native resolution, C_mid `mid_channels`, HCL) with
  each 3x3 conv output head replaced by a FAM (C_mid -> 256) run tile by tile (`TiledFam`, tile side T_l from
  `tile_sizes`, the map zero-padded to multiples of T_l and the output cropped back) + BN, as `fam_reviewkd`
  replaces it on classification; a FAM for a whole padded map would need billions of parameters at P2.
  `pooled` (the default): per level, 1x1 projection 256 -> C_mid (+ GroupNorm of one group + ReLU),
  cross-attention with the deeper level's fused map (as on CIFAR), adaptive average pooling to a fixed square
  side S_l, FAM(C_mid -> 256, S_l) + GroupNorm (32 groups; no ReLU: the teacher's FPN maps are signed, unlike
  the post-ReLU stage outputs FAM-KD matches on CIFAR), and the MSE against the teacher's FPN map pooled to
  S_l in the same way; the sum over the levels. GroupNorm (per image), not the classification head's
  BatchNorm: a detection batch holds 1 or 2 images per process, and batch statistics over so few values (at P6
  of a small image, 2 per channel) blow the gradients up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from famkd.detection.models import (
    FPN_CHANNELS,
    FPN_LEVELS,
    DetectorOutputs,
    detector_forward,
    teacher_class_logits,
    teacher_features,
)
from famkd.distill.base import Distiller, FamFilterOptions, TrainingData
from famkd.distill.kd import kd_loss
from famkd.distill.levels import Level, review_chain, warmup_factor
from famkd.distill.options import DistillOptions
from famkd.distill.registry import register_distiller
from famkd.distill.reviewkd import AttentionFusion, conv_output_head, hierarchical_context_loss
from famkd.errors import ConfigError
from famkd.fam import FrequencyAttention
from famkd.nn.blocks import projection
from famkd.nn.cross_attention import CrossAttention
from famkd.settings import setting

Targets = list[dict[str, Tensor]]
FAM_HEAD_GROUPS = 32  # GroupNorm groups of a fam_kd head's 256 output channels (Detectron2's GN default)


@dataclass
class DetectionOptions(DistillOptions):
    """Options every teacher-based detection method has: the term's weight and its warm-up in iterations."""

    loss_weight: float = setting(1.0, minimum=0.0)
    warmup_iters: int = setting(0, minimum=0)  # 0: the full weight from the first iteration


@dataclass
class KDDetectionOptions(DetectionOptions):
    """kd: weight 1 and temperature 1 (DKD's detection setting, mdistiller detection/model/config.py KD.DKD.T)."""

    temperature: float = setting(1.0, above=0.0)


@dataclass
class ReviewKDDetectionOptions(DetectionOptions):
    """reviewkd: weight 1 (mdistiller's KD.REVIEWKD.LOSS_WEIGHT default; its R18<-R101 config uses 1.2,
    MV2<-R50 2.0) and the ABF width C_mid (256 in ReviewKD's detection code)."""

    mid_channels: int = setting(256, minimum=1)


def default_pool_sizes() -> list[int]:
    return [32, 16, 8, 4, 2]


FAM_KD_FORMS = ("pooled", "review")


@dataclass
class FamKDDetectionOptions(FamFilterOptions, DetectionOptions):
    """fam_kd: the form (`pooled` or `review`, docs/detection.md), the FAM filter options, the head width C_mid
    (even in the pooled form, for the cross-attention), the pooled form's fixed square side S_l each level is
    pooled to, and the review form's FAM tile side T_l, P2..P6."""

    form: str = setting("pooled", choices=FAM_KD_FORMS)
    mid_channels: int = setting(64, minimum=2)
    pool_sizes: list[int] = setting(factory=default_pool_sizes)
    tile_sizes: list[int] = setting(factory=default_pool_sizes)


@dataclass
class NoOptions(DistillOptions):
    """vanilla has no options."""


class DetectionDistiller(Distiller):
    """A student detector, an optional frozen teacher (kept in eval mode) and the method's `heads`.

    Subclasses implement `distill_loss(outputs, images)`, the unweighted distillation term, named `loss_name`.
    """

    Options: ClassVar[type[DistillOptions]] = NoOptions
    loss_name: ClassVar[str] = ""

    def __init__(self, student: FasterRCNN, teacher: FasterRCNN | None, options: Any, data: TrainingData):
        super().__init__(student, teacher)
        self.options = options
        self.heads = nn.ModuleList()

    def term_weights(self, position: int) -> dict[str, float]:
        if not self.loss_name:
            return {}
        return {self.loss_name: self.options.loss_weight * warmup_factor(position, self.options.warmup_iters)}

    def forward(self, images: list[Tensor], targets: Targets, iteration: int) -> tuple[None, dict[str, Tensor]]:
        outputs = detector_forward(self.student, images, targets)
        losses = dict(outputs.losses)
        for name, weight in self.term_weights(iteration).items():
            losses[name] = weight * self.distill_loss(outputs, images)
        return None, losses

    def distill_loss(self, outputs: DetectorOutputs, images: list[Tensor]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no distillation term")

    def teacher_maps(self, images: list[Tensor]) -> tuple[dict[str, Tensor], list[tuple[int, int]]]:
        """The teacher's FPN maps and image sizes, under no_grad."""
        assert self.teacher is not None
        with torch.no_grad():
            return teacher_features(self.teacher, images)


@register_distiller("vanilla", task="detection")
class VanillaDetection(DetectionDistiller):
    """The student trained alone on the detection losses."""

    needs_teacher = False


@register_distiller("kd", task="detection")
class KDDetection(DetectionDistiller):
    """loss_weight * kd_loss(student box logits, teacher box logits on the student's proposals, T)."""

    Options = KDDetectionOptions
    loss_name = "kd"

    def distill_loss(self, outputs: DetectorOutputs, images: list[Tensor]) -> Tensor:
        assert self.teacher is not None
        features, image_sizes = self.teacher_maps(images)
        with torch.no_grad():
            logits = teacher_class_logits(self.teacher, features, outputs.proposals, image_sizes)
        return kd_loss(outputs.class_logits, logits, self.options.temperature)


def fpn_level() -> Level:
    """A Level of 256 channels in and out whose student and teacher sizes agree (no resize in the head)."""
    return Level(FPN_CHANNELS, 0, FPN_CHANNELS, 0)


def student_maps(outputs: DetectorOutputs) -> list[Tensor]:
    """The student's FPN maps, P2..P6."""
    return [outputs.features[name] for name in FPN_LEVELS]


@register_distiller("reviewkd", task="detection")
class ReviewKDDetection(DetectionDistiller):
    """loss_weight * HCL(ABF heads(student FPN maps), teacher FPN maps), the heads run from P6 down to P2."""

    Options = ReviewKDDetectionOptions
    loss_name = "reviewkd"

    def __init__(
        self, student: FasterRCNN, teacher: FasterRCNN | None, options: ReviewKDDetectionOptions, data: TrainingData
    ):
        super().__init__(student, teacher, options, data)
        mid, level = options.mid_channels, fpn_level()
        deepest = len(FPN_LEVELS) - 1
        self.heads.extend(
            AttentionFusion(level, mid, index != deepest, conv_output_head(mid, level))
            for index in reversed(range(len(FPN_LEVELS)))
        )

    def distill_loss(self, outputs: DetectorOutputs, images: list[Tensor]) -> Tensor:
        features, _ = self.teacher_maps(images)
        return hierarchical_context_loss(
            review_chain(self.heads, student_maps(outputs)), [features[name] for name in FPN_LEVELS]
        )


def image_norm(channels: int) -> nn.GroupNorm:
    """Normalisation over each image's whole map (GroupNorm of one group), whatever the batch size."""
    return nn.GroupNorm(1, channels)


class PooledFamHead(nn.Module):
    """One level of fam_kd's detection form (module docstring); returns (output at S x S, the fused map)."""

    def __init__(self, mid_channels: int, size: int, fuse: bool, fam_options: dict[str, Any]):
        super().__init__()
        self.size = size
        self.input_proj = projection(FPN_CHANNELS, mid_channels, relu=True, norm=image_norm)
        self.attention = CrossAttention(mid_channels) if fuse else None
        self.fam = FrequencyAttention(mid_channels, FPN_CHANNELS, size, **fam_options)
        self.norm = nn.GroupNorm(FAM_HEAD_GROUPS, FPN_CHANNELS)  # per image: see the module docstring

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.input_proj(x)
        if self.attention is not None:
            assert residual is not None  # every level but the deepest fuses the deeper level's map
            x = self.attention(x, residual)  # upsamples the residual's query (nearest) to x's size itself
        out = self.norm(self.fam(F.adaptive_avg_pool2d(x, self.size)))  # signed, as the FPN map it matches
        return out, x


class TiledFam(nn.Module):
    """A FAM of side T run on every T x T tile of a map of any size: the map is zero-padded at the bottom and
    right to multiples of T (as the batch is padded), cut into tiles, each tile filtered alone, and the output
    put back together and cropped to the map's size. Native resolution, every frequency of each tile kept."""

    def __init__(self, fam: FrequencyAttention):
        super().__init__()
        self.fam = fam

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tile = self.fam.size
        x = F.pad(x, (0, -width % tile, 0, -height % tile))
        rows, cols = x.shape[-2] // tile, x.shape[-1] // tile
        tiles = x.reshape(batch, channels, rows, tile, cols, tile).permute(0, 2, 4, 1, 3, 5)
        out = self.fam(tiles.reshape(batch * rows * cols, channels, tile, tile))
        out = out.reshape(batch, rows, cols, -1, tile, tile).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(batch, -1, rows * tile, cols * tile)[..., :height, :width]


def tiled_fam_output_head(mid_channels: int, tile: int, fam_options: dict[str, Any]) -> nn.Module:
    """The review form's output head: ReviewKD's 3x3 conv + BN with the conv replaced by a tiled FAM, as
    fam_reviewkd replaces it by FAM on classification (famkd.distill.reviewkd.fam_output_head)."""
    fam = FrequencyAttention(mid_channels, FPN_CHANNELS, tile, **fam_options)
    return nn.Sequential(TiledFam(fam), nn.BatchNorm2d(FPN_CHANNELS))


@register_distiller("fam_kd", task="detection")
class FamKDDetection(DetectionDistiller):
    """form=pooled: loss_weight * sum over P2..P6 of MSE(FAM head(student map), teacher map), both pooled to
    S_l x S_l. form=review: loss_weight * HCL(ABF heads with tiled FAM + BN output heads (student FPN maps),
    teacher FPN maps), ReviewKD's detection chain at native resolution (docs/detection.md)."""

    Options = FamKDDetectionOptions
    loss_name = "fam_kd"

    def __init__(
        self, student: FasterRCNN, teacher: FasterRCNN | None, options: FamKDDetectionOptions, data: TrainingData
    ):
        super().__init__(student, teacher, options, data)
        check_fam_options(options)
        deepest = len(FPN_LEVELS) - 1
        mid, fam_options = options.mid_channels, options.fam_options()
        if options.form == "review":
            self.heads.extend(
                AttentionFusion(
                    fpn_level(),
                    mid,
                    index != deepest,
                    tiled_fam_output_head(mid, options.tile_sizes[index], fam_options),
                )
                for index in reversed(range(len(FPN_LEVELS)))
            )
            return
        self.heads.extend(
            PooledFamHead(mid, options.pool_sizes[index], index != deepest, fam_options)
            for index in reversed(range(len(FPN_LEVELS)))
        )

    def distill_loss(self, outputs: DetectorOutputs, images: list[Tensor]) -> Tensor:
        features, _ = self.teacher_maps(images)
        heads_out = review_chain(self.heads, student_maps(outputs))
        if self.options.form == "review":
            return hierarchical_context_loss(heads_out, [features[name] for name in FPN_LEVELS])
        sizes = self.options.pool_sizes
        targets = [F.adaptive_avg_pool2d(features[name], size) for name, size in zip(FPN_LEVELS, sizes)]
        return torch.stack([F.mse_loss(out, target) for out, target in zip(heads_out, targets)]).sum()


def check_fam_options(options: FamKDDetectionOptions) -> None:
    """pooled: one positive pooled side per FPN level, and an even C_mid (the cross-attention halves it);
    review: one positive tile side per FPN level."""
    name, sides = ("tile_sizes", options.tile_sizes) if options.form == "review" else ("pool_sizes", options.pool_sizes)
    if len(sides) != len(FPN_LEVELS) or min(sides) < 1:
        raise ConfigError(
            f"distill.{name} must give one positive side per FPN level P2..P6 ({len(FPN_LEVELS)} values, "
            f"e.g. [32, 16, 8, 4, 2]), got {sides}"
        )
    if options.form == "pooled" and options.mid_channels % 2:
        raise ConfigError(
            f"distill.mid_channels must be even (the cross-attention halves it), got {options.mid_channels}"
        )
