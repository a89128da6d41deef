"""Finishing a run: commit its container onto its branch (compare-and-swap), or drop it.

Shared by `pienv run`, the forked finalizer and `pienv recover`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pienv import gitrepo
from pienv.context import Context
from pienv.errors import ConcurrentUpdate, EngineError, PienvError, StoreError
from pienv.locks import DETACHED, name_of
from pienv.model import LABEL, Commit, RunInfo
from pienv.runloop import keeper
from pienv.runloop.commits import (
    adds_layer,
    captures_anything,
    commit_container,
    finish,
    host_ids,
)
from pienv.store import ReflogEntry, Transaction


@dataclass
class RunResult:
    exit_code: int
    branch: str | None  # None: a detached HEAD
    rule: str
    parent: str
    commit: Commit | None = None
    discarded: bool = False  # --no-commit threw changes away
    pending: bool = False  # handed to the finalizer: committed in the background
    notes: list[str] = field(default_factory=list)


def finalize(
    ctx: Context,
    cid: str,
    info: RunInfo,
    exit_code: int | None,
    no_commit: bool,
) -> RunResult:
    """Commit a finished run container onto its branch, or drop it when nothing changed
    (decided by the commit itself, never by `docker diff`: see commits.commit_container).

    Shared by `run`, the finalizer and `recover`. The protocol (docs/architecture.md, "Store
    writes"): commit and tag the image (labelled with the container's id), then one store
    transaction indexes it, logs and moves the branch by compare-and-swap from the run's parent
    (or creates ``recovered/<id>`` when the branch moved meanwhile); the container goes last.
    A crash anywhere leaves the container, so recovery finds it and completes what is missing.
    A failed commit keeps the container (and says how to recover it).
    """
    engine = ctx.engine()
    # Recovery paths (the finalizer, `recover`) pass no exit code. Only there can an earlier
    # attempt have got part of the way; a live run skips reading the whole commit index and
    # reflog (~12 ms at 1,000 commits).
    recovering = exit_code is None
    if exit_code is None:
        # Read what the finished run no longer knows from the container.
        state = engine.inspect_container(cid)
        if state is None:
            raise EngineError(f"container {cid[:12]} is gone")
        exit_code = state.exit_code
    result = RunResult(exit_code=exit_code, branch=info.branch, rule="", parent=info.parent)
    cmd = " ".join(info.command) or "agent"
    # The -m message (or `shell`) names the commit and its reflog entry alike.
    summary = info.message or f"run: {cmd} (exit {exit_code})"
    what = f"run: {summary.removeprefix('run: ')}"
    if recovering:
        made = _made_from(ctx, cid)
        if made is not None:
            result.commit = made
            result.branch = _settle(ctx, cid, made, None, info, what, True, result.notes)
            result.notes.append(f"container {cid[:12]} was already committed as {made.short}")
            engine.remove_container(cid, force=True)
            return result
    parent_image = engine.inspect_image(info.parent)
    if no_commit:
        result.discarded = captures_anything(engine, cid, parent_image)
        engine.remove_container(cid, force=True)
        return result
    if info.egress_audit:
        _keep_audit(ctx, info, result.notes)
    draft = _draft(info, exit_code, summary)
    try:
        commit = commit_container(ctx, cid, draft, parent_image, index=False)
    except PienvError as exc:
        raise EngineError(
            f"commit failed, the container {cid[:12]} is kept and the branch did not move: {exc}",
            hint=f"free space or fix the engine, then `pienv recover {cid[:12]}`",
        ) from exc
    if commit is None:  # the commit captured nothing: no layer, no image
        engine.remove_container(cid, force=True)
        return result
    result.commit = commit
    result.branch = _settle(ctx, cid, commit, None, info, what, recovering, result.notes)
    engine.remove_container(cid, force=True)
    keeper.sync(ctx)  # the new head is kept from `docker image prune -a` (runloop/keeper.py)
    return result


def _keep_audit(ctx: Context, info: RunInfo, notes: list[str]) -> None:
    """The run's egress audit into the store, before its commit names it; what was refused
    is said (the agent saw the message, the user may not have)."""
    from pienv.runloop import egressrun

    try:
        attempts = egressrun.keep_audit(ctx, info.egress_audit, egressrun.proxy_of_store(ctx))
    except PienvError as exc:
        notes.append(f"the run's egress audit is lost: {exc}")
        return
    if said := egressrun.denied_note(attempts):
        notes.append(said)


def _draft(info: RunInfo, exit_code: int, summary: str) -> Commit:
    """The run's commit, before it is made."""
    # The code the environment ended up paired with (the agent may commit meanwhile): HEAD
    # and a snapshot of what is uncommitted (~0.07 s at 10k files; in the finalizer for a
    # background commit, so off the user's wait).
    git_head, code = (
        gitrepo.record_code(Path(info.workspace), f"pienv: code of run {summary[:60]}")
        if info.workspace
        else ("", "")
    )
    return Commit.draft(
        info.branch,
        summary,
        "run",
        parents=(info.parent,),
        command=info.command,
        exit_code=exit_code,
        workspace=info.workspace,
        git_head=git_head,
        code=code,
        user=host_ids(),
        run_host=info.host,
        run_pid=info.pid,
        run_started=info.started,
        egress=info.egress,
        egress_audit=info.egress_audit,
    )


def _made_from(ctx: Context, cid: str) -> Commit | None:
    """The commit an earlier attempt made of container ``cid``: indexed, or only labelled (its
    pienv died before indexing it, or the engine finished a commit whose answer was lost)."""
    with ctx.store.locked():
        indexed = [c for c in ctx.store.fresh_commits().values() if c.container == cid]
    if indexed:
        return indexed[0]
    engine = ctx.engine()
    labels = [f"{LABEL}store={ctx.store_id}", f"{LABEL}role=commit", f"{LABEL}container={cid}"]
    rows = engine.images(labels)
    made = sorted((Commit.from_labels(r.id, dict(r.labels)) for r in rows), key=lambda c: c.created)
    if not made:
        return None
    for row in rows:  # a retried commit: keep the first, drop the copies
        if row.id != made[0].id:
            for tag in row.tags:
                engine.untag(tag)
            engine.remove_image(row.id)
    keep = made[0]
    parent = engine.inspect_image(keep.parents[0]) if keep.parents else None
    info = engine.inspect_image(keep.id)
    if info is not None and not keep.flattened_from and not adds_layer(info, parent):
        # A no-op run killed before its empty commit image was removed: not a commit.
        for tag in info.tags:
            engine.untag(tag)
        engine.remove_image(keep.id)
        return None
    done = finish(ctx, engine, keep.id, keep, None, parent, index=False)
    return replace(done, container=cid)


def _settle(
    ctx: Context,
    cid: str,
    commit: Commit,
    changes: list[tuple[str, str]] | None,
    info: RunInfo,
    what: str,
    recovering: bool,
    notes: list[str],
) -> str | None:
    """Index ``commit`` and move its branch in one transaction; returns the branch it is on.

    Recovering, complete a half-done transaction instead of repeating it: index it if the
    index lacks it, and move nothing if the reflog already records its move (then a crash
    between the reflog and refs.json left refs.json behind: finish that write).
    """
    branch = info.branch
    try:
        with ctx.store.transaction(what) as txn:
            if recovering:
                if commit.id not in ctx.store.fresh_commits():
                    txn.add_commit(commit, changes)
                done, ref = _completed_move(ctx.store.reflog(), txn, commit.id)
                if done:
                    return ref
            else:
                txn.add_commit(commit, changes)
            try:
                txn.move_head(branch, info.parent, commit.id)
                return branch
            except ConcurrentUpdate:
                name = f"recovered/{commit.short}"
                txn.move_branch(name, None, commit.id, f"recover: {name_of(branch)} had moved")
                notes.append(
                    f"{name_of(branch)!r} moved during the run; the commit is on branch {name!r}"
                )
                return name
    except PienvError as exc:
        raise StoreError(
            f"{exc.message}; the run's commit {commit.short} is made and its container "
            f"{cid[:12]} kept, but {name_of(branch)!r} did not move",
            hint=f"fix that, then `pienv recover {cid[:12]}` finishes the job",
        ) from exc


def _completed_move(
    entries: list[ReflogEntry], txn: Transaction, cid: str
) -> tuple[bool, str | None]:
    """(True, ref) when an earlier attempt already moved a ref to ``cid`` (ref None: the
    detached HEAD); (False, None) when no ref move of it happened yet."""
    refs = txn.refs
    for name, value in refs.branches.items():
        if value == cid:
            return True, name
    if refs.head_branch is None and refs.head_detached == cid:
        return True, None
    hits = [i for i, e in enumerate(entries) if e.new == cid and not e.ref.startswith("tags/")]
    if not hits:
        return False, None
    entry = entries[hits[-1]]
    moved_since = any(e.ref == entry.ref for e in entries[hits[-1] + 1 :])
    current = refs.head_detached if entry.ref == DETACHED else refs.branches.get(entry.ref)
    if not moved_since and current == entry.old:
        txn.complete_move(entry.ref, cid)  # logged, then killed before refs.json was written
    return True, None if entry.ref == DETACHED else entry.ref
