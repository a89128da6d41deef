"""Parallel agents: worktrees bound to env branches, locks, git inside a worktree workspace."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import Pienv, git

pytestmark = pytest.mark.engine


def test_worktree_add_list_remove(pienv: Pienv, tmp_path: Path) -> None:
    pienv("run", "--", "touch", "/shared-tool")
    wt = tmp_path / "agent-a"
    out = pienv("worktree", "add", str(wt), "agent-a").out
    assert f"Worktree {wt} on git branch 'agent-a'" in out
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD") == "agent-a"
    assert pienv.refs()["worktrees"] == {str(wt): "agent-a"}
    assert pienv.head("agent-a") == pienv.head("main")
    rows = json.loads(pienv("worktree", "list", "--json").out)
    assert rows == [
        {
            "path": str(wt),
            "env_branch": "agent-a",
            "env_head": pienv.head("main"),
            "git_branch": "agent-a",
            "holder_pid": None,
            "exists": True,
        }
    ]
    # a run inside the worktree uses its bound branch, and status says why
    pienv("run", "--", "touch", "/a-only", cwd=wt)
    assert pienv.head("agent-a") != pienv.head("main")
    assert "[chosen by worktree binding of" in pienv("status", cwd=wt).out
    (wt / "dirty").write_text("x")
    r = pienv("worktree", "remove", str(wt), check=False)
    assert r.code == 1 and "uncommitted changes" in r.err
    pienv("worktree", "remove", str(wt), "--force")
    assert not wt.exists() and pienv.refs()["worktrees"] == {}
    assert "agent-a" in pienv.refs()["branches"]  # history is kept


def test_two_worktrees_run_at_once_each_with_own_state(pienv: Pienv, tmp_path: Path) -> None:
    pienv("run", "--", "true")
    a, b = tmp_path / "a", tmp_path / "b"
    pienv("worktree", "add", str(a), "a")
    pienv("worktree", "add", str(b), "b")
    (a / "file-a").write_text("a")
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def go(name: str, wt: Path) -> None:
        proc = pienv.popen(
            "run", "--", "sh", "-c", f"sleep 2; touch /state-{name}; ls /workspace", cwd=wt
        )
        out, err = proc.communicate(timeout=60)
        results[name] = subprocess.CompletedProcess([], proc.returncode, out, err)

    threads = [threading.Thread(target=go, args=(n, w)) for n, w in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"].returncode == 0 and results["b"].returncode == 0, results
    assert "file-a" in results["a"].stdout and "file-a" not in results["b"].stdout
    assert pienv("run", "--", "ls", "/state-a", cwd=a).code == 0
    assert pienv("run", "--", "ls", "/state-a", cwd=b, check=False).code != 0
    assert pienv("run", "--", "ls", "/state-b", cwd=b).code == 0


@pytest.mark.one_engine
def test_same_branch_refused_then_wait_proceeds(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    first = pienv.popen("run", "--", "sh", "-c", "echo up; sleep 3; touch /first")
    assert first.stdout is not None and first.stdout.readline() == "up\n"
    r = pienv("run", "--", "true", check=False)
    assert r.code == 1 and "is busy" in r.err and f"pid {first.pid}" in r.err
    waited = pienv("run", "--wait", "60", "--", "ls", "/first")
    assert waited.out == "/first\n"  # ran after the first run committed
    assert first.wait(30) == 0


def test_git_commit_inside_worktree_lands_on_its_branch(pienv: Pienv, tmp_path: Path) -> None:
    wt = tmp_path / "feature"
    pienv("worktree", "add", str(wt), "feature")
    script = (
        "git status --short && echo change > agent.txt && git add agent.txt && "
        "git commit -q -m 'agent did this' && git log --oneline -1"
    )
    r = pienv("run", "--", "sh", "-c", script, cwd=wt)
    assert "agent did this" in r.out
    assert git(pienv.repo, "log", "-1", "--format=%s", "feature") == "agent did this"
    assert git(pienv.repo, "log", "-1", "--format=%s", "main") == "init"
    # and the main checkout works too
    r = pienv("run", "--", "sh", "-c", "git log --oneline | wc -l")
    assert r.out.strip() == "1"


@pytest.mark.stress
def test_stress_four_agents_ten_runs_each(pienv: Pienv, tmp_path: Path) -> None:
    pienv("run", "--", "true")
    names = ["w0", "w1", "w2", "w3"]
    for n in names:
        pienv("worktree", "add", str(tmp_path / n), n)
    start = {n: pienv.head(n) for n in names}
    errors: list[str] = []

    def agent(n: str) -> None:
        for i in range(10):
            r = pienv(
                "run", "--", "sh", "-c", f"echo {i} >> /log-{n}", cwd=tmp_path / n, check=False
            )
            if r.code != 0:
                errors.append(r.err)

    threads = [threading.Thread(target=agent, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    log = [e for e in json.loads(Path(pienv.home / "refs.json").read_text())["branches"]]
    assert sorted(log) == sorted(["main", *names])
    moves = 0
    for n in names:
        rows = json.loads(pienv("log", n, "--json").out)
        ours = rows[: rows.index(next(r for r in rows if r["id"] == start[n]))]
        # The worktree's git dir gets its mount point once per branch (a prepare commit).
        ours = [r for r in ours if r["kind"] != "prepare"]
        assert len(ours) == 10 and all(r["branch"] == n for r in ours)
        out = pienv("run", "--", "cat", f"/log-{n}", cwd=tmp_path / n).out
        assert out.split() == [str(i) for i in range(10)]
        for m in names:
            if m != n:
                assert pienv("run", "--", "ls", f"/log-{m}", cwd=tmp_path / n, check=False).code
        moves += sum(
            1 for r in json.loads(pienv("reflog", n, "--json").out) if r["what"].startswith("run:")
        )
    assert moves == 40
    assert json.loads(pienv("status", "--json").out)["locks"] == []
