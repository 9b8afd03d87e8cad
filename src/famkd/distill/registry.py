"""Distiller registry: `create_distiller(method, student=..., teacher=..., **options)`."""

from __future__ import annotations

from famkd.distill.base import Distiller
from famkd.registry import Registry

DISTILLERS: Registry[Distiller] = Registry("distillation method")
register_distiller = DISTILLERS.register


def create_distiller(method: str, *, student, teacher=None, **options) -> Distiller:
    """Build the distiller `method` around `student` and (frozen) `teacher`."""
    return DISTILLERS.get(method)(student=student, teacher=teacher, **options)


def list_distillers() -> list[str]:
    return DISTILLERS.names()
