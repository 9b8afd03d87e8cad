"""A published repository's checkout, as the tools that compare famkd with published code read it (the checkout's
path is given on their command line; its code is never copied into famkd)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def commit_of(checkout: Path) -> str:
    """The checkout's git commit, or a note saying to pass it where the checkout is no git work tree."""
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown (not a git work tree: pass --*-commit)"


def import_mdistiller(checkout: Path, packages: Iterable[str], modules: dict[str, str]) -> dict[str, Any]:
    """mdistiller's `modules` (name -> dotted module), imported without running the `packages`' __init__ files (they
    import the trainer, datasets, yacs and wandb): each package is registered as a bare module over its folder."""
    for package in ("mdistiller", *packages):
        module = types.ModuleType(package)
        module.__path__ = [str(checkout / package.replace(".", "/"))]
        sys.modules[package] = module
    return {name: importlib.import_module(dotted) for name, dotted in modules.items()}
