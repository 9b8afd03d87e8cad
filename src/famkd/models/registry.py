"""The model registry: the zoo's models by name, and timm's and torchvision's by `timm:<name>` and
`torchvision:<name>` (famkd.models.external): `create_model(name, num_classes=100, image_size=None)`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from famkd.errors import ConfigError
from famkd.models.external import check_external_name, create_external, is_external
from famkd.models.features import FeatureModel
from famkd.registry import Registry

MODELS: Registry[Callable[..., FeatureModel]] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int = 100, image_size: int | None = None) -> nn.Module:
    """Build a model by name: a zoo model (e.g. "resnet8x4", "wrn_40_2", "MobileNetV2"), or a timm or
    torchvision one ("timm:convnext_atto", "torchvision:resnet18") with its taps for `image_size` inputs."""
    if is_external(name):
        return create_external(name, num_classes, image_size)
    return MODELS.get(name)(num_classes=num_classes)


def check_model_name(name: str) -> None:
    """A ConfigError when `name` is neither a zoo model nor a known timm/torchvision model."""
    if is_external(name):
        check_external_name(name)
        return
    try:
        MODELS.get(name)
    except KeyError as error:
        raise ConfigError(error.args[0]) from None


def list_models() -> list[str]:
    return MODELS.names()
