"""The distiller registry, keyed by task, and `create_distiller`, the one way to build a distiller.

    create_distiller(method, student=..., teacher=..., image_size=32, num_samples=0, labels=None, task=...,
                     **options)

checks the method's options (names and values; see famkd.distill.options), checks that student and
teacher predict the same classes, and builds the distiller. Each task registers its methods under its own
name (`register_distiller("fam_kd", task="detection")`): classification's live in famkd.distill, detection's
in famkd.detection.distill. The trainer, `famkd bench` and `famkd inspect` all build through it, and the
config checks a run's `distill:` section at load time with `resolve_method_options`, before any data or
teacher is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch

from famkd.distill.base import Distiller, TrainingData
from famkd.errors import ConfigError
from famkd.models import FeatureModel, attach_taps, tap_reader
from famkd.models.features import classifier_path
from famkd.registry import Registry

CLASSIFICATION = "classification"
DISTILLERS: dict[str, Registry[type[Distiller]]] = {
    CLASSIFICATION: Registry("distillation method"),
    "detection": Registry("detection method"),
}


def register_distiller(name: str, task: str = CLASSIFICATION) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: register a Distiller subclass (with its `Options` class) as `task`'s method `name`."""
    return DISTILLERS[task].register(name)


def distiller_class(method: str, task: str = CLASSIFICATION) -> type[Distiller]:
    """The registered class of `task`'s `method`; an unknown name is a ConfigError naming the closest one."""
    try:
        return DISTILLERS[task].get(method)
    except KeyError as error:
        raise ConfigError(f"method: {error.args[0]}") from None


def needs_teacher(method: str, task: str = CLASSIFICATION) -> bool:
    """Whether `method` distils from a teacher (every method but `vanilla`)."""
    return distiller_class(method, task).needs_teacher


def resolve_method_options(method: str, values: Mapping[str, Any], task: str = CLASSIFICATION) -> dict[str, Any]:
    """Every option of `method` with its effective value: `values` checked, defaults filled in."""
    cls = distiller_class(method, task)
    return cls.resolve_options(values, method).as_dict()


def create_distiller(
    method: str,
    *,
    student: torch.nn.Module,
    teacher: torch.nn.Module | None = None,
    image_size: int = 32,
    num_samples: int = 0,
    labels: torch.Tensor | None = None,
    task: str = CLASSIFICATION,
    taps: Sequence[str] | None = None,
    student_taps: Sequence[str] | None = None,
    teacher_taps: Sequence[str] | None = None,
    **options: Any,
) -> Distiller:
    """Build the distiller `method` around `student` and (frozen) `teacher`.

    `options` are the method's options (see `list_options`); `image_size` is the side of the
    training images, which fixes every feature level's size, `num_samples` the size of the training
    set and `labels` its labels (methods with a per-sample memory bank need them). Bad options are
    ConfigErrors.

    A classifier may be any `nn.Module` whose forward gives logits. For a method that reads features, one that is
    not a zoo model and has no taps yet gets them (famkd.models.attach_taps) for `image_size` inputs, found
    automatically or at the module paths `student_taps` / `teacher_taps` (`taps`: the same paths for both).
    """
    cls = distiller_class(method, task)
    resolved = cls.resolve_options(options, method)
    tapped = task == CLASSIFICATION and cls.needs_features
    if tapped:
        ensure_taps(student, image_size, student_taps or taps)
    if cls.needs_teacher:
        if teacher is None:
            raise ConfigError(f"method {method!r} distills from a teacher: pass teacher=<a trained model>")
        if tapped:
            ensure_taps(teacher, image_size, teacher_taps or taps)
        if task == CLASSIFICATION:
            check_compatible(student, teacher)
    build: Callable[..., Distiller] = cls  # subclasses take (student, teacher, options, data)
    data = TrainingData(image_size=image_size, num_samples=num_samples, labels=labels)
    return build(student, teacher if cls.needs_teacher else None, resolved, data)


def ensure_taps(model: torch.nn.Module, image_size: int, paths: Sequence[str] | None) -> None:
    """Attach taps to `model` at `paths` when given, else where it has none and is not a zoo model."""
    if paths or (tap_reader(model) is None and not isinstance(model, FeatureModel)):
        reader = tap_reader(model)
        attach_taps(model, image_size, paths, label=reader.label if reader else "")


def check_compatible(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Student and teacher must predict the same classes."""
    s_classes, t_classes = output_classes(student), output_classes(teacher)
    if s_classes != t_classes:
        raise ConfigError(
            f"student predicts {s_classes} classes but teacher predicts {t_classes}: build both with the same "
            "num_classes"
        )


def output_classes(model: torch.nn.Module) -> int | None:
    path = classifier_path(model)
    return None if path is None else cast(torch.nn.Linear, model.get_submodule(path)).out_features


def list_distillers(task: str = CLASSIFICATION) -> list[str]:
    return DISTILLERS[task].names()


def list_options(method: str) -> dict[str, Any]:
    """The options of `method` with their defaults."""
    return resolve_method_options(method, {})
