"""Reading weight files: famkd checkpoints, the community zoo's `{"model": ...}` files and plain state dicts,
all through torch's safe loader (no code runs), their SHA-256, and how a state dict fails to fit a model.

Three checkpoint layouts are understood (`split_checkpoint`):
- famkd training checkpoints (`checkpoints/last.pt`, `best.pt`): the student is under "student",
  its architecture under config["student"];
- the community CIFAR zoo layout `{"model": state_dict, ...}` (optionally with "arch"), and timm's training
  checkpoints `{"state_dict": state_dict, "arch": ...}`;
- a plain state dict, such as famkd's `student_best.pt` or a timm/torchvision weight file (`.pth`, or
  `.safetensors`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from famkd.errors import FamkdError, shown
from famkd.models.features import classifier_path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with `torch.load(weights_only=True)` (no arbitrary code runs), or a
    `.safetensors` file's tensors."""
    path = Path(path)
    if not path.is_file():
        raise FamkdError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise FamkdError(refused_pickle_message(path, str(error))) from error
    except Exception as error:  # torch raises several unrelated types for corrupt or foreign files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FamkdError(f"cannot read checkpoint {path}: {first_line}") from error
    if not isinstance(state, dict):
        raise FamkdError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise FamkdError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise FamkdError(f"cannot read {path}: {error}") from None


def refused_pickle_message(path: Path, torch_message: str) -> str:
    """Why the safe loader refused `path`, without torch's advice to load unsafely (famkd never does)."""
    found = re.search(r"GLOBAL (\S+)", torch_message)
    what = f" (it holds a {found.group(1)} object)" if found else ""
    return (
        f"cannot read checkpoint {path}: it is not made of plain tensors and containers{what}. famkd loads only "
        "tensors, state dicts and plain Python values, so that opening a checkpoint can never run code; save the "
        "weights as a state dict (torch.save(model.state_dict(), path)) and load that file"
    )


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
    for key in ("model", "state_dict"):  # the community zoo's layout; timm's training checkpoints
        if isinstance(checkpoint.get(key), dict):
            arch = checkpoint.get("arch")
            return checkpoint[key], arch if isinstance(arch, str) else None
    if checkpoint and all(isinstance(value, Tensor) for value in checkpoint.values()):
        return checkpoint, None
    raise FamkdError(
        "unrecognised checkpoint layout (keys: "
        + ", ".join(sorted(map(str, checkpoint))[:10])
        + "); expected a famkd checkpoint, {'model': state_dict} or a plain state dict"
    )


def strip_data_parallel_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints saved from nn.DataParallel prefix every key with 'module.'."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def head_class_count(model: torch.nn.Module, state_dict: dict[str, Tensor]) -> int | None:
    """The class count of the classifier in `state_dict` where it differs from `model`'s, else None."""
    name = classifier_path(model)
    weight = state_dict.get(f"{name}.weight")
    ours = model.state_dict().get(f"{name}.weight")
    if weight is None or ours is None or weight.dim() != 2 or weight.shape[0] == ours.shape[0]:
        return None
    return int(weight.shape[0])


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
