"""Issue 13, point 2: basics a git user expects (engine tests; the engine-free ones are in
test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Pienv, git

pytestmark = pytest.mark.engine


def test_worktree_add_existing_branch_reattaches_it(pienv: Pienv, tmp_path: Path) -> None:
    wt = tmp_path / "agent-k"
    pienv("worktree", "add", str(wt), "agent-k")
    pienv("run", "--", "touch", "/k", cwd=wt)
    head = pienv.head("agent-k")
    pienv("worktree", "remove", str(wt))
    # the env branch was kept: give it a worktree again (git branch agent-k exists too)
    again = tmp_path / "agent-k2"
    r = pienv("worktree", "add", str(again), "agent-k")
    assert "existing env branch 'agent-k' at " + head[:12] in r.out
    assert pienv.head("agent-k") == head
    assert pienv.refs()["worktrees"] == {str(again): "agent-k"}
    assert git(again, "rev-parse", "--abbrev-ref", "HEAD") == "agent-k"
    # one worktree per env branch
    r = pienv("worktree", "add", str(tmp_path / "third"), "agent-k", check=False)
    assert r.code == 1 and f"bound to worktree {again}" in r.err
    r = pienv("worktree", "add", str(tmp_path / "fourth"), "agent-k", "--from", "main", check=False)
    assert r.code == 1 and "--from only starts a new one" in r.err


def test_run_in_a_subdirectory_starts_there(pienv: Pienv) -> None:
    sub = pienv.repo / "sub" / "deeper"
    sub.mkdir(parents=True)
    assert pienv("run", "--", "pwd", cwd=sub).out == "/workspace/sub/deeper\n"
    assert pienv("run", "--", "pwd").out == "/workspace\n"


def test_tag_and_branch_names_never_clash(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    r = pienv("tag", "main", check=False)
    assert (r.code, r.err) == (1, "pienv: error: 'main' is a branch (choose another tag name)\n")
    assert pienv.refs()["tags"] == {}
    pienv("tag", "v1")
    r = pienv("branch", "v1", check=False)
    assert (r.code, r.err) == (1, "pienv: error: 'v1' is a tag (choose another branch name)\n")
    pienv("branch", "exp")
    assert pienv("branch", "-m", "exp", "v1", check=False).code == 1


def test_messages_say_what_happened(pienv: Pienv) -> None:
    r = pienv("run", "-m", "install the tool", "--", "touch", "/tool")
    assert r.err.endswith("(1 path changed)\n")
    first = pienv("reflog").out.splitlines()[0]
    assert "main@{0}: run: install the tool  (" in first
    show = pienv("show").out
    assert "\n1 path changed: 1 added, 0 changed, 0 deleted\n" in show
    # --no-commit says "discarded" only when there was something to discard
    r = pienv("run", "--no-commit", "--", "true")
    assert r.err == "pienv: nothing changed in the environment; no commit\n"
    r = pienv("run", "--no-commit", "--", "touch", "/gone")
    assert r.err == "pienv: --no-commit: the environment changes were discarded\n"
    # a shell's commit is called `shell`, not pienv's login-shell wrapper
    pienv("shell", input="touch /from-shell\nexit\n")
    assert pienv("log", "-n", "1").out.split("  (")[0].endswith(" shell")
    assert "main@{0}: run: shell  (" in pienv("reflog").out.splitlines()[0]
