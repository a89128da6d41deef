"""The one way an operation talks while it works: notes, warnings and progress.

Core and ops code never prints (docs/architecture.md). What an operation has to say before it
returns goes to ``ctx.report`` (context.py): the command line hands in a Reporter that
shows it at once (cli/common.py), while the default one, used by tests, background processes
and library callers, keeps what it is told in ``notes`` and ``warnings``. Results that a
command prints or emits as JSON stay in the result dataclasses; a Reporter carries only what
happens on the way.
"""

from __future__ import annotations


class Reporter:
    """Collects notes and warnings; ignores progress. Subclasses show them instead."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def note(self, text: str) -> None:
        """Something the user may want to know (``pienv: TEXT`` on stderr)."""
        self.notes.append(text)

    def warn(self, text: str) -> None:
        """Something that went differently from what the user asked or expects."""
        self.warnings.append(text)

    def progress(self, what: str, done: int | None = None, total: int | None = None) -> None:
        """``what`` is happening now; ``done`` of ``total`` units when they are counted
        (``total`` None: not known). Passing by: nothing keeps it."""
