"""Distillation methods. Each is one module registered under its method name (see docs/architecture.md)."""

from famkd.distill import (  # noqa: F401  (register the methods)
    at,
    crd,
    dkd,
    fam_kd,
    fam_kd_l2l,
    fitnet,
    kd,
    reviewkd,
    vanilla,
    wcord,
)
from famkd.distill.base import Distiller
from famkd.distill.registry import (
    create_distiller,
    list_distillers,
    list_options,
    needs_teacher,
    register_distiller,
    resolve_method_options,
)

__all__ = [
    "Distiller",
    "create_distiller",
    "list_distillers",
    "list_options",
    "needs_teacher",
    "register_distiller",
    "resolve_method_options",
]
