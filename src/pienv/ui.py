"""The one place that prints: a rich Console (NO_COLOR respected), tables, the log graph."""

from __future__ import annotations

import json
import os
import re
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

    # rich drops colours for NO_COLOR but keeps bold and other styles: no escapes at all then.
    # highlight=False keeps ids plain.
    return Console(highlight=False, soft_wrap=True, **_no_color())


@cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, **_no_color())


def _no_color() -> dict[str, Any]:
    return {"color_system": None} if os.environ.get("NO_COLOR") else {}


def out(text: str = "") -> None:
    """One line on stdout, as is. Plain writes: importing rich costs 50-150 ms, more than a
    whole `pienv log` over 1,000 commits otherwise takes."""
    if sys.stdout is not None:  # None: started with stdout closed
        sys.stdout.write(text + "\n")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with terminal control characters shown escaped (a commit message is written
    by whoever ran `-m`: an escape sequence in it must not reach the terminal as one)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def paint_out(text: str, sgr: str) -> str:
    """``text`` in SGR ``sgr`` (e.g. "33" yellow) when stdout is a terminal that wants it."""
    return f"\x1b[{sgr}m{text}\x1b[0m" if _styled(sys.stdout) else text


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
        # What `out` buffered comes first (both streams may go to one file: `> log 2>&1`).
        if sys.stdout is not None:
            sys.stdout.flush()
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


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    keep: Iterable[str] = (),
    width: int | None = None,
    paths: Iterable[str] = (),
) -> None:
    """Aligned columns, one line per row. The ``keep`` columns (ids, names) and the short
    fixed ones (age, size, changes, commits) are never cut or wrapped: when the rows are
    wider than the terminal, the other columns are cut, widest first, with "…" (a ``paths``
    column loses its start, so its last components stay), and what still does not fit runs
    past the edge rather than splitting an id. Piped output without COLUMNS is never cut."""
    lines = render_table(
        columns, [list(r) for r in rows], set(keep), width or _width(), paths=set(paths)
    )
    if sys.stdout is None:
        return
    if lines and _styled(sys.stdout):
        lines[0] = f"\x1b[1m{lines[0]}\x1b[0m"
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _width() -> int | None:
    """The width to fit: COLUMNS, else the terminal's, else None (piped: no limit)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    if isatty(sys.stdout):
        import shutil

        return shutil.get_terminal_size().columns
    return None


def _styled(stream: Any) -> bool:
    """Whether to print escapes at all: a terminal, and no NO_COLOR (bold is a style too)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb" and isatty(stream)


GAP = "  "


# Short columns a cut would make useless ("45…" for 45.1 MB): never cut.
FIXED = frozenset({"age", "size", "changes", "commits"})


def render_table(
    columns: Sequence[str],
    rows: list[list[str]],
    keep: set[str],
    width: int | None,
    paths: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[str]:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    cuttable = [i for i, c in enumerate(columns) if c not in keep and c not in FIXED]
    from_start = {i for i, c in enumerate(columns) if c in paths}
    if width is not None:
        # Cut the widest cuttable column one step at a time, never below its header (or 3).
        floor = {i: min(widths[i], max(len(columns[i]), 3)) for i in cuttable}
        excess = sum(widths) + len(GAP) * (len(columns) - 1) - width
        while excess > 0:
            candidates = [i for i in cuttable if widths[i] > floor[i]]
            if not candidates:
                break
            i = max(candidates, key=lambda k: widths[k])
            widths[i] -= 1
            excess -= 1

    def cell(text: str, i: int) -> str:
        if len(text) > widths[i]:
            if i in from_start:
                text = "…" + text[len(text) - widths[i] + 1 :]
            else:
                text = text[: widths[i] - 1] + "…"
        return text.ljust(widths[i])

    out = [GAP.join(cell(c, i) for i, c in enumerate(columns)).rstrip()]
    for r in rows:
        out.append(GAP.join(cell(c, i) for i, c in enumerate(r)).rstrip())
    return out


class Activity:
    """What a long step is doing, on stderr: a spinner line that follows ``update`` on a
    terminal (nothing when piped), and ``print`` lines that stay (build steps)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._status: Any = None

    def __enter__(self) -> Activity:
        if isatty(sys.stderr) and os.environ.get("TERM") != "dumb":
            self._status = err_console().status(self.description)
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"{self.description}: {text}"[:100])

    def print(self, text: str) -> None:
        if self._status is not None:
            err_console().print(f"pienv: {text}", markup=False, highlight=False)
        else:
            note(text)


def activity(description: str) -> Activity:
    return Activity(description)


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


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def decorate(refs: Sequence[str]) -> str:
    return f" ({', '.join(refs)})" if refs else ""
