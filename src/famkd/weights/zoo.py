"""Models from weight files (zoo, timm: and torchvision: names): teachers for distillation, models for `famkd eval`
and students that start from pretrained weights (famkd.weights.files reads the files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from torch import nn

from famkd.errors import FamkdError
from famkd.models import create_model
from famkd.models.features import classifier_path
from famkd.weights.files import (
    file_sha256,
    head_class_count,
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
    image_size: int | None = None,
) -> tuple[nn.Module, str]:
    """Build a model and load the weights of the checkpoint file at `path` into it.

    `sha256`, when set, must match the file. See `model_from_checkpoint` for the rest. A `path` of the form
    `torchvision:<Weights enum>.<entry>` (e.g. `torchvision:ResNet34_Weights.IMAGENET1K_V1`) takes the weights
    from torchvision's weights API instead (downloaded once into torch's cache when online).
    """
    if str(path).startswith(TORCHVISION_PREFIX):
        checkpoint = torchvision_weights(str(path)[len(TORCHVISION_PREFIX) :])
        return model_from_checkpoint(
            checkpoint, path, model_name, num_classes, name_setting=name_setting, image_size=image_size
        )
    path = Path(path)
    if not path.is_file():
        raise FamkdError(f"checkpoint not found: {path}")
    if sha256:
        verify_sha256(path, sha256)
    return model_from_checkpoint(
        load_checkpoint(path), path, model_name, num_classes, name_setting=name_setting, image_size=image_size
    )


def model_from_checkpoint(
    checkpoint: dict,
    path: str | os.PathLike,
    model_name: str = "",
    num_classes: int = 100,
    *,
    name_setting: str = "--model",
    image_size: int | None = None,
) -> tuple[nn.Module, str]:
    """Build a model holding the weights of a loaded `checkpoint` (read from `path`).

    `model_name` picks the architecture; when empty, the name the checkpoint stores is used.
    `name_setting` is how the user sets the name ("teacher.name", "--model"), used in errors.
    `image_size` is the side of the images a timm:/torchvision: model gets taps for. Returns the model (CPU, eval
    mode) and the architecture name.
    """
    state_dict, stored_arch = split_checkpoint(checkpoint)
    arch = model_name or stored_arch
    if not arch:
        raise FamkdError(f"{path} does not say which architecture it holds; name it with {name_setting}=NAME")
    try:
        model = create_model(arch, num_classes=num_classes, image_size=image_size)
    except KeyError as error:
        raise FamkdError(f"{name_setting}: {error.args[0]}") from None
    state_dict = strip_data_parallel_prefix(state_dict)
    classes = head_class_count(model, state_dict)
    if classes is not None:
        raise FamkdError(
            f"checkpoint {path} holds a {arch} with a {classes}-class head, but the data has {num_classes} classes: "
            "use a teacher trained on these classes (or data with the teacher's classes)"
        )
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


def load_teacher_and_name(cfg: TeacherSpec, num_classes: int, image_size: int | None = None) -> tuple[nn.Module, str]:
    """The frozen teacher described by a TeacherConfig (`name`, `checkpoint`, `sha256`) and its architecture.

    An empty `name` is taken from the checkpoint when it records one.
    """
    if not cfg.checkpoint:
        raise FamkdError("teacher.checkpoint is empty; set teacher.checkpoint=PATH")
    teacher, arch = load_model_weights(
        cfg.checkpoint, cfg.name, num_classes, sha256=cfg.sha256, name_setting="teacher.name", image_size=image_size
    )
    teacher.requires_grad_(False)
    return teacher, arch


def teacher_fingerprint(cfg: TeacherSpec) -> str:
    """What identifies a teacher's weights in a run's summary: its file's SHA-256 (teacher.sha256 when set: loading
    the teacher has checked the file against it, so the file is not read again), or the torchvision entry."""
    if cfg.checkpoint.startswith(TORCHVISION_PREFIX):
        return cfg.checkpoint
    return cfg.sha256.strip().lower() or file_sha256(cfg.checkpoint)


def load_teacher(cfg: TeacherSpec, num_classes: int, image_size: int | None = None) -> nn.Module:
    """The frozen teacher described by a TeacherConfig (see `load_teacher_and_name`)."""
    return load_teacher_and_name(cfg, num_classes, image_size)[0]


def load_student_init(model: nn.Module, path: str | os.PathLike) -> str:
    """Load pretrained weights into a student (the fine-tuning case) and say what was loaded.

    Where the file's classifier has another class count, the student keeps its new classifier (the head is
    replaced); any other mismatch is an error.
    """
    state_dict = strip_data_parallel_prefix(split_checkpoint(load_checkpoint(path))[0])
    note = f"student starts from {path}"
    classes = head_class_count(model, state_dict)
    if classes is not None:
        head = f"{classifier_path(model)}."
        fresh = {key: value for key, value in model.state_dict().items() if key.startswith(head)}
        state_dict = {**{key: v for key, v in state_dict.items() if not key.startswith(head)}, **fresh}
        note += f" (its {classes}-class head replaced by a new one for these classes)"
    mismatch = state_dict_mismatch(model, state_dict)
    if mismatch:
        raise FamkdError(f"student_init={path} does not fit the student: {mismatch}")
    model.load_state_dict(state_dict)
    return note
