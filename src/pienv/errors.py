"""The few error types pienv raises. Each carries a one-line message and an exit code.

The CLI's single error handler prints ``pienv: error: <message>`` and exits with ``code``;
anything that is not a PienvError is an internal error (exit 3, traceback to the log file).
"""

from __future__ import annotations


class PienvError(Exception):
    """A user-facing error: one line, exit 1 unless a subclass says otherwise."""

    code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class Interrupted(BaseException):
    """SIGHUP/SIGTERM while a container runs the agent's command, raised by pienv's signal
    handler (runloop/launch.py). A BaseException (as KeyboardInterrupt is), so no ``except
    Exception`` on the way can swallow it; the console script exits 128+n."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class UsageError(PienvError):
    """Bad input: unknown ref, bad name, refused path."""


class StoreError(PienvError):
    """The store is corrupt, newer than this pienv, or cannot be written."""


class ConcurrentUpdate(PienvError):
    """A compare-and-swap ref move lost against another writer."""


class BranchBusy(PienvError):
    """The branch lock is held by a live run."""


class EngineError(PienvError):
    """Docker is unreachable or refused an operation."""


class MaxDepthExceeded(EngineError):
    """The storage driver refuses another layer (overlay2: about 125): flatten first."""
