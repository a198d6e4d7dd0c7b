"""Errors that describe a mistake in what the user asked for.

The `archlab` command prints these as one paragraph, without a traceback, and exits with status 2.
Set ARCHLAB_DEBUG=1 to see the traceback anyway.
"""


class ArchlabError(Exception):
    """A user-facing error: the message names the bad key, value or file and what would be accepted."""


class ConfigError(ArchlabError, ValueError):
    """An invalid hyperparameter, name or combination of settings."""


class DatasetNotFoundError(ArchlabError, FileNotFoundError):
    """A dataset is not on disk and may not be downloaded."""
