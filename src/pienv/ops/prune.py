"""prune: drop the commits no branch, tag or unexpired reflog entry reaches."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pienv import dag, locks
from pienv.context import Context
from pienv.engine import Engine, ImageRow
from pienv.errors import UsageError
from pienv.model import LABEL, Commit, JsonResult, parse_age, parse_time, short
from pienv.runloop import keeper
from pienv.store import ReflogEntry, Refs
from pienv.tracking import tracked_commits

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class KeptInUse:
    commit: str
    why: str


@dataclass
class PruneResult(JsonResult):
    removed: list[str] = field(default_factory=list)
    kept_in_use: list[KeptInUse] = field(default_factory=list)
    bytes_freed: int = 0
    reflog_expired: int = 0


def _first_parent_chain(commits: dict[str, Commit], head: str, n: int) -> list[str]:
    out: list[str] = []
    cid: str | None = head
    while cid and cid in commits and len(out) < n:
        out.append(cid)
        parents = commits[cid].parents
        cid = parents[0] if parents else None
    return out


def prune(
    ctx: Context,
    keep: int | None,
    older_than: str | None,
    dry_run: bool,
) -> PruneResult:
    """Drop commits no branch, tag or unexpired reflog entry reaches; report bytes freed.

    ``keep``: only the newest N first-parent commits of each branch stay protected (older
    ones stop being reachable: their reflog entries expire, and their images go unless a kept
    image still builds on their layers, in which case they are only dropped from the index).
    """
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1")
    cutoff = None
    if older_than:
        cutoff = datetime.now(UTC).timestamp() - parse_age(older_than)
    result = PruneResult()
    engine = ctx.engine()
    with ctx.store.locked():
        refs = ctx.refs()
        keeper.sync(ctx, refs)  # a keeper of a deleted branch's head would keep it in use
        commits = dict(ctx.store.fresh_commits())
        # Commits the engine holds but the index does not: a run still finishing (indexed in
        # the transaction that moves its branch), or leftovers of an interrupted commit.
        rows = engine.images([f"{LABEL}store={refs.store_id}", f"{LABEL}role=commit"])
        labelled = {row.id: row for row in rows + fetched(engine, refs.store_id, rows)}
        strays = {
            cid: Commit.from_labels(cid, dict(row.labels))
            for cid, row in labelled.items()
            if cid not in commits
        }
        known = {**strays, **commits}
        g = dag.build(known)
        protected = _protected(ctx, refs, known, g, keep)
        kept_entries = _expire(ctx.store.reflog(), protected, g, keep, cutoff, result)
        victims = [c for c in dag.log_order(known, list(known)) if c not in protected]
        _remove(ctx, victims, known, labelled, refs.base, dry_run, result)
        # As `git reflog expire`: no entry may point at what was removed (undo onto it would
        # move a branch onto a missing image).
        removed = set(result.removed)
        result.reflog_expired += sum(1 for e in kept_entries if e.new in removed)
        kept_entries = [e for e in kept_entries if e.new not in removed]
        gone = [commits.pop(cid) for cid in result.removed if cid in commits]
        if not dry_run:
            _release_code(ctx, gone, commits)
            ctx.store.rewrite_index(list(commits.values()))
            if result.reflog_expired:
                ctx.store.rewrite_reflog(kept_entries)
    if not dry_run and (ctx.store.home / "egress").is_dir():
        # The store's egress proxy, its network and volume go when no run is using them (the
        # next run with a policy starts them again, in about a second).
        from pienv import egressnet
        from pienv.runloop.egressrun import slots_dir

        egressnet.remove(engine, refs.store_id, slots_dir(ctx))
    return result


def _protected(
    ctx: Context, refs: Refs, known: dict[str, Commit], g: nx.DiGraph, keep: int | None
) -> set[str]:
    """What the branches (their newest ``keep`` commits), tags, a detached HEAD and runs in
    flight reach."""
    protected: set[str] = set()
    busy = {
        name
        for name in locks.lock_names(ctx.store.locks_dir)
        if locks.is_locked(ctx.store.locks_dir, name)
    }
    for name, head in refs.branches.items():
        if keep is None or name in busy:
            protected |= dag.ancestors(g, head)
        else:
            protected |= set(_first_parent_chain(known, head, keep))
    protected |= dag.reachable(g, refs.tags.values())
    protected |= dag.reachable(g, tracked_commits(ctx.store))  # origin/main and the like
    if refs.head_detached:
        protected |= dag.reachable(g, [refs.head_detached])
    protected |= _in_flight(ctx, known, busy)
    return protected


def _expire(
    entries: list[ReflogEntry],
    protected: set[str],
    g: nx.DiGraph,
    keep: int | None,
    cutoff: float | None,
    result: PruneResult,
) -> list[ReflogEntry]:
    """The reflog entries that stay; what the kept ones reach joins ``protected``."""
    kept_entries = []
    for e in entries:
        expired = cutoff is not None and parse_time(e.time).timestamp() < cutoff
        if keep is not None and e.new not in protected and e.old not in protected:
            expired = True
        if expired:
            result.reflog_expired += 1
            continue
        kept_entries.append(e)
        if keep is None:
            protected |= dag.reachable(g, [v for v in (e.old, e.new) if v])
    return kept_entries


def _release_code(ctx: Context, gone: list[Commit], kept: dict[str, Commit]) -> None:
    """Delete the `refs/pienv/code/` refs of the code snapshots only removed commits recorded,
    so git can collect them (docs/time-travel.md)."""
    from pienv import gitrepo

    still = {c.code for c in kept.values()}
    released = 0
    for c in gone:
        if c.code and c.code != c.git_head and c.code not in still and c.workspace:
            released += gitrepo.drop_code_ref(Path(c.workspace), c.code)
            still.add(c.code)
    if released:
        ctx.report.note(f"released {released} code snapshot(s) (refs/pienv/code/) in workspaces")


def _remove(
    ctx: Context,
    victims: list[str],
    known: dict[str, Commit],
    labelled: dict[str, ImageRow],
    base: str | None,
    dry_run: bool,
    result: PruneResult,
) -> None:
    """Untag and remove ``victims`` (children before parents, so parents become free)."""
    engine = ctx.engine()
    in_use = _images_in_use(ctx)
    repo = ctx.repository()
    builds_on = _children(known)
    gone: set[str] = set()
    for n, cid in enumerate(victims):
        ctx.report.progress("commits", n, len(victims))
        if cid in in_use:
            result.kept_in_use.append(KeptInUse(cid, f"used by container {in_use[cid][:12]}"))
            continue
        result.removed.append(cid)
        freed = _own_bytes(ctx, known, labelled, cid, base)
        if dry_run:
            # What the engine will do: on Docker an image a kept commit still builds on is
            # only untagged, its layer stays (children come first, so theirs are decided);
            # Podman removes it all the same.
            if engine.removes_built_on or all(child in gone for child in builds_on.get(cid, ())):
                gone.add(cid)
                result.bytes_freed += freed
            continue
        engine.untag(f"{repo}:{short(cid)}")
        # False: a kept commit still builds on this image's layers (only untagged).
        if engine.remove_image(cid):
            result.bytes_freed += freed
        ctx.store.forget_commit_files(cid)


def _children(known: dict[str, Commit]) -> dict[str, list[str]]:
    """parent -> the commits built on its layers (a flatten is a fresh import: it is not)."""
    out: dict[str, list[str]] = {}
    for c in known.values():
        if c.parents and c.kind != "flatten" and not c.flattened_from:
            out.setdefault(c.parents[0], []).append(c.id)
    return out


def fetched(engine: Engine, store_id: str, labelled: list[ImageRow]) -> list[ImageRow]:
    """Commits fetched from a remote: made by another store (its label), tagged for this one."""
    seen = {row.id for row in labelled}
    return [
        row
        for row in engine.images_in(f"pienv/{store_id}")
        if row.id not in seen and row.labels.get(f"{LABEL}role") == "commit"
    ]


def _in_flight(ctx: Context, known: dict[str, Commit], busy: set[str]) -> set[str]:
    """Commits a run still finishing (or a crashed one's recovery) needs: those made from a
    run container that still exists, and every commit made since the oldest live lock was
    taken (its holder may not have moved its ref yet)."""
    rows = ctx.engine().containers([f"{LABEL}store={ctx.store_id}", f"{LABEL}role=run"])
    containers = {row.id for row in rows}
    out = {cid for cid, c in known.items() if c.container and c.container in containers}
    since = []
    for name in busy:
        holder = locks.read_holder(ctx.store.locks_dir, name)
        since.append(holder.since if holder else "")
    if since:
        oldest = min(since)  # "" (a holder that wrote no record yet): everything is in flight
        out |= {cid for cid, c in known.items() if not oldest or c.created >= oldest}
    return out


def _own_bytes(
    ctx: Context,
    known: dict[str, Commit],
    labelled: dict[str, ImageRow],
    cid: str,
    base: str | None,
) -> int:
    """Bytes removing ``cid`` frees: its layer over its parent; for a commit without a parent
    (root, reset), what it holds beyond the base image, which stays."""
    c = known[cid]
    if c.parents:
        if cid in labelled and c.size == 0 and c.parents[0] in labelled:
            return max(labelled[cid].size - labelled[c.parents[0]].size, 0)
        return c.size
    info = ctx.engine().inspect_image(cid)
    if info is None:
        return 0
    base_info = ctx.engine().inspect_image(base) if base else None
    if base_info is not None and info.layers[: len(base_info.layers)] == base_info.layers:
        return max(info.size - base_info.size, 0)
    return c.size


def _images_in_use(ctx: Context) -> dict[str, str]:
    out = {}
    for row in ctx.engine().containers([]):
        out[row.image_id] = row.id
    return out
