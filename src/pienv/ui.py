"""The one place that prints: a rich Console (NO_COLOR respected), tables, the log graph."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


@cache
def console() -> Console:
    from rich.console import Console

    # rich honours NO_COLOR and non-TTY output by itself; highlight=False keeps ids plain.
    return Console(highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def out(text: str = "", style: str | None = None) -> None:
    console().print(text, style=style, markup=False)


def _paint(text: str, sgr: str) -> str:
    # One-line messages skip rich: importing rich.console costs ~30 ms on every `pienv run`.
    # NO_COLOR (non-empty) and non-terminals get plain text, as rich would do.
    stream = sys.stderr
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" or not isatty(stream):
        return text
    return f"\x1b[{sgr}m{text}\x1b[0m"


def isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a closed standard stream is None, and is not)."""
    return stream is not None and stream.isatty()


def _line(text: str) -> None:
    # stderr may be closed or gone with its terminal: a note must never change the exit code
    # of the run it reports on, so there is nowhere to say it and nothing else to do.
    if sys.stderr is None:
        return
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def note(text: str) -> None:
    _line(_paint(f"pienv: {text}", "2"))


def warn(text: str) -> None:
    _line(_paint(f"pienv: warning: {text}", "33"))


def error(text: str) -> None:
    _line(_paint(f"pienv: error: {text}", "1;31"))


def emit_json(data: Any) -> None:
    if sys.stdout is not None:  # None: started with stdout closed, as rich treats it
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> None:
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*row)
    console().print(t)


def progress(description: str, total: int | None) -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn(description),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=True,
    )


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def age(ts: str) -> str:
    if not ts:
        return "?"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    secs = int((datetime.now(UTC) - then).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit} ago"
    return f"{max(secs, 0)}s ago"


def decorate(refs: Sequence[str]) -> str:
    return f" ({', '.join(refs)})" if refs else ""
