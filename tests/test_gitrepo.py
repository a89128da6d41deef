"""gitrepo.find (git's discovery by hand, on every run) against dulwich's Repo.discover."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import git, make_repo
from dulwich.errors import NotGitRepository
from dulwich.repo import Repo

from pienv import gitrepo


def dulwich_view(path: Path) -> tuple[Path, Path, Path] | None:
    try:
        with Repo.discover(str(path)) as repo:
            return (
                Path(os.path.realpath(repo.path)),
                Path(os.path.realpath(repo.commondir())),
                Path(os.path.realpath(repo.controldir())),
            )
    except NotGitRepository:
        return None


def ours(path: Path) -> tuple[Path, Path, Path] | None:
    info = gitrepo.find(path)
    return None if info is None else (info.root, info.common_dir, info.gitdir)


@pytest.fixture
def layouts(tmp_path: Path) -> dict[str, Path]:
    repo = make_repo(tmp_path / "repo")
    (repo / "a" / "b").mkdir(parents=True)
    git(repo, "worktree", "add", "-q", "-b", "wt", str(tmp_path / "wt"))
    (tmp_path / "wt" / "deep").mkdir()
    (tmp_path / "plain").mkdir()
    # A .git directory that is not a repository (no objects/) is skipped, as git does.
    (repo / "a" / "fake" / ".git").mkdir(parents=True)
    os.symlink(repo / "a", tmp_path / "link")
    return {
        "root": repo,
        "subdir": repo / "a" / "b",
        "fake .git": repo / "a" / "fake",
        "linked worktree": tmp_path / "wt",
        "worktree subdir": tmp_path / "wt" / "deep",
        "outside": tmp_path / "plain",
        "symlink into repo": tmp_path / "link",
    }


def test_find_agrees_with_dulwich(layouts: dict[str, Path]) -> None:
    for name, path in layouts.items():
        assert ours(path) == dulwich_view(path), name
    wt = gitrepo.find(layouts["worktree subdir"])
    assert wt is not None and wt.is_linked_worktree
    assert wt.common_dir == layouts["root"].resolve() / ".git"
    main = gitrepo.find(layouts["subdir"])
    assert main is not None and not main.is_linked_worktree


def test_head_commit(layouts: dict[str, Path]) -> None:
    assert gitrepo.head_commit(layouts["root"]) == git(layouts["root"], "rev-parse", "HEAD")
    assert gitrepo.head_commit(layouts["linked worktree"]) == git(
        layouts["linked worktree"], "rev-parse", "HEAD"
    )
    assert gitrepo.head_commit(layouts["subdir"]) == ""  # not a checkout's top directory
    assert gitrepo.head_commit(layouts["outside"]) == ""
    unborn = layouts["outside"] / "new"
    unborn.mkdir()
    git(unborn, "init", "-q")
    assert gitrepo.head_commit(unborn) == ""


def test_forged_git_file_is_not_a_linked_worktree(tmp_path: Path) -> None:
    """git (and dulwich) follow a .git file's gitdir/commondir wherever they point; find()
    reports the same paths but says why the pair is not a real worktree relation, so `run`
    mounts nothing for it."""
    repo = make_repo(tmp_path / "repo")
    git(repo, "worktree", "add", "-q", "-b", "wt", str(tmp_path / "wt"))
    real = gitrepo.find(tmp_path / "wt")
    assert real is not None and real.is_linked_worktree and real.link_problem == ""
    forged = tmp_path / "forged"
    (forged / ".g").mkdir(parents=True)
    (forged / ".g" / "commondir").write_text(f"{tmp_path}\n")
    (forged / ".git").write_text("gitdir: .g\n")
    info = gitrepo.find(forged)
    assert info is not None and info.common_dir == tmp_path.resolve()
    assert not info.is_linked_worktree and "not in" in info.link_problem
    thief = tmp_path / "thief"
    thief.mkdir()
    (thief / ".git").write_text(f"gitdir: {repo}/.git/worktrees/wt\n")
    info = gitrepo.find(thief)
    assert info is not None and ours(thief) == dulwich_view(thief)
    assert not info.is_linked_worktree and "not at" in info.link_problem
    fake_common = tmp_path / "fake"
    (fake_common / "worktrees" / "x").mkdir(parents=True)
    (fake_common / "worktrees" / "x" / "commondir").write_text("../..\n")
    (fake_common / "worktrees" / "x" / "gitdir").write_text(f"{tmp_path / 'victim' / '.git'}\n")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / ".git").write_text(f"gitdir: {fake_common}/worktrees/x\n")
    info = gitrepo.find(tmp_path / "victim")
    assert info is not None and "is not a git directory" in info.link_problem


def test_head_commit_by_hand_agrees_with_git(layouts: dict[str, Path]) -> None:
    """HEAD is read by hand (no dulwich import on the run path): packed refs, a detached
    HEAD, a branch moved in a linked worktree all read as git reads them."""
    root, wt = layouts["root"], layouts["linked worktree"]
    git(root, "commit", "-q", "--allow-empty", "-m", "two")
    git(root, "pack-refs", "--all")  # refs/heads/* now only in packed-refs
    assert not (root / ".git" / "refs" / "heads" / "main").exists()
    assert gitrepo.head_commit(root) == git(root, "rev-parse", "HEAD")
    git(wt, "commit", "-q", "--allow-empty", "-m", "in wt")  # a loose ref beside packed-refs
    assert gitrepo.head_commit(wt) == git(wt, "rev-parse", "HEAD")
    assert gitrepo.head_commit(wt) != gitrepo.head_commit(root)
    git(root, "checkout", "-q", "--detach", "HEAD~1")
    assert gitrepo.head_commit(root) == git(root, "rev-parse", "HEAD")
    assert gitrepo.head_commit(root) == gitrepo._dulwich_head(root)


@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_gitlinks_read_by_hand_match_git(tmp_path: Path, version: str) -> None:
    # Read before every run in a repository with submodules: by hand for index v2/v3, so
    # that dulwich is not imported on the way to the container; v4 goes through dulwich.
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    for i in range(60):
        (repo / f"{'d' * (i % 7)}f{'x' * i}").write_text(str(i))
    git(repo, "add", "-A")
    sha = "1" * 40
    for name in ("sub", "a/deep/sub-with-a-longer-name", "zz"):
        git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sha},{name}")
    (repo / "later").write_text("x")
    git(repo, "add", "-N", "later")  # intent-to-add: an extended-flags entry in v3
    git(repo, "update-index", "--index-version", version)
    want = [
        line.split("\t", 1)[1]
        for line in git(repo, "ls-files", "-s").splitlines()
        if line.startswith("160000")
    ]
    assert sorted(gitrepo.gitlinks(repo / ".git")) == sorted(want) and len(want) == 3
