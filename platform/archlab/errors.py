"""Errors the `archlab` command reports as one paragraph, without a traceback, with a documented exit status.

    2   a mistake in what the user asked for: a bad key, value, file or combination (ConfigError, DatasetNotFoundError,
        CorruptFileError)
    5   the run diverged: a loss or gradient became NaN or infinite (DivergedError)
    130 Ctrl-C, 143 SIGTERM: the run stopped at a batch boundary after saving a checkpoint (RunInterrupted)

Set ARCHLAB_DEBUG=1 to see the traceback anyway.
"""


class ArchlabError(Exception):
    """A user-facing error: the message names the bad key, value or file and what would be accepted."""

    exit_code = 2


class ConfigError(ArchlabError, ValueError):
    """An invalid hyperparameter, name or combination of settings."""


class DatasetNotFoundError(ArchlabError, FileNotFoundError):
    """A dataset is not on disk and may not be downloaded."""


class CorruptFileError(ArchlabError):
    """A file that exists but cannot be read as what it should be: truncated, random bytes, the wrong format, or a
    pickle that would run code."""


class DivergedError(ArchlabError):
    """A non-finite loss or gradient stopped training; the message names the step."""

    exit_code = 5


class RunInterrupted(ArchlabError):
    """SIGTERM or Ctrl-C stopped a run; the message says where it stopped and the command that continues it."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
