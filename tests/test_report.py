"""Operations talk through the context's Reporter: the default one keeps what it is told."""

from __future__ import annotations

from pathlib import Path

from pienv.context import Context
from pienv.report import Reporter
from pienv.store import Store


def test_default_reporter_keeps_notes_and_warnings_and_drops_progress() -> None:
    r = Reporter()
    r.note("one")
    r.progress("working", 1, 2)
    r.warn("two")
    assert (r.notes, r.warnings) == (["one"], ["two"])


def test_each_context_has_its_own_reporter(tmp_path: Path) -> None:
    a, b = Context(Store(tmp_path / "a")), Context(Store(tmp_path / "b"))
    a.report.note("only a")
    assert (a.report.notes, b.report.notes) == (["only a"], [])
