"""Zoo models from weight files: teachers for distillation and models for `famkd eval` (famkd.weights.files
reads the files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from famkd.errors import FamkdError
from famkd.models import FeatureModel, create_model
from famkd.weights.files import (
    file_sha256,
    load_checkpoint,
    split_checkpoint,
    state_dict_mismatch,
    strip_data_parallel_prefix,
    verify_sha256,
)
from famkd.weights.torchvision import TORCHVISION_PREFIX, torchvision_weights


class TeacherSpec(Protocol):
    """Where a teacher's weights are: its architecture `name` ("" -> the one the file records), the `checkpoint`
    file (or torchvision:<entry>) and its expected `sha256` ("" -> unchecked); famkd.config.TeacherConfig."""

    name: str
    checkpoint: str
    sha256: str


def load_model_weights(
    path: str | os.PathLike,
    model_name: str = "",
    num_classes: int = 100,
    *,
    sha256: str = "",
    name_setting: str = "--model",
) -> tuple[FeatureModel, str]:
    """Build a zoo model and load the weights of the checkpoint file at `path` into it.

    `sha256`, when set, must match the file. See `model_from_checkpoint` for the rest. A `path` of the form
    `torchvision:<Weights enum>.<entry>` (e.g. `torchvision:ResNet34_Weights.IMAGENET1K_V1`) takes the weights
    from torchvision's weights API instead (downloaded once into torch's cache when online).
    """
    if str(path).startswith(TORCHVISION_PREFIX):
        checkpoint = torchvision_weights(str(path)[len(TORCHVISION_PREFIX) :])
        return model_from_checkpoint(checkpoint, path, model_name, num_classes, name_setting=name_setting)
    path = Path(path)
    if not path.is_file():
        raise FamkdError(f"checkpoint not found: {path}")
    if sha256:
        verify_sha256(path, sha256)
    return model_from_checkpoint(load_checkpoint(path), path, model_name, num_classes, name_setting=name_setting)


def model_from_checkpoint(
    checkpoint: dict,
    path: str | os.PathLike,
    model_name: str = "",
    num_classes: int = 100,
    *,
    name_setting: str = "--model",
) -> tuple[FeatureModel, str]:
    """Build a zoo model holding the weights of a loaded `checkpoint` (read from `path`).

    `model_name` picks the architecture; when empty, the name the checkpoint stores is used.
    `name_setting` is how the user sets the name ("teacher.name", "--model"), used in errors.
    Returns the model (CPU, eval mode) and the architecture name.
    """
    state_dict, stored_arch = split_checkpoint(checkpoint)
    arch = model_name or stored_arch
    if not arch:
        raise FamkdError(f"{path} does not say which architecture it holds; name it with {name_setting}=NAME")
    try:
        model = create_model(arch, num_classes=num_classes)
    except KeyError as error:
        raise FamkdError(f"{name_setting}: {error.args[0]}") from None
    state_dict = strip_data_parallel_prefix(state_dict)
    mismatch = state_dict_mismatch(model, state_dict)
    if mismatch:
        stored = f" (the checkpoint says it holds {stored_arch!r})" if stored_arch and stored_arch != arch else ""
        raise FamkdError(
            f"checkpoint {path} does not match architecture {arch!r} with {num_classes} classes{stored}: "
            f"{mismatch}. Set {name_setting} to the architecture the checkpoint was trained with."
        )
    model.load_state_dict(state_dict)
    model.eval()
    return model, arch


def load_teacher_and_name(cfg: TeacherSpec, num_classes: int) -> tuple[FeatureModel, str]:
    """The frozen teacher described by a TeacherConfig (`name`, `checkpoint`, `sha256`) and its architecture.

    An empty `name` is taken from the checkpoint when it records one.
    """
    if not cfg.checkpoint:
        raise FamkdError("teacher.checkpoint is empty; set teacher.checkpoint=PATH")
    teacher, arch = load_model_weights(
        cfg.checkpoint, cfg.name, num_classes, sha256=cfg.sha256, name_setting="teacher.name"
    )
    teacher.requires_grad_(False)
    return teacher, arch


def teacher_fingerprint(cfg: TeacherSpec) -> str:
    """What identifies a teacher's weights in a run's summary: its file's SHA-256 (teacher.sha256 when set: loading
    the teacher has checked the file against it, so the file is not read again), or the torchvision entry."""
    if cfg.checkpoint.startswith(TORCHVISION_PREFIX):
        return cfg.checkpoint
    return cfg.sha256.strip().lower() or file_sha256(cfg.checkpoint)


def load_teacher(cfg: TeacherSpec, num_classes: int) -> FeatureModel:
    """The frozen teacher described by a TeacherConfig (see `load_teacher_and_name`)."""
    return load_teacher_and_name(cfg, num_classes)[0]
