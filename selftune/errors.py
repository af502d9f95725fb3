"""The one error type users see: a clear message that names the culprit."""

from __future__ import annotations


class SelftuneError(Exception):
    """A user-facing error: bad input, bad config, bad data. The CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(SelftuneError, ValueError):
    """A config key or value is wrong; the message names the key and the value."""


class DataError(SelftuneError):
    """A dataset file or folder is missing or malformed; the message names the path."""


class StorageError(SelftuneError, OSError):
    """A file could not be written (a full disk, a read-only folder); the message names the file. Still an
    OSError, so code that falls back to another place on OSError keeps doing so."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class Interrupted(SelftuneError):
    """A sweep (or run) stopped by Ctrl-C (SIGINT) before it ended; the message says how to continue it. Nothing it
    wrote is presented as final. The CLI prints it and exits 130, the shell's code for SIGINT."""

    exit_code = 130
