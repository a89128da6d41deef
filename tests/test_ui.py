"""Terminal output: tables that never split an id, an age or a size (a long path loses its
start), and NO_COLOR meaning no escapes at all (exact output)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from pienv import ui

ID = "0123456789ab"
PATH = "/tmp/pytest-of-root/pytest-60/test_worktree_add_existing_bra0/agent-k2"
COLS = ["", "branch", "head", "age", "commits", "size", "lock", "worktree"]
ROW = ["*", "agent-k", ID, "3m ago", "12", "45.1 MB", "running", PATH]


def test_table_at_80_columns_cuts_the_path_from_its_start_never_ids_ages_or_sizes() -> None:
    keep = {"branch", "head"}
    lines = ui.render_table(
        COLS, [ROW, ["", "main", ID, "1d ago", "3", "1.0 kB", "", ""]], keep, 80, {"worktree"}
    )
    assert lines == [
        "   branch   head          age     commits  size     lock     worktree",
        "*  agent-k  0123456789ab  3m ago  12       45.1 MB  running  …ting_bra0/agent-k2",
        "   main     0123456789ab  1d ago  3        1.0 kB",
    ]


def test_table_fits_when_it_can_and_piped_output_is_never_cut() -> None:
    rows = [["*", "main", ID, "3m ago", "1", "1.0 kB", "", ""]]
    assert ui.render_table(COLS, rows, {"head"}, 80) == [
        "   branch  head          age     commits  size    lock  worktree",
        "*  main    0123456789ab  3m ago  1        1.0 kB",
    ]
    lines = ui.render_table(COLS, [ROW], {"head"}, None)
    assert lines[1] == "*  agent-k  0123456789ab  3m ago  12       45.1 MB  running  " + PATH


def _in_terminal(code: str, env: dict[str, str]) -> bytes:
    """Run ``code`` with stdout on a pseudo-terminal; what it wrote."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=child, stderr=child, env=env, close_fds=True
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(main)
    return b"".join(chunks)


@pytest.mark.parametrize("no_color", ["1", ""])
def test_no_color_means_no_escapes_in_table_headers_or_rich_output(no_color: str) -> None:
    code = (
        "from pienv import ui\n"
        "ui.table(['branch', 'head'], [['main', '0123456789ab']], keep=['head'])\n"
        "ui.console().print('[bold]hdr[/] [green]ok[/]')\n"
        "ui.warn('careful')\n"
    )
    env = {**os.environ, "NO_COLOR": no_color, "TERM": "xterm", "COLUMNS": "80"}
    out = _in_terminal(code, env)
    if no_color:
        assert out == (
            b"branch  head\r\nmain    0123456789ab\r\nhdr ok\r\npienv: warning: careful\r\n"
        )
    else:
        assert b"\x1b[1mbranch  head\x1b[0m" in out  # the control: escapes do show


def test_branch_list_at_80_columns_keeps_ids_whole_and_cuts_the_path(tmp_path: Path) -> None:
    # A store with refs only: listing branches reads refs.json and the commit index.
    home = tmp_path / "store"
    home.mkdir()
    sid = "abcdef012345"
    cid = "a" * 64
    wt = "/some/very/long/path/to/a/worktree/directory/of/the/agent/number/one/agent-one"
    refs = {
        "schema": 1,
        "store_id": sid,
        "head": {"branch": "main"},
        "branches": {"main": cid, "agent-one-with-a-long-name": cid},
        "tags": {},
        "worktrees": {wt: "agent-one-with-a-long-name"},
        "base": None,
    }
    (home / "refs.json").write_text(json.dumps(refs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIENV_")}
    env.update({"PIENV_HOME": str(home), "COLUMNS": "80", "NO_COLOR": "1"})
    r = subprocess.run(
        [sys.executable, "-m", "pienv", "branch"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "   branch                      head          age  commits  size  lock  worktree",
        f"   agent-one-with-a-long-name  {cid[:12]}  ?    0        0 B         …gent-one",
        f"*  main                        {cid[:12]}  ?    0        0 B",
    ]


def test_graph_draws_a_parentless_commit_as_a_root() -> None:
    from pienv import dag

    # newest first: r (root, from reset --all) then the unrelated a <- b history
    order = ["r", "b", "a"]
    rows = dag.lanes(order, {"r": (), "b": ("a",), "a": ()})
    assert [(row.graph, row.commit) for row in rows] == [
        ("*", "r"),
        ("", None),  # a gap: b is not r's child
        ("*", "b"),
        ("*", "a"),
    ]
    # beside another lane: the root's column stays empty for a line
    order = ["x", "r", "b", "a"]
    rows = dag.lanes(order, {"x": ("a",), "r": (), "b": ("a",), "a": ()})
    assert [row.graph for row in rows] == ["*", "| *", "|", "| *", "|/", "*"]


def test_notes_follow_the_lines_printed_before_them(tmp_path: Path) -> None:
    code = "from pienv import ui\nui.out('first')\nui.note('second')\nui.out('third')\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(tmp_path / "both", "w") as fh:
        subprocess.run(
            [sys.executable, "-c", code], stdout=fh, stderr=subprocess.STDOUT, check=True, env=env
        )
    assert (tmp_path / "both").read_text() == "first\npienv: second\nthird\n"


def test_narrow_table_cuts_the_widest_column_never_ages_or_sizes() -> None:
    lines = ui.render_table(COLS, [ROW], {"branch", "head"}, 40, paths={"worktree"})
    _header, row = lines
    assert "3m ago" in row and "45.1 MB" in row and ID in row and "agent-k" in row
    # The long path is what gets cut, from its start: its last part stays readable.
    tail = row.rsplit("…", 1)[1]
    assert PATH.endswith(tail) and len(tail) >= 6
