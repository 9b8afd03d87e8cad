"""Model zoo: every model has `forward(x) -> logits`, `forward_features(x) -> Features`, `feature_info`."""

from famkd.models import cifar, imagenet  # noqa: F401  (registers the CIFAR and ImageNet models)
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.models.registry import create_model, list_models, register_model

__all__ = ["FeatureInfo", "FeatureModel", "Features", "StageInfo", "create_model", "list_models", "register_model"]
