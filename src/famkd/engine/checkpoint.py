"""Checkpoint files: atomic writes, RNG state and version stamps (famkd.weights.files reads them back).

A training checkpoint (`checkpoints/last.pt`, `checkpoints/best.pt`) is a dict with keys `task`,
`student` (student state dict), `heads` (distiller head state dict), `optimizer`, `scheduler`,
`grad_scaler` (fp16 only, else None), the fields of `engine.progress.RunState` (`epoch`: epochs
completed, `epoch_steps`: batches taken of the next one, `global_step`, `best`, `best_at`, `last_eval`,
`teacher_eval`, `wall_time_s`), `rng`, `partial_period` (None, or the progress of a log period or epoch
cut short: process 0's, and with several processes each one's in `processes`, by rank), `config` (the merged
config as a dict) and `versions`. The exported student
(`student_best.pt`, `student_last.pt`) is a plain state dict.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch

from famkd.errors import FamkdError
from famkd.files import atomic_write, write_text_atomic
from famkd.weights import file_sha256


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` with torch.save atomically (see famkd.files.atomic_write).

    A crash or a full disk mid-write leaves the previous file intact and no partial file behind.
    """
    atomic_write(path, lambda file: torch.save(state, file))


class HashingWriter:
    """A file's `write` that also feeds a SHA-256 (torch.save writes through it)."""

    def __init__(self, file: BinaryIO, digest: Any):
        self.file, self.digest = file, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def checksum_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def previous_path(path: Path, index: int) -> Path:
    """The `index`-th older copy of a training checkpoint: checkpoints/previous-<index>.pt."""
    return path.with_name(f"previous-{index}{path.suffix}")


def save_training_checkpoint(path: Path, state: dict[str, Any], keep: int) -> None:
    """Write a training checkpoint atomically with its SHA-256 beside it (`<file>.sha256`), keeping the `keep` - 1
    checkpoints before it as previous-1.pt (the newest), previous-2.pt, ... Until the new file is complete
    nothing is moved, so a crash or a full disk leaves the last good checkpoint where it was."""
    digest = hashlib.sha256()
    new = path.with_name(f"{path.name}.new")
    atomic_write(new, lambda file: torch.save(state, cast(BinaryIO, HashingWriter(file, digest))))
    if path.is_file() and keep > 1:
        for index in range(keep - 1, 1, -1):
            move_with_checksum(previous_path(path, index - 1), previous_path(path, index))
        move_with_checksum(path, previous_path(path, 1))
    checksum_path(path).unlink(missing_ok=True)
    os.replace(new, path)
    write_text_atomic(checksum_path(path), digest.hexdigest() + "\n")


def move_with_checksum(source: Path, target: Path) -> None:
    """Rename a checkpoint and the SHA-256 file beside it (either may be missing)."""
    for old, new in ((source, target), (checksum_path(source), checksum_path(target))):
        if old.is_file():
            os.replace(old, new)


def verify_training_checkpoint(path: Path) -> None:
    """Raise when the file's SHA-256 differs from the one written beside it (none written: nothing to check)."""
    expected = checksum_path(path)
    if expected.is_file() and file_sha256(path) != expected.read_text().strip():
        raise FamkdError(f"{path} is damaged: its SHA-256 differs from the one written with it")


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
