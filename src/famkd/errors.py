"""The one base class of the errors famkd reports to the user as a single line.

Every error whose message says what was wrong and how to fix it derives from `FamkdError`; the
`famkd` command prints those without a traceback. The standard exception each one also is
(ValueError for bad values, FileNotFoundError for missing data) keeps `except` clauses written
against the standard library working.
"""

from __future__ import annotations


class FamkdError(Exception):
    """A problem the user can fix (bad config value, missing data, wrong checkpoint, ...)."""


class ConfigError(FamkdError, ValueError):
    """A configuration file, override or method option that cannot be turned into valid settings."""


class FamkdDeprecationWarning(FutureWarning):
    """An old name that still works but will go away; the message names its replacement."""


class NonFiniteLossError(FamkdError):
    """A loss term became NaN or infinite; the run stopped and kept its last good checkpoint."""


class TrainingInterrupted(FamkdError):
    """Ctrl-C or a scheduler's signal stopped the run after saving a resumable checkpoint; `exit_status` is the
    command's: 130 after Ctrl-C, 75 (EX_TEMPFAIL: stopped, resumable) after SIGTERM or SIGUSR1."""

    def __init__(self, message: str, exit_status: int = 130):
        super().__init__(message)
        self.exit_status = exit_status


class LostPeerError(FamkdError):
    """A training process of a torchrun group died or stopped answering (train.dist_timeout); the message names it
    where it can, the last checkpoint and the resume command."""


def shown(names: list[str], limit: int = 5) -> str:
    """The first `limit` of `names`, comma-separated, and how many more there are: a list for an error message."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
