"""The model zoo's registry: `create_model(name, num_classes=100)`."""

from __future__ import annotations

from collections.abc import Callable

from famkd.models.features import FeatureModel
from famkd.registry import Registry

MODELS: Registry[Callable[..., FeatureModel]] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int = 100) -> FeatureModel:
    """Build a zoo model by name (e.g. "resnet8x4", "wrn_40_2", "MobileNetV2")."""
    return MODELS.get(name)(num_classes=num_classes)


def list_models() -> list[str]:
    return MODELS.names()
