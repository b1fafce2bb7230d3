"""The command line's user-facing error."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2 unless given.

    Attributes:
        status: the process's exit status.
    """

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status
