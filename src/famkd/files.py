"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file famkd rewrites in place (checkpoints, summary.json, metrics.jsonl, the run's
config.yaml) goes through `atomic_write`: the content is written to a uniquely named temporary
file in the same folder, flushed and fsynced, then renamed over the target. A crash, Ctrl-C or
full disk mid-write leaves the previous file intact and no temporary file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    The parent folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def copy_file_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy `source` to `target` atomically."""

    def copy(file: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, file)

    atomic_write(target, copy)
