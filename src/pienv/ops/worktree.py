"""`pienv worktree`: one git worktree and one env branch per agent, bound in the store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pienv import gitrepo, locks
from pienv.context import Context
from pienv.errors import UsageError
from pienv.model import JsonResult, check_ref_name


@dataclass(frozen=True)
class Added:
    path: str
    branch: str
    env_head: str
    existing: bool = False  # an env branch that was there already got a worktree again


def _main_root(cwd: Path) -> Path:
    repo = gitrepo.find(cwd)
    if repo is None:
        raise UsageError(f"{cwd} is not inside a git repository", hint="worktrees need one")
    # The main checkout owns the common dir (…/repo/.git); linked worktrees point into it.
    return repo.common_dir.parent


def add(ctx: Context, cwd: Path, path: Path, branch: str | None, from_rev: str | None) -> Added:
    root = _main_root(cwd)
    target = Path(os.path.realpath(path.expanduser()))
    name = branch or target.name
    check_ref_name(name)
    if target.exists():
        raise UsageError(f"{target} already exists")
    ctx.store.init()
    refs = ctx.refs()
    existing = name in refs.branches
    if existing:
        # A kept env branch (its worktree removed) gets a worktree again; one checkout each.
        if from_rev:
            raise UsageError(
                f"env branch {name!r} already exists; --from only starts a new one",
                hint=f"`pienv reset -b {name} {from_rev}` moves it",
            )
        for bound_path, bound in refs.worktrees.items():
            if bound == name and Path(bound_path).is_dir():
                raise UsageError(
                    f"env branch {name!r} is bound to worktree {bound_path}",
                    hint=f"work there, or `pienv worktree remove {bound_path}` first",
                )
        start: str | None = refs.branches[name]
    else:
        if not from_rev and ctx.settle("HEAD", refs):
            refs = ctx.refs()  # the run being committed on HEAD's branch has landed
        start = ctx.resolve(from_rev, refs) if from_rev else refs.head_commit()
        if start:
            with ctx.store.transaction(f"worktree: branch for {target}") as txn:
                txn.move_branch(name, None, start)
    try:
        gitrepo.add_worktree(root, target, name)
    except BaseException:
        if start and not existing:
            with ctx.store.transaction(f"worktree: undo branch for {target}") as txn:
                txn.delete_branch(name, start)
        raise
    with ctx.store.transaction(f"worktree: bind {target}") as txn:
        for stale in [p for p, b in txn.refs.worktrees.items() if b == name]:
            txn.unbind_worktree(stale)  # its directory is gone (checked above)
        txn.bind_worktree(str(target), name)
    return Added(path=str(target), branch=name, env_head=start or "", existing=existing)


@dataclass(frozen=True)
class WorktreeRow(JsonResult):
    path: str
    env_branch: str
    env_head: str | None
    git_branch: str | None
    holder_pid: int | None
    exists: bool


def list_(ctx: Context) -> list[WorktreeRow]:
    refs = ctx.refs()
    rows = []
    for path, branch in sorted(refs.worktrees.items()):
        exists = Path(path).is_dir()
        git_branch = None
        if exists:
            try:
                git_branch = gitrepo.current_branch(Path(path))
            except Exception:  # not a checkout any more: shown as such, not fatal
                git_branch = None
        holder = None
        if locks.is_locked(ctx.store.locks_dir, branch):
            holder = locks.read_holder(ctx.store.locks_dir, branch)
        rows.append(
            WorktreeRow(
                path=path,
                env_branch=branch,
                env_head=refs.branches.get(branch),
                git_branch=git_branch,
                holder_pid=holder.pid if holder else None,
                exists=exists,
            )
        )
    return rows


@dataclass(frozen=True)
class Removed:
    path: str
    env_branch: str


def remove(ctx: Context, path: Path, force: bool) -> Removed:
    target = Path(os.path.realpath(path.expanduser()))
    refs = ctx.refs()
    branch = refs.worktrees.get(str(target))
    if branch is None:
        raise UsageError(f"{target} is not a pienv worktree", hint="`pienv worktree list`")
    if locks.is_locked(ctx.store.locks_dir, branch):
        raise locks.busy_error(ctx.store.locks_dir, branch)
    if target.is_dir():
        if not force and gitrepo.is_dirty(target):
            raise UsageError(
                f"worktree {target} has uncommitted changes",
                hint="commit or stash them, or `pienv worktree remove --force`",
            )
        repo = gitrepo.find(target)
        if repo is None:
            raise UsageError(f"{target} is no longer a git worktree")
        gitrepo.remove_worktree(repo.common_dir.parent, target)
    with ctx.store.transaction(f"worktree: unbind {target}") as txn:
        txn.unbind_worktree(str(target))
    return Removed(path=str(target), env_branch=branch)
