"""The errors every layer raises and the command line reports (exit status 2, or 128 + signal for an interruption).

Torch-free so that ``kdistill.cli`` can catch them without importing torch; :mod:`kdistill.contracts` hands them on,
so ``from kdistill.contracts import ConfigError`` keeps working. Nothing here imports another kdistill module.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and what is allowed."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, of another kind, or does not fit the model."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written from the diverged state."""


class TrainingInterrupted(RuntimeError):
    """A signal (SIGTERM, SIGINT, SIGUSR1) stopped training after a step; last.pt holds that step."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class DiskFullError(OSError):
    """A file could not be written for lack of space; the previous version of the file is intact."""
