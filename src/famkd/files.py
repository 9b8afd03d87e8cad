"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file famkd rewrites in place (checkpoints, summary.json, metrics.jsonl, the run's
config.yaml) goes through `atomic_write`: the content is written to a uniquely named temporary
file in the same folder, flushed and fsynced, then renamed over the target. A crash, Ctrl-C or
full disk mid-write leaves the previous file intact and no temporary file behind. The file gets the
permissions a plain `open(path, "w")` would give it (0666 less the umask), not the temporary file's 0600.
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

    The parent folder is created when missing. On failure the temporary file is removed; an OSError that a
    writer's own clean-up error masks (torch.save's, when the disk fills) is the one raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        cause = os_error_behind(error)
        if cause is not None and cause is not error:
            raise cause from error
        raise


def os_error_behind(error: BaseException) -> OSError | None:
    """The first OSError in `error`'s chain of causes and contexts (`error` itself included), if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def copy_file_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy `source` to `target` atomically."""

    def copy(file: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, file)

    atomic_write(target, copy)
