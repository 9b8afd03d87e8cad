"""Checkpoint files: atomic writes, safe loads, RNG state and version stamps.

A training checkpoint (`checkpoints/last.pt`, `checkpoints/best.pt`) is a dict with keys
`student` (student state dict), `heads` (distiller head state dict), `optimizer`, `scheduler`,
`grad_scaler` (fp16 only, else None), `epoch` (last completed epoch, from 1), `global_step`,
`rng`, `best_acc`, `best_epoch`, `teacher_acc`, `wall_time_s`, `partial_epoch` (None, or the
progress of an epoch stopped by Ctrl-C), `config` (the merged config as a dict) and `versions`.
The exported student (`student_best.pt`, `student_last.pt`) is a plain state dict.
"""

from __future__ import annotations

import os
import pickle
import platform
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from famkd.errors import FamkdError
from famkd.files import atomic_write


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` with torch.save atomically (see famkd.files.atomic_write).

    A crash or a full disk mid-write leaves the previous file intact and no partial file behind.
    """
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with `torch.load(weights_only=True)` (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FamkdError(f"checkpoint not found: {path}")
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


def refused_pickle_message(path: Path, torch_message: str) -> str:
    """Why the safe loader refused `path`, without torch's advice to load unsafely (famkd never does)."""
    found = re.search(r"GLOBAL (\S+)", torch_message)
    what = f" (it holds a {found.group(1)} object)" if found else ""
    return (
        f"cannot read checkpoint {path}: it is not made of plain tensors and containers{what}. famkd loads only "
        "tensors, state dicts and plain Python values, so that opening a checkpoint can never run code; save the "
        "weights as a state dict (torch.save(model.state_dict(), path)) and load that file"
    )


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator training touches (python, numpy, torch CPU and CUDA)."""
    numpy_state = np.random.get_state(legacy=True)  # legacy=True is the default; numpy's stubs assume False
    assert isinstance(numpy_state, tuple)  # the legacy global generator is always MT19937
    return {
        "python": random.getstate(),
        "numpy": {
            "algorithm": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Put back the generators saved by `capture_rng_state`."""
    random.setstate(_as_python_random_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _as_python_random_state(saved) -> tuple:
    """`random.setstate` needs tuples; serialisation may hand back lists."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def library_versions() -> dict[str, str]:
    """Versions of famkd, torch, torchvision and python, stored in every checkpoint."""
    import torchvision

    import famkd

    return {
        "famkd": str(famkd.__version__),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }
