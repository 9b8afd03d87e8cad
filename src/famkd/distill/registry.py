"""Distiller registry: `create_distiller(method, student=..., teacher=..., **options)`."""

from __future__ import annotations

import torch

from famkd.distill.base import Distiller
from famkd.registry import Registry

DISTILLERS: Registry[Distiller] = Registry("distillation method")
register_distiller = DISTILLERS.register


def create_distiller(method: str, *, student, teacher=None, **options) -> Distiller:
    """Build the distiller `method` around `student` and (frozen) `teacher`."""
    builder = DISTILLERS.get(method)
    if teacher is None and builder.needs_teacher:
        raise ValueError(f"method {method!r} distills from a teacher: pass teacher=<a trained model>")
    if teacher is not None and builder.needs_teacher:
        check_compatible(student, teacher)
    return builder(student=student, teacher=teacher, **options)


def check_compatible(student, teacher) -> None:
    """Student and teacher must predict the same classes."""
    s_classes, t_classes = output_classes(student), output_classes(teacher)
    if s_classes != t_classes:
        raise ValueError(f"student predicts {s_classes} classes but teacher predicts {t_classes}: build both with the same num_classes")


def output_classes(model) -> int | None:
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return last_linear[-1].out_features if last_linear else None


def list_distillers() -> list[str]:
    return DISTILLERS.names()
