"""Exit codes and the errors the CLI turns into one-line messages."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented process exit codes (README, "Exit codes")."""

    OK = 0
    #: The command ran and found (or hit) problems: doctor errors, a failed bootstrap step.
    PROBLEMS = 1
    #: Bad usage or bad input (hostfile, config, flags). Nothing was changed.
    USAGE = 2
    #: clusterkit itself crashed (a bug): please report it with CLUSTERKIT_DEBUG=1 output.
    INTERNAL = 3
    #: Interrupted with Ctrl-C.
    INTERRUPTED = 130


class ClusterkitError(Exception):
    """An expected failure: printed as one line (no traceback), then exit with ``exit_code``."""

    exit_code: ExitCode = ExitCode.PROBLEMS

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ClusterkitError):
    """Bad flags or arguments."""

    exit_code = ExitCode.USAGE


class InputError(UsageError):
    """Bad input file; the message starts with ``path:line[:column]:`` when the place is known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        self.path = path
        self.line = line
        self.column = column
        where = ":".join(str(part) for part in (path, line, column) if part is not None)
        super().__init__(f"{where}: {message}" if where else message)
