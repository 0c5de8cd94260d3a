"""Typed errors: every failure a user can cause has its own class and a message naming the fix.

All inherit from :class:`HubcompareError`, so callers (and the CLI) can catch one base class.
Where a built-in exception type also fits (``ValueError``, ``FileNotFoundError``) the error
subclasses it too, so generic handlers keep working.
"""

from __future__ import annotations

from pathlib import Path


class HubcompareError(Exception):
    """Base class of every error hubcompare raises on purpose."""


class InvalidArchitectureError(HubcompareError, ValueError):
    """A model configuration that cannot be built (bad depth, bad width)."""


class RecipeError(HubcompareError, ValueError):
    """A training recipe that is missing, malformed or has invalid values."""


class DatasetError(HubcompareError, ValueError):
    """A dataset name, split or fraction that hubcompare cannot serve."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are not on disk (and could not be downloaded)."""


class CheckpointError(HubcompareError):
    """Base class for problems with a checkpoint folder; ``path`` names the offending file."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class CheckpointFileMissingError(CheckpointError, FileNotFoundError):
    """A file the checkpoint folder must contain is absent."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint file exists but cannot be parsed."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """Checkpoint files parse but disagree with each other (weights vs config, predictions vs data)."""


class TrainingError(HubcompareError, RuntimeError):
    """A training run that cannot start, resume or continue (existing output, diverged loss)."""
