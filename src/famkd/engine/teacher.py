"""Loading model weights from checkpoints: teachers for distillation and models for `famkd eval`.

Three checkpoint layouts are understood:
- famkd training checkpoints (`checkpoints/last.pt`, `best.pt`): the student is under "student",
  its architecture under config["student"];
- the community CIFAR zoo layout `{"model": state_dict, ...}` (optionally with "arch");
- a plain state dict, such as famkd's exported `student_best.pt`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from famkd.config import Config, TeacherConfig
from famkd.engine.checkpoint import load_checkpoint
from famkd.errors import FamkdError, shown
from famkd.models import FeatureModel, create_model

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

TORCHVISION_PREFIX = "torchvision:"
COMMUNITY_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise when the file's SHA-256 differs from `expected` (a 64-digit hex string)."""
    actual = file_sha256(path)
    if actual != expected.strip().lower():
        raise FamkdError(
            f"sha256 mismatch for {path}: expected {expected.strip().lower()}, got {actual}. "
            "The file is not the checkpoint the config names (corrupt download or another file); "
            "fix teacher.checkpoint or teacher.sha256."
        )


def split_checkpoint(checkpoint: dict) -> tuple[dict[str, Tensor], str | None]:
    """The model state dict inside a checkpoint of any supported layout, and the architecture it names."""
    if isinstance(checkpoint.get("student"), dict) and isinstance(checkpoint.get("config"), dict):
        return checkpoint["student"], checkpoint["config"].get("student")
    if isinstance(checkpoint.get("model"), dict):
        arch = checkpoint.get("arch")
        return checkpoint["model"], arch if isinstance(arch, str) else None
    if checkpoint and all(isinstance(value, Tensor) for value in checkpoint.values()):
        return checkpoint, None
    raise FamkdError(
        "unrecognised checkpoint layout (keys: "
        + ", ".join(sorted(map(str, checkpoint))[:10])
        + "); expected a famkd checkpoint, {'model': state_dict} or a plain state dict"
    )


def _strip_data_parallel_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints saved from nn.DataParallel prefix every key with 'module.'."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def state_dict_mismatch(model: torch.nn.Module, state_dict: dict[str, Tensor]) -> str:
    """A readable description of how `state_dict` fails to fit `model` ("" when it fits)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} in the checkpoint vs {tuple(value.shape)} in the model"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {shown(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches: {shown(wrong_shape)}")
    return "; ".join(problems)


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


def torchvision_weights(name: str) -> dict[str, Tensor]:
    """The state dict of torchvision's published weights `name` (e.g. "ResNet34_Weights.IMAGENET1K_V1")."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (KeyError, ValueError, AttributeError) as error:
        raise FamkdError(
            f"teacher.checkpoint=torchvision:{name}: not a torchvision weights entry ({error}); "
            "e.g. torchvision:ResNet34_Weights.IMAGENET1K_V1"
        ) from None
    return fetch_torchvision_weights(weights, "teacher.checkpoint")


def fetch_torchvision_weights(weights: WeightsEnum, setting: str) -> dict[str, Tensor]:
    """The state dict of torchvision's weights entry `weights`, downloaded once into torch's cache; `setting`
    is the config key that takes a local file of them instead, named when the download fails."""
    try:
        return weights.get_state_dict(progress=False)
    except OSError as error:  # offline, or the download failed
        raise FamkdError(
            f"cannot fetch torchvision's {type(weights).__name__}.{weights.name} ({error}); download its file "
            f"once where you are online and pass {setting}=PATH (its url: {weights.url})"
        ) from None


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
    state_dict = _strip_data_parallel_prefix(state_dict)
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


def load_teacher_and_name(cfg: TeacherConfig, num_classes: int) -> tuple[FeatureModel, str]:
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


def teacher_fingerprint(cfg: TeacherConfig) -> str:
    """What identifies a teacher's weights in a run's summary: its file's SHA-256 (teacher.sha256 when set: loading
    the teacher has checked the file against it, so the file is not read again), or the torchvision entry."""
    if cfg.checkpoint.startswith(TORCHVISION_PREFIX):
        return cfg.checkpoint
    return cfg.sha256.strip().lower() or file_sha256(cfg.checkpoint)


def load_teacher(cfg: TeacherConfig, num_classes: int) -> FeatureModel:
    """The frozen teacher described by a TeacherConfig (see `load_teacher_and_name`)."""
    return load_teacher_and_name(cfg, num_classes)[0]


def missing_teacher_message(cfg: Config) -> str:
    teacher = cfg.teacher.name or "<teacher>"
    return (
        f"method {cfg.method!r} distils from a teacher, but teacher.checkpoint is not set. Train one with "
        f"`famkd train configs/cifar100/vanilla/{teacher}.yaml` and pass "
        f"teacher.checkpoint=<its run dir>/student_best.pt, or use a community CIFAR-100 teacher: "
        f"cifar_teachers.tar of the RepDistiller/mdistiller zoo ({COMMUNITY_TEACHERS_URL}), "
        f"e.g. teacher.checkpoint=cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
    )
