"""Models by name from outside the zoo: `timm:<name>` (any timm classifier) and `torchvision:<name>` (torchvision's
classification models), built untrained (weights come from files: famkd.weights) with `num_classes` outputs and
their feature taps attached (famkd.models.taps) for a given image size.

A timm model whose size is part of its architecture (a ViT's position embedding, a Swin's windows) is built for
the image size when it accepts `img_size`. torchvision's Swin models hold their maps channels-last and
GoogLeNet and Inception v3 return auxiliary outputs while training: they are refused, naming the timm
equivalent or the reason.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from famkd.errors import ConfigError
from famkd.models.taps import attach_taps

TIMM, TORCHVISION = "timm:", "torchvision:"
DEFAULT_IMAGE_SIZE = 224
TORCHVISION_REFUSED = {
    "swin": "its maps are channels-last; use timm's Swin (e.g. timm:swin_tiny_patch4_window7_224)",
    "googlenet": "it returns auxiliary logits while training; use timm:inception_v3 or another model",
    "inception_v3": "it returns auxiliary logits while training; use timm:inception_v3",
}


def is_external(name: str) -> bool:
    return name.startswith((TIMM, TORCHVISION))


def check_external_name(name: str) -> None:
    """A ConfigError when `name` is no timm/torchvision model (naming the nearest ones) or timm is missing."""
    library, model = name.split(":", 1)
    if library == "timm":
        known = _timm_names() if not _timm().is_model(model.split(".")[0]) else None
    else:
        known = _torchvision_names()
        if model in known:
            refused = next((why for start, why in TORCHVISION_REFUSED.items() if model.startswith(start)), None)
            if refused:
                raise ConfigError(f"{name}: famkd cannot tap it: {refused}")
            known = None
    if known is not None:
        near = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        hint = f"; nearest: {', '.join(library + ':' + n for n in near)}" if near else ""
        raise ConfigError(f"unknown {library} model {model!r}{hint}")


def create_external(name: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """The untrained model `name` ("timm:..." or "torchvision:...") with `num_classes` outputs and taps attached
    for `image_size` inputs (None: the model's default, 224 for torchvision)."""
    check_external_name(name)
    library, model_name = name.split(":", 1)
    if library == "timm":
        model = _create_timm(model_name, num_classes, image_size)
        size = image_size or model.pretrained_cfg.get("input_size", (3, DEFAULT_IMAGE_SIZE))[-1]
    else:
        import torchvision

        model = torchvision.models.get_model(model_name, weights=None, num_classes=num_classes)
        size = image_size or DEFAULT_IMAGE_SIZE
    attach_taps(model, size, label=name)
    return model


def _create_timm(name: str, num_classes: int, image_size: int | None) -> Any:
    timm = _timm()
    if image_size is not None:
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
        except TypeError:  # a model whose size is not part of its architecture takes no img_size
            pass
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm: models need the timm package: pip install 'famkd[timm]'") from None
    return timm


def _timm_names() -> list[str]:
    return _timm().list_models()


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)
