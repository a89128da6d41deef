"""The store's log file (pienv.log): tracebacks of internal errors, newest last."""

from __future__ import annotations

import json
from pathlib import Path

from pienv.model import now_rfc3339


def log_traceback(path: str | Path, argv: list[str], what: str = "") -> None:
    """Append the exception being handled to ``path`` (the store's pienv.log).

    Each entry starts with ``--- TIME pienv VERSION argv: [...]`` so a report says when, which
    version and which command line, and entries can be told apart (tests/conftest.py shows the
    newest one when a test sees exit 3)."""
    import traceback

    from pienv import __version__

    header = f"--- {now_rfc3339()} pienv {__version__} argv: {json.dumps(argv)}\n"
    with open(path, "a") as fh:
        fh.write(header + what + traceback.format_exc())
