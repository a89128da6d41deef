"""Design rule 11: every command that defaults to "the current branch" uses the one selection
rule (--branch > PIENV_PROFILE > worktree binding > HEAD), and says which rule chose it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Pienv

pytestmark = [pytest.mark.engine, pytest.mark.one_engine]


@pytest.fixture
def bound(pienv: Pienv, tmp_path: Path) -> Path:
    """main has one commit; worktree agent-c (bound to env branch agent-c) one more."""
    pienv("run", "-m", "on main", "--", "touch", "/m")
    wt = tmp_path / "agent-c"
    pienv("worktree", "add", str(wt), "agent-c")
    pienv("run", "-m", "on agent-c", "--", "touch", "/c", cwd=wt)
    assert pienv.head("agent-c") != pienv.head("main")
    return wt


def test_reset_all_in_bound_worktree_moves_its_branch_not_main(pienv: Pienv, bound: Path) -> None:
    main, agent = pienv.head("main"), pienv.head("agent-c")
    r = pienv("reset", "--all", cwd=bound)
    assert pienv.head("main") == main
    assert pienv.head("agent-c") != agent
    assert r.out.startswith("agent-c is now at ")
    assert "worktree binding" in r.err
    r = pienv("reset", "--system", cwd=bound)
    assert pienv.head("main") == main
    # and plain reset, back to where it was, through the branch's own reflog
    pienv("reset", "agent-c@{2}", cwd=bound)
    assert pienv.head("agent-c") == agent and pienv.head("main") == main


def test_history_commands_in_bound_worktree_use_its_branch(pienv: Pienv, bound: Path) -> None:
    agent = pienv.head("agent-c")
    log = pienv("log", cwd=bound).out.splitlines()
    assert log[0].startswith(agent[:12]) and "(HEAD -> agent-c)" in log[0]
    assert "on agent-c" in log[0]
    # outside the worktree HEAD is main's
    assert "(HEAD -> main)" in pienv("log").out.splitlines()[0]
    assert json.loads(pienv("show", "--json", cwd=bound).out)["id"] == agent
    parent = json.loads(pienv("show", "HEAD~1", "--json", cwd=bound).out)
    if parent["kind"] == "prepare":  # the worktree's git-dir mount points (docs/concepts.md)
        parent = json.loads(pienv("show", "HEAD~2", "--json", cwd=bound).out)
    assert parent["id"] == pienv.head("main") and parent["refs"] == ["main"]
    assert "agent-c@{0}" in pienv("reflog", cwd=bound).out
    d = json.loads(pienv("diff", "main", "--json", cwd=bound).out)
    assert d["new"] == agent and "/c" in d["added"]
    rows = json.loads(pienv("branch", "--json", cwd=bound).out)
    assert [b["name"] for b in rows if b["current"]] == ["agent-c"]
    pienv("tag", "snap", cwd=bound)
    assert pienv.refs()["tags"]["snap"] == agent
    r = pienv("flatten", cwd=bound)
    assert r.out.startswith("agent-c:") and pienv.head("main") != pienv.head("agent-c")


def test_profile_beats_binding_and_branch_option_beats_profile(pienv: Pienv, bound: Path) -> None:
    main, agent = pienv.head("main"), pienv.head("agent-c")
    r = pienv("log", "-n", "1", cwd=bound, env={"PIENV_PROFILE": "main"})
    assert r.out.startswith(main[:12]) and "PIENV_PROFILE" in r.err
    r = pienv("reset", "-b", "main", "HEAD", cwd=bound, env={"PIENV_PROFILE": "agent-c"})
    assert r.out.startswith("main is now at") and pienv.head("agent-c") == agent


def test_checkout_in_a_bound_worktree_says_the_binding_still_wins(
    pienv: Pienv, bound: Path
) -> None:
    r = pienv("checkout", "-b", "other", cwd=bound)
    assert pienv.refs()["head"] == {"branch": "other"}
    assert "commands run here still use branch 'agent-c' (worktree binding" in r.err
    assert "(HEAD -> agent-c, other)" in pienv("log", "-n", "1", cwd=bound).out
