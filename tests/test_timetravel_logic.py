"""Time travel's pure parts (issue 25): bisect's verdicts and halving, the Dockerfile text,
and the code snapshot on a real git repository (no engine)."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest
from conftest import git

from pienv import gitrepo
from pienv.errors import UsageError
from pienv.model import Commit
from pienv.ops import bisect


@pytest.mark.parametrize(
    ("code", "mark"), [(0, "good"), (125, "skip"), (1, "bad"), (127, "bad"), (128, None)]
)
def test_verdict_follows_git_bisect_run(code: int, mark: str | None) -> None:
    assert bisect.verdict(code) == mark


def _chain(n: int) -> dict[str, Commit]:
    commits = {}
    for i in range(n):
        cid = f"{i:064x}"
        parents = (f"{i - 1:064x}",) if i else ()
        commits[cid] = Commit(cid, parents, "main", f"c{i}", f"2026-01-01T00:00:{i:02d}Z")
    return commits


@pytest.mark.parametrize("n", [2, 5, 16, 33])
def test_bisect_halves_the_first_parent_line(n: int) -> None:
    commits = _chain(n + 1)  # root (good) + n runs; the head is bad
    ids = list(commits)
    for culprit in range(1, n + 1):
        chain = bisect.first_parent_chain(commits, ids[-1], [ids[0]])
        state = bisect.State(chain, {ids[-1]: "bad", ids[0]: "good"})
        probes = 0
        step = bisect.next_step(state)
        while step.next is not None:
            probes += 1
            state.marks[step.next] = "bad" if ids.index(step.next) >= culprit else "good"
            step = bisect.next_step(state)
        assert step.first_bad == ids[culprit]
        assert probes <= math.ceil(math.log2(n))


def test_bisect_skips_and_reports_what_it_cannot_tell_apart() -> None:
    commits = _chain(4)
    ids = list(commits)
    state = bisect.State(list(reversed(ids)), {ids[3]: "bad", ids[0]: "good"})
    state.marks[ids[1]] = "skip"
    state.marks[ids[2]] = "skip"
    step = bisect.next_step(state)
    assert step.next is None and step.first_bad is None
    assert set(step.ambiguous) == {ids[3], ids[2], ids[1]}


def test_bisect_refuses_a_good_that_is_not_an_ancestor() -> None:
    commits = _chain(3)
    ids = list(commits)
    with pytest.raises(UsageError, match="both good and bad"):
        bisect.first_parent_chain(commits, ids[1], [ids[2]])  # good is newer than bad
    side = "f" * 64  # a sibling line: not an ancestor of the bad head
    commits[side] = Commit(side, (), "side", "s", "2026-01-01T00:01:00Z")
    with pytest.raises(UsageError, match="no good commit"):
        bisect.first_parent_chain(commits, ids[2], [side])
    with pytest.raises(UsageError, match="newer than bad"):
        bisect.next_step(bisect.State(list(reversed(ids)), {ids[1]: "bad", ids[2]: "good"}))


def test_code_snapshot_records_dirty_state_without_touching_the_checkout(repo: Path) -> None:
    (repo / "README").write_text("edited\n")
    (repo / "new.txt").write_text("untracked\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "ignored.log").write_text("ignored\n")
    status = git(repo, "status", "--porcelain")
    index = (repo / ".git" / "index").read_bytes()
    snap = gitrepo.snapshot_code(repo)
    assert snap is not None and snap.code != snap.head == git(repo, "rev-parse", "HEAD")
    assert git(repo, "status", "--porcelain") == status
    assert (repo / ".git" / "index").read_bytes() == index
    files = git(repo, "ls-tree", "-r", "--name-only", snap.code).split()
    assert sorted(files) == [".gitignore", "README", "new.txt", "staged.txt"]
    assert git(repo, "show", f"{snap.code}:README") == "edited"
    assert git(repo, "rev-parse", f"refs/pienv/code/{snap.code}") == snap.code
    # a clean tree records HEAD itself, and makes no ref
    clean = gitrepo.snapshot_code(gitrepo_clean(repo))
    assert clean is not None and clean.code == clean.head


def gitrepo_clean(repo: Path) -> Path:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "all")
    return repo


def test_code_snapshot_outside_a_repository_or_unborn(tmp_path: Path) -> None:
    assert gitrepo.snapshot_code(tmp_path) is None
    git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    assert gitrepo.snapshot_code(tmp_path) is None  # no commit yet: nothing to hang it on


def test_restore_code_brings_back_head_and_uncommitted_state(repo: Path) -> None:
    (repo / "README").write_text("v1 dirty\n")
    (repo / "untracked.txt").write_text("u\n")
    snap = gitrepo.snapshot_code(repo)
    assert snap is not None
    git(repo, "stash", "-u")
    (repo / "README").write_text("v2\n")
    git(repo, "commit", "-qam", "v2")
    assert gitrepo.dirty_paths(repo) == []
    gitrepo.restore_code(repo, snap.head, snap.code)
    assert git(repo, "rev-parse", "HEAD") == snap.head
    assert (repo / "README").read_text() == "v1 dirty\n"
    assert (repo / "untracked.txt").read_text() == "u\n"
    assert sorted(gitrepo.dirty_paths(repo)) == ["README", "untracked.txt"]


def test_code_snapshot_of_many_files_stays_fast(tmp_path: Path) -> None:
    """A 2,000-file repository with 100 dirty paths (bench/code_snapshot.py measures 10,000:
    docs/time-travel.md's number)."""
    root = tmp_path / "big"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for i in range(50):
        d = root / f"d{i}"
        d.mkdir()
        for j in range(40):
            (d / f"f{j}").write_text(f"{i} {j}\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    for i in range(50):
        (root / f"d{i}" / "f0").write_text("changed\n")
        (root / f"new{i}").write_text("new\n")
    gitrepo.snapshot_code(root)  # warm the page cache as a real repository's would be
    began = time.monotonic()
    snap = gitrepo.snapshot_code(root)
    took = time.monotonic() - began
    assert snap is not None and snap.code != snap.head
    assert took < 3.0, took  # ~0.07 s idle; generous on a loaded machine
    assert subprocess.run(["git", "diff", "--quiet"], cwd=root).returncode == 1  # untouched


def test_replay_plan_replays_commands_and_leaves_sessions_to_the_user() -> None:
    from pienv.ops import replay
    from pienv.runloop.sandbox import LOGIN_SHELL

    def c(i: int, kind: str = "run", command: tuple[str, ...] = (), message: str = "") -> Commit:
        parents = (f"{i - 1:064x}",) if i else ()
        return Commit(f"{i:064x}", parents, "main", message or f"c{i}", "t", kind, command)  # type: ignore[arg-type]

    line = [
        c(0, "root"),
        c(1, "run", ("apk", "add", "jq")),
        c(2, "prepare"),
        c(3, "run", LOGIN_SHELL, "shell"),
        c(4, "run", ("pi",)),
        c(5, "flatten"),
        c(6, "install", ("sh", "-c", "npm i -g x")),
    ]
    root, items = replay.plan({x.id: x for x in line}, line[-1].id, [("pi",)])
    assert root == line[0]
    assert [i.action for i in items] == ["replay", "skip", "manual", "manual", "skip", "replay"]
    assert items[0].workdir == "/workspace"


def test_export_run_line_is_exec_form_through_the_wrapper() -> None:
    import json

    from pienv.ops import export

    line = export.run_line(("sh", "-c", "echo 'a b' \"$X\""), {"HOME": "/home/agent"}, None)
    argv = json.loads(line.removeprefix("RUN "))
    assert argv[:2] == ["env", "HOME=/home/agent"] and argv[-3:] == [
        "sh",
        "-c",
        "echo 'a b' \"$X\"",
    ]
    kept = json.loads(export.run_line(("false",), {}, 1).removeprefix("RUN "))
    assert "[ $c -eq 1 ]" in kept[3]


def test_code_snapshot_leaves_out_huge_untracked_files(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gitrepo, "UNTRACKED_CAP", 1000)
    (repo / "README").write_text("edited\n")
    (repo / "build.bin").write_bytes(b"x" * 5000)  # a build tree nobody ignored
    snap = gitrepo.snapshot_code(repo)
    assert snap is not None
    assert git(repo, "ls-tree", "-r", "--name-only", snap.code).split() == ["README"]
    assert "untracked files left out" in git(repo, "log", "-1", "--format=%s", snap.code)


@pytest.mark.parametrize(
    ("what", "value"),
    [
        ("user", "1000:1000\nRUN touch /pwned"),
        ("user", "$EVIL"),
        ("workdir", "/workspace\nRUN id"),
        ("workdir", "relative"),
        ("base", "img\nRUN id"),
        ("base", "${X}"),
    ],
)
def test_export_refuses_labels_that_would_write_dockerfile_lines(what: str, value: str) -> None:
    """A pulled branch's labels cannot add or change instructions of an exported Dockerfile."""
    from pienv.errors import PienvError
    from pienv.ops.export import plain

    with pytest.raises(PienvError, match="not a plain value"):
        plain(what, value)


def test_export_keeps_plain_labels() -> None:
    from pienv.ops.export import plain

    assert plain("user", "4321:4321") == "4321:4321"
    assert plain("workdir", "/workspace/sub-dir") == "/workspace/sub-dir"
    assert plain("base", "pienv-test/realistic:f19ebd9958ca") == "pienv-test/realistic:f19ebd9958ca"
