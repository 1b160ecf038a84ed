"""The one base class for errors a user can fix, and the port-in-use case callers act on.

A ``UserError`` is a missing file, tool or model, a busy port, a bad URL or flag: its message says
what to do, the CLI prints it as one line and exits 2. Anything else that escapes is a bug and keeps
its traceback. Callers tell cases apart by class (or ``errno``), never by the wording of a message.
"""

from __future__ import annotations


class UserError(RuntimeError):
    """Something the user can fix; ``str(exc)`` is the whole message (one line, exit code 2)."""


class PortInUseError(UserError):
    """A port we must bind is taken (another program, or one of our own listeners)."""

    def __init__(self, message: str, port: int | None = None) -> None:
        super().__init__(message)
        self.port = port
