"""The distiller registry and `create_distiller`, the one way to build a distiller.

    create_distiller(method, student=..., teacher=..., image_size=32, num_samples=0, labels=None, **options)

checks the method's options (names and values; see famkd.distill.options), checks that student and
teacher predict the same classes, and builds the distiller. The trainer, `famkd bench` and
`famkd inspect` all build through it, and the config checks a run's `distill:` section at load
time with `resolve_method_options`, before any data or teacher is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from famkd.distill.base import Distiller, TrainingData
from famkd.errors import ConfigError
from famkd.models import FeatureModel
from famkd.registry import Registry

DISTILLERS: Registry[type[Distiller]] = Registry("distillation method")


def register_distiller(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: register a Distiller subclass (with its `Options` class) under `name`."""
    return DISTILLERS.register(name)


def distiller_class(method: str) -> type[Distiller]:
    """The registered class of `method`; an unknown name is a ConfigError naming the closest one."""
    try:
        return DISTILLERS.get(method)
    except KeyError as error:
        raise ConfigError(f"method: {error.args[0]}") from None


def needs_teacher(method: str) -> bool:
    """Whether `method` distils from a teacher (every method but `vanilla`)."""
    return distiller_class(method).needs_teacher


def resolve_method_options(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of `method` with its effective value: `values` checked, defaults filled in."""
    cls = distiller_class(method)
    return cls.resolve_options(values, method).as_dict()


def create_distiller(
    method: str,
    *,
    student: FeatureModel,
    teacher: FeatureModel | None = None,
    image_size: int = 32,
    num_samples: int = 0,
    labels: torch.Tensor | None = None,
    **options: Any,
) -> Distiller:
    """Build the distiller `method` around `student` and (frozen) `teacher`.

    `options` are the method's options (see `list_options`); `image_size` is the side of the
    training images, which fixes every feature level's size, `num_samples` the size of the training
    set and `labels` its labels (methods with a per-sample memory bank need them). Bad options are
    ConfigErrors.
    """
    cls = distiller_class(method)
    resolved = cls.resolve_options(options, method)
    if cls.needs_teacher:
        if teacher is None:
            raise ConfigError(f"method {method!r} distills from a teacher: pass teacher=<a trained model>")
        check_compatible(student, teacher)
    build: Callable[..., Distiller] = cls  # subclasses take (student, teacher, options, data)
    data = TrainingData(image_size=image_size, num_samples=num_samples, labels=labels)
    return build(student, teacher if cls.needs_teacher else None, resolved, data)


def check_compatible(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Student and teacher must predict the same classes."""
    s_classes, t_classes = output_classes(student), output_classes(teacher)
    if s_classes != t_classes:
        raise ConfigError(
            f"student predicts {s_classes} classes but teacher predicts {t_classes}: build both with the same "
            "num_classes"
        )


def output_classes(model: torch.nn.Module) -> int | None:
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return last_linear[-1].out_features if last_linear else None


def list_distillers() -> list[str]:
    return DISTILLERS.names()


def list_options(method: str) -> dict[str, Any]:
    """The options of `method` with their defaults."""
    return resolve_method_options(method, {})
