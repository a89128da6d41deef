"""Finishing a run: commit its container onto its branch (compare-and-swap), or drop it.

Shared by `pienv run`, the forked finalizer and `pienv recover`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pienv import gitrepo
from pienv.errors import ConcurrentUpdate, EngineError, PienvError
from pienv.locks import name_of
from pienv.model import Commit, RunInfo
from pienv.ops.commits import commit_container, mount_filter
from pienv.ops.context import Context


@dataclass
class RunResult:
    exit_code: int
    branch: str | None  # None: a detached HEAD
    rule: str
    parent: str
    commit: Commit | None = None
    changes: int = 0
    notes: list[str] = field(default_factory=list)


def finalize(
    ctx: Context,
    cid: str,
    info: RunInfo,
    exit_code: int | None,
    no_commit: bool,
    mounts: list[str] | None = None,
) -> RunResult:
    """Commit a finished run container onto its branch, or drop it when nothing changed.

    Shared by `run`, the finalizer and `recover`. The branch moves by compare-and-swap from the
    run's parent; if it moved meanwhile the commit goes to a new ``recovered/<id>`` branch.
    A failed commit keeps the container (and says how to recover it).
    """
    engine = ctx.engine()
    # Recovery paths (the finalizer, `recover`) pass no exit code. Only there can the container
    # already be committed (its pienv died between commit and remove); a live run just made it,
    # so it skips reading the whole commit index (~12 ms at 1,000 commits).
    recovering = exit_code is None
    if exit_code is None or mounts is None:
        # Read what the finished run no longer knows from the container.
        state = engine.inspect_container(cid)
        if state is None:
            raise EngineError(f"container {cid[:12]} is gone")
        if exit_code is None:
            exit_code = state.exit_code
        if mounts is None:
            mounts = list(state.mounts)
    result = RunResult(exit_code=exit_code, branch=info.branch, rule="", parent=info.parent)
    made = [c for c in ctx.store.commits().values() if c.container == cid] if recovering else []
    if made:
        engine.remove_container(cid, force=True)
        result.commit = made[0]
        result.notes.append(f"container {cid[:12]} was already committed as {made[0].short}")
        return result
    changes = mount_filter(engine.diff(cid), mounts)
    result.changes = len(changes)
    if no_commit or not changes:
        engine.remove_container(cid, force=True)
        return result
    parent_image = engine.inspect_image(info.parent)
    cmd = " ".join(info.command) or "agent"
    # The -m message (or `shell`) names the commit and its reflog entry alike.
    summary = info.message or f"run: {cmd} (exit {exit_code})"
    draft = Commit.draft(
        info.branch,
        summary,
        "run",
        parents=(info.parent,),
        command=info.command,
        exit_code=exit_code,
        workspace=info.workspace,
        # The checkout the environment ended up paired with (the agent may commit meanwhile).
        git_head=gitrepo.head_commit(Path(info.workspace)) if info.workspace else "",
        changes=len(changes),
        run_host=info.host,
        run_pid=info.pid,
        run_started=info.started,
    )
    try:
        commit = commit_container(ctx, cid, draft, parent_image, changes)
    except PienvError as exc:
        raise EngineError(
            f"commit failed, the container {cid[:12]} is kept and the branch did not move: {exc}",
            hint=f"free space or fix the engine, then `pienv recover {cid[:12]}`",
        ) from exc
    result.commit = commit
    try:
        with ctx.store.transaction(f"run: {summary.removeprefix('run: ')}") as txn:
            txn.move_head(info.branch, info.parent, commit.id)
    except ConcurrentUpdate:
        name = f"recovered/{commit.short}"
        with ctx.store.transaction(f"recover: {name_of(info.branch)} had moved") as txn:
            txn.move_branch(name, None, commit.id)
        result.branch = name
        result.notes.append(
            f"{name_of(info.branch)!r} moved during the run; the commit is on branch {name!r}"
        )
    engine.remove_container(cid, force=True)
    return result
