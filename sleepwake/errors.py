"""User-facing errors.

Every error a user can cause (bad input, missing model, busy home, corrupted file) is a
``SleepwakeError``: the CLI prints its message on one line and exits non-zero, no traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SleepwakeError(Exception):
    """Base class: the message is shown to the user as is, on one line."""

    exit_code = 1


class InvalidInputError(SleepwakeError):
    """A fact, fact file, override or argument is malformed."""

    exit_code = 2


class ConfigError(InvalidInputError):
    """A preset, YAML file or ``--set key=value`` override is invalid."""


class ModelLoadError(SleepwakeError):
    """The model path or id cannot be loaded."""


class CorruptedStateError(SleepwakeError):
    """A file in the home (delta, snapshot, cache) fails its checksum or cannot be read."""


class HomeBusyError(SleepwakeError):
    """Another sleepwake process holds the home's write lock or the database."""

    exit_code = 3


class NotFoundError(SleepwakeError):
    """A fact or edit named by the user does not exist."""


class UnsupportedError(SleepwakeError):
    """The loaded runtime cannot do this (e.g. LoRA training on a backend without it)."""
