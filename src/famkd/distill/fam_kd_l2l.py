"""FAM-KD, layer-to-layer form (docs/method.md): one FAM per level, no fusion across levels."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import FeatureDistiller, TrainingData
from famkd.distill.fam_kd import FamOptions
from famkd.distill.levels import Level, feature_mse, paired_levels
from famkd.distill.registry import register_distiller
from famkd.fam import FrequencyAttention
from famkd.models.taps import feature_info


class FamLayerHead(nn.Module):
    """Student map -> nearest resize to the teacher's side -> FAM(C_s -> C_t) -> BN."""

    def __init__(self, level: Level, fam_options: dict[str, Any]):
        super().__init__()
        self.teacher_size = level.teacher_size
        self.fam = FrequencyAttention(level.student_channels, level.teacher_channels, level.teacher_size, **fam_options)
        self.bn = nn.BatchNorm2d(level.teacher_channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.teacher_size:
            x = F.interpolate(x, size=(self.teacher_size, self.teacher_size), mode="nearest")
        return self.bn(self.fam(x))


@register_distiller("fam_kd_l2l")
class FamKDLayerToLayer(FeatureDistiller):
    """loss = ce_weight * CE + loss_weight * w(epoch) * sum_levels MSE(BN(FAM(student)), teacher).

    Options: FamOptions (as fam_kd, without max_mid_channels); heads are listed shallow to deep.
    """

    Options = FamOptions
    loss_name = "fam_kd"
    teacher_preact = False

    def __init__(self, student: nn.Module, teacher: nn.Module, options: FamOptions, data: TrainingData):
        super().__init__(student, teacher, options)
        levels = paired_levels(feature_info(student), feature_info(teacher), data.image_size)
        self.heads.extend(FamLayerHead(level, options.fam_options()) for level in levels)

    def head_outputs(self, student_maps: list[Tensor]) -> list[Tensor]:
        return [head(x) for head, x in zip(self.heads, student_maps)]

    def feature_loss(self, outputs: list[Tensor], targets: list[Tensor]) -> Tensor:
        return feature_mse(outputs, targets)
