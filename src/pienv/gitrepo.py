"""The only module that imports dulwich: find the repo root, its HEAD, worktrees."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pienv.errors import UsageError


@dataclass(frozen=True)
class RepoInfo:
    root: Path  # the checkout's top directory (the worktree's, for a linked worktree)
    head: str  # commit sha or "" (unborn)
    common_dir: Path  # the shared .git directory
    gitdir: Path  # this checkout's git dir (.git/worktrees/NAME for a linked worktree)

    @property
    def is_linked_worktree(self) -> bool:
        return self.gitdir.resolve() != self.common_dir.resolve()


def find(path: Path) -> RepoInfo | None:
    """The repository containing ``path`` (any subdirectory, linked worktrees too), or None."""
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        with Repo.discover(str(path)) as repo:
            root = Path(repo.path).resolve()
            controldir = Path(repo.controldir()).resolve()
            common = Path(repo.commondir()).resolve()
            try:
                sha = repo.head().decode()
            except KeyError:
                sha = ""  # unborn branch
            return RepoInfo(root=root, head=sha, common_dir=common, gitdir=controldir)
    except NotGitRepository:
        return None


def current_branch(root: Path) -> str:
    from dulwich.repo import Repo

    with Repo(str(root)) as repo:
        target = repo.refs.get_symrefs().get(b"HEAD", b"")  # type: ignore[call-overload]
    return bytes(target).decode().removeprefix("refs/heads/")


def add_worktree(repo_root: Path, path: Path, branch: str) -> None:
    """Create a linked worktree at ``path`` on a new git branch ``branch`` from HEAD
    (what `git worktree add -b BRANCH PATH` does)."""
    from dulwich.repo import Repo
    from dulwich.worktree import add_worktree as dulwich_add

    with Repo(str(repo_root)) as repo:
        ref: Any = b"refs/heads/" + branch.encode()  # dulwich types refs as a NewType
        if repo.refs.as_dict().get(ref):
            raise UsageError(f"git branch {branch!r} already exists in {repo_root}")
        try:
            repo.head()
        except KeyError as exc:
            raise UsageError(f"{repo_root} has no commit yet; commit something first") from exc
        try:
            wt = dulwich_add(repo, str(path), branch=branch.encode())
        except ValueError as exc:
            raise UsageError(f"cannot add worktree {path}: {exc}") from exc
        wt.close()


def worktree_paths(repo_root: Path) -> list[Path]:
    from dulwich.repo import Repo

    with Repo(str(repo_root)) as repo:
        return [Path(w.path) for w in repo.worktrees.list()]


def is_dirty(path: Path) -> bool:
    """Whether a checkout has uncommitted changes (slow on huge trees: not for the hot path)."""
    from dulwich import porcelain

    status = porcelain.status(str(path), untracked_files="normal")
    staged = any(status.staged[k] for k in ("add", "delete", "modify"))
    return bool(staged or status.unstaged or status.untracked)


def remove_worktree(repo_root: Path, path: Path) -> None:
    """Remove a linked worktree (directory and its admin dir in .git/worktrees)."""
    from dulwich.repo import Repo
    from dulwich.worktree import remove_worktree as dulwich_remove

    with Repo(str(repo_root)) as repo:
        dulwich_remove(repo, str(path), force=True)


def home_dir() -> Path:
    return Path(os.path.expanduser("~")).resolve()
