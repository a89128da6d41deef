"""Environment and code together: `checkout --with-code`, `reset --with-code`,
`worktree add --at`.

Each env commit records the workspace's HEAD and a commit of its uncommitted state (the
`code` label, gitrepo.snapshot_code). Bringing the code back never overwrites a line of the
user's: a clean checkout is detached at the recorded HEAD with the recorded uncommitted
state put back in its working tree; a dirty one is left alone and the code goes into a new
linked worktree, bound to the env branch, whose path the result names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pienv import gitrepo
from pienv.context import Context
from pienv.errors import UsageError
from pienv.model import Commit, JsonResult, check_ref_name, short
from pienv.ops import history


@dataclass(frozen=True)
class CodeResult(JsonResult):
    env_branch: str | None  # the env branch after the move (None: detached)
    env_commit: str
    git_head: str  # the recorded HEAD the code is at
    code: str  # the recorded snapshot ("" or == git_head: nothing was uncommitted)
    path: str  # where the code is: the checkout itself, or the new worktree
    worktree: bool  # the checkout was dirty (or --at): the code is in a new worktree
    restored: tuple[str, ...] = ()  # the uncommitted paths put back


def _repo_root(cwd: Path) -> Path:
    info = gitrepo.find(cwd)
    if info is None:
        raise UsageError(f"{cwd} is not inside a git repository", hint="--with-code needs one")
    return info.root


def _recorded(ctx: Context, root: Path, commit: Commit) -> tuple[str, str]:
    head, code = commit.git_head, commit.code or commit.git_head
    if not head:
        raise UsageError(
            f"no code was recorded with env commit {commit.short}",
            hint="code is recorded with runs in a git repository; move without --with-code",
        )
    if not gitrepo.has_commit(root, code):
        raise UsageError(
            f"the code of {commit.short} ({short(code)}) is not in the repository at {root}",
            hint=f"it was recorded in {commit.workspace or 'another repository'}",
        )
    return head, code


def _bring(
    ctx: Context, root: Path, commit: Commit, branch: str | None, moved: str | None
) -> CodeResult:
    """Put ``commit``'s code in ``root`` (clean) or in a new worktree bound to ``branch``."""
    head, code = _recorded(ctx, root, commit)
    # Clean, no merge/rebase/bisect under way, and no ignored file in the way: in place.
    clean = not gitrepo.dirty_paths(root) and not gitrepo.operation_in_progress(root)
    if clean and gitrepo.restore_code(root, head, code):
        restored = tuple(gitrepo.dirty_paths(root)) if code != head else ()
        return CodeResult(moved, commit.id, head, code, str(root), False, restored)
    if branch is None:
        branch = _at_branch(ctx, commit)
    target = _free_path(root, commit)
    return _worktree(ctx, root, target, commit, branch, head, code, moved)


def _at_branch(ctx: Context, commit: Commit) -> str:
    """The env branch for a detached checkout's worktree: ``at-<id>``, reused while it is
    still at the commit (a retry after a crash, or a second --with-code), else numbered."""
    branches = ctx.refs().branches
    name, n = f"at-{commit.short}", 1
    while branches.get(name, commit.id) != commit.id:
        n += 1
        name = f"at-{commit.short}-{n}"
    if name not in branches:
        history.create_branch(ctx, name, commit.id)
    return name


def _free_path(root: Path, commit: Commit) -> Path:
    base = root.parent / f"{root.name}-at-{commit.short}"
    target, n = base, 1
    while os.path.lexists(target):
        n += 1
        target = Path(f"{base}-{n}")
    return target


def _worktree(
    ctx: Context,
    root: Path,
    target: Path,
    commit: Commit,
    branch: str,
    head: str,
    code: str,
    moved: str | None,
) -> CodeResult:
    # From the checkout itself: the common dir's parent is no checkout for a submodule, a
    # `--separate-git-dir` repository or a bare one with worktrees.
    gitrepo.add_code_worktree(root, target, head, code)
    with ctx.store.transaction(f"worktree: bind {target}") as txn:
        txn.bind_worktree(str(target), branch)
    restored = tuple(gitrepo.dirty_paths(target)) if code != head else ()
    return CodeResult(moved, commit.id, head, code, str(target), True, restored)


def checkout(ctx: Context, cwd: Path, rev: str) -> CodeResult:
    """`pienv checkout --with-code REV`: switch the env (branch or detached), then the code."""
    root = _repo_root(cwd)
    cid = ctx.resolve(rev)
    _recorded(ctx, root, ctx.commit(cid))  # refuse before anything moves
    done = history.checkout(ctx, rev, False, None)
    return _bring(ctx, root, ctx.commit(done.commit), done.branch, done.branch)


def reset(ctx: Context, cwd: Path, rev: str) -> CodeResult:
    """`pienv reset --with-code REV`: move the current env branch, then the code."""
    root = _repo_root(cwd)
    cid = ctx.resolve(rev)
    _recorded(ctx, root, ctx.commit(cid))
    done = history.reset(ctx, rev, f"reset: moving to {rev} (with code)")
    return _bring(ctx, root, ctx.commit(done.new), done.branch, done.branch)


def worktree_at(ctx: Context, cwd: Path, rev: str, path: Path, branch: str | None) -> CodeResult:
    """`pienv worktree add --at REV PATH`: a new env branch at REV and a new linked worktree
    holding REV's code, bound together."""
    root = _repo_root(cwd)
    target = Path(os.path.realpath(path.expanduser()))
    if target.exists():
        raise UsageError(f"{target} already exists")
    name = branch or target.name
    check_ref_name(name)
    if name in ctx.refs().branches:
        raise UsageError(f"env branch {name!r} already exists", hint="name another with -b")
    commit = ctx.commit(ctx.resolve(rev))
    head, code = _recorded(ctx, root, commit)
    history.create_branch(ctx, name, commit.id)
    try:
        return _worktree(ctx, root, target, commit, name, head, code, name)
    except BaseException:
        history.delete_branch(ctx, name, True)
        raise
