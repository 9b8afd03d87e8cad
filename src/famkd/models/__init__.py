"""Models: the zoo (every model has `forward(x) -> logits`, `forward_features(x) -> Features`, `feature_info`),
timm's and torchvision's by name, and the taps of any module (famkd.models.taps)."""

from famkd.models import cifar, imagenet  # noqa: F401  (registers the CIFAR and ImageNet models)
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import check_model_name, create_model, list_models, register_model
from famkd.models.taps import attach_taps, feature_info, forward_features, has_preact, tap_reader

__all__ = [
    "FeatureInfo",
    "FeatureModel",
    "Features",
    "StageInfo",
    "attach_taps",
    "check_model_name",
    "create_model",
    "feature_info",
    "forward_features",
    "has_preact",
    "list_models",
    "register_model",
    "tap_reader",
]
