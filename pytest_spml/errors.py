"""Bad input is reported, never raised at the user as a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage: the command exits 2 with a one-line reason.

    The reason names the file and line where the problem is and what to do,
    in the ``path:line: message`` shape editors and CI annotators understand.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"
