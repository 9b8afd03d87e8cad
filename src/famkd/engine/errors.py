"""Errors the engine reports to the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class FamkdError(RuntimeError):
    """A problem the user can fix (bad checkpoint, wrong architecture, missing teacher, ...)."""


class NonFiniteLossError(FamkdError):
    """A loss term became NaN or infinite; the run stopped and kept its last good checkpoint."""
