"""Weights from torchvision's weights API: an entry by name (`torchvision:<Weights enum>.<entry>`), downloaded
once into torch's cache, with an error that names the local file to pass where the download fails."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from famkd.errors import FamkdError

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

TORCHVISION_PREFIX = "torchvision:"


def torchvision_weights(name: str) -> dict[str, Tensor]:
    """The state dict of torchvision's published weights `name` (e.g. "ResNet34_Weights.IMAGENET1K_V1")."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (KeyError, ValueError, AttributeError) as error:
        raise FamkdError(
            f"teacher.checkpoint=torchvision:{name}: not a torchvision weights entry ({error}); "
            "e.g. torchvision:ResNet34_Weights.IMAGENET1K_V1"
        ) from None
    return fetch_torchvision_weights(weights, "teacher.checkpoint")


def fetch_torchvision_weights(weights: WeightsEnum, setting: str) -> dict[str, Tensor]:
    """The state dict of torchvision's weights entry `weights`, downloaded once into torch's cache; `setting`
    is the config key that takes a local file of them instead, named when the download fails."""
    try:
        return weights.get_state_dict(progress=False)
    except OSError as error:  # offline, or the download failed
        raise FamkdError(
            f"cannot fetch torchvision's {type(weights).__name__}.{weights.name} ({error}); download its file "
            f"once where you are online and pass {setting}=PATH (its url: {weights.url})"
        ) from None
