"""fsck: check refs, tags, reflog and index against the engine; --repair rebuilds them."""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pienv import dag
from pienv.context import Context
from pienv.errors import StoreError
from pienv.locks import DETACHED
from pienv.model import LABEL, Commit, JsonResult, now_rfc3339, short
from pienv.ops.integrity import commit_tag, survey
from pienv.ops.prune import fetched
from pienv.runloop import keeper
from pienv.store import CHECKOUT, WORKTREE_BIND, WORKTREE_UNBIND, ReflogEntry, Refs


@dataclass
class FsckResult(JsonResult):
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    unrestorable: list[str] = field(default_factory=list)


def _store_id(ctx: Context) -> str:
    try:
        return ctx.store_id
    except StoreError:
        pass
    # Any commit the index or the reflog names says, by its image's label, which store it
    # belongs to (with refs.json and the index both gone the reflog still knows them).
    known = [*ctx.store.commits(), *(e.new for e in reversed(ctx.store.reflog()) if e.new)]
    for cid in dict.fromkeys(known):
        info = ctx.engine().inspect_image(cid)
        if info and info.labels.get(LABEL + "store"):
            return str(info.labels[LABEL + "store"])
    raise StoreError(
        f"cannot tell which store {ctx.store.home} was: refs.json and the commit index are "
        "gone, and no commit the reflog names is left on the engine"
    )


@dataclass
class _Seen:
    """What the check read: the refs (None: refs.json unreadable), the commits the engine
    holds, and those whose run is still finishing."""

    refs: Refs | None
    store_id: str
    on_engine: dict[str, Commit]
    in_flight: set[str]
    untagged: set[str] = field(default_factory=set)


def fsck(ctx: Context, repair: bool, allow_loss: bool = False) -> FsckResult:
    """Check refs, tags, reflog and index against the engine.

    ``repair``: drop torn lines, rebuild the index from image labels, and restore refs.json
    from the reflog (labels only for what the reflog no longer knows), saving the old files
    next to the new ones first. A ref whose commits are all gone is dropped only with
    ``allow_loss``; without it the repair keeps it and says so.
    """
    r = FsckResult()
    # Everything read from the engine is read under the store lock, as is what the repair
    # writes: a run that commits meanwhile waits for the lock to move its branch, so its
    # commit is never taken for a lost one (and its branch never moved back).
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ctx.store.locked())
        except StoreError:
            if repair:
                raise
            # A read-only store (nothing can write it, so nothing races the check): check it.
        seen = _check(ctx, r)
        if repair and r.problems:
            _repair(ctx, seen, allow_loss, r)
            r.fixed.append(f"wrote {ctx.store.refs_path}")
        if repair:
            keeper.sync(ctx)  # also the keepers `docker system prune` removed (`pienv doctor`)
    return r


def _check(ctx: Context, r: FsckResult) -> _Seen:
    engine = ctx.engine()
    try:
        refs: Refs | None = ctx.refs()
    except StoreError as exc:
        r.problems.append(exc.message)
        refs = None
    store_id = refs.store_id if refs else _store_id(ctx)
    for path, line in ctx.store.torn_lines():
        r.problems.append(f"{path.name} line {line} is torn (a crash or full disk mid-append)")
    images = engine.images([f"{LABEL}store={store_id}", f"{LABEL}role=commit"])
    images += fetched(engine, store_id, images)
    running = {row.id for row in engine.containers([f"{LABEL}store={store_id}"])}
    index = ctx.store.fresh_commits()
    entries = ctx.store.reflog()
    wanted = {*index, *(e.new for e in entries if e.new)}
    if refs:
        wanted |= {*refs.branches.values(), *refs.tags.values()}
    found = survey(engine, store_id, images, wanted)
    seen = _Seen(refs, store_id, found.present, set(), found.untagged)
    for c in found.present.values():
        if c.container and c.container in running:
            seen.in_flight.add(c.id)  # its run (or its recovery) has not indexed it yet
    on_engine = seen.on_engine
    # An untagged image in flight is a commit its run (or install) has made and not yet
    # tagged: its container still exists, so nothing lost its tag.
    for cid in sorted(found.untagged - seen.in_flight):
        r.problems.append(
            f"commit {short(cid)} lost its tag {commit_tag(store_id, cid)} (`docker rmi` or "
            "`docker tag` over it?); plain `docker image prune` could delete it"
        )
    for cid in index:
        if cid not in on_engine:
            r.problems.append(f"indexed commit {short(cid)} has no image")
    for cid in on_engine:
        if cid not in index and cid not in seen.in_flight:
            r.problems.append(f"image {short(cid)} is missing from the commit index")
    if refs:
        _check_refs(ctx, refs, on_engine, r)
    return seen


def _check_refs(ctx: Context, refs: Refs, on_engine: dict[str, Commit], r: FsckResult) -> None:
    for name, cid in sorted(refs.branches.items()):
        if cid not in on_engine:
            r.problems.append(f"branch {name} -> {short(cid)}: no such image")
    for name, cid in sorted(refs.tags.items()):
        if cid not in on_engine:
            r.problems.append(f"tag {name} -> {short(cid)}: no such image")
    pending = ctx.store.pending_rename()
    if pending is not None:
        r.problems.append(
            f"`branch -m {pending[0]} {pending[1]}` was killed after renaming the reflog "
            "and before refs.json (the next write, or fsck --repair, completes it)"
        )
    gone = {e.new for e in ctx.store.reflog() if e.new and e.new not in on_engine}
    for cid in sorted(gone):
        r.problems.append(f"reflog entry -> {short(cid)}: no such image (pruned?)")


def _repair(ctx: Context, seen: _Seen, allow_loss: bool, r: FsckResult) -> None:
    """Under the store lock: save the old files, drop torn lines, rebuild index and refs."""
    saved = _save_store_files(ctx)
    if saved:
        r.fixed.append(f"saved the old files as {', '.join(saved)}")
    for path, line in ctx.store.drop_torn_lines():
        r.fixed.append(f"dropped torn line {line} of {path.name}")
    if seen.refs is not None and ctx.store.pending_rename() is not None:
        with ctx.store.transaction("fsck: completed a killed rename"):
            pass  # the transaction completes it (Store._pending_rename)
        r.fixed.append("completed the killed branch rename")
    _rebuild_index(ctx, seen, r)
    entries = ctx.store.reflog()
    if seen.refs is None:
        new_refs = _replay_reflog(entries, seen.store_id)
        for name, cid in sorted(new_refs.branches.items()):
            r.fixed.append(f"branch {name} -> {short(cid)} (from the reflog)")
        for name, cid in sorted(new_refs.tags.items()):
            r.fixed.append(f"tag {name} -> {short(cid)} (from the reflog)")
        r.fixed.append(
            f"restored {len(new_refs.branches)} branch(es), {len(new_refs.tags)} tag(s), "
            f"HEAD and {len(new_refs.worktrees)} worktree binding(s) from the reflog"
        )
        before = 0
    else:
        # Re-read under the lock: a run that finished since the check above moved its
        # branch, and writing the check's snapshot back would undo that move.
        new_refs = ctx.store.load_refs()
        before = len(new_refs.branches)
    log = _repair_refs(new_refs, entries, seen.on_engine, seen.in_flight, allow_loss, r)
    if len(new_refs.branches) < before and not allow_loss:
        raise StoreError(  # _repair_refs keeps them; this is the last line of defence
            "fsck --repair would drop branches; nothing written",
            hint="`pienv fsck --repair --allow-loss` drops them",
        )
    engine = ctx.engine()
    repo = f"pienv/{seen.store_id}"
    for cid in seen.on_engine:
        engine.tag(cid, repo, short(cid))
    for cid in sorted(seen.untagged):
        r.fixed.append(f"tagged {short(cid)} again as {commit_tag(seen.store_id, cid)}")
    ctx.store.write_refs_unchecked(new_refs, log)


def _rebuild_index(ctx: Context, seen: _Seen, r: FsckResult) -> None:
    """The index from what the engine holds: indexed rows kept, the rest from labels."""
    engine = ctx.engine()
    index = ctx.store.fresh_commits()  # re-read under the lock: nothing indexed is lost
    rebuilt = []
    for cid, c in seen.on_engine.items():
        old = index.get(cid)
        if old is not None:
            rebuilt.append(old)
            continue
        if cid in seen.in_flight:
            continue  # its run indexes it when it moves its branch
        info = engine.inspect_image(cid)
        parent = engine.inspect_image(c.parents[0]) if c.parents else None
        size = (info.size if info else 0) - (parent.size if parent else 0)
        rebuilt.append(replace(c, size=max(size, 0), layers=info.depth if info else 0))
        r.fixed.append(f"indexed {short(cid)} from its labels")
    for cid in index:
        if cid not in seen.on_engine:
            r.fixed.append(f"dropped {short(cid)} from the index (image gone)")
    ctx.store.rewrite_index(rebuilt)


def _save_store_files(ctx: Context) -> list[str]:
    """Copy refs.json, the reflog and the index aside before a repair rewrites them."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    saved = []
    for path in (ctx.store.refs_path, ctx.store.reflog_path, ctx.store.index_path):
        copy = path.with_name(f"{path.name}.before-fsck-{stamp}")
        try:
            if path.is_dir():  # a directory in its place: moved aside, the file rewritten
                path.rename(copy)
            elif path.exists():
                shutil.copy2(path, copy)
            else:
                continue
        except OSError as exc:
            raise StoreError(f"cannot save {path} before repairing it: {exc.strerror}") from exc
        saved.append(copy.name)
    return saved


def _replay_reflog(entries: list[ReflogEntry], store_id: str) -> Refs:
    """refs.json as the reflog last knew it: branches, tags, HEAD, worktree bindings, base."""
    refs = Refs(store_id=store_id)
    for e in entries:
        if e.ref == DETACHED:
            target = e.what.removeprefix(CHECKOUT) if e.what.startswith(CHECKOUT) else None
            if target is not None and not (e.new and e.new.startswith(target)):
                refs.head_branch, refs.head_detached = target, None
            else:
                refs.head_branch, refs.head_detached = None, e.new
            continue
        if e.ref.startswith("tags/"):
            name = e.ref.removeprefix("tags/")
            if e.new:
                refs.tags[name] = e.new
            else:
                refs.tags.pop(name, None)
            continue
        if e.what.startswith(WORKTREE_BIND):
            refs.worktrees[e.what.removeprefix(WORKTREE_BIND)] = e.ref
        elif e.what.startswith(WORKTREE_UNBIND):
            refs.worktrees.pop(e.what.removeprefix(WORKTREE_UNBIND), None)
        elif e.what.startswith(RENAMED):
            old = e.what.removeprefix(RENAMED).rsplit(" to ", 1)[0]
            if refs.head_branch == old:
                refs.head_branch = e.ref
        base = _BASE_IN_WHAT.search(e.what)
        if base:
            refs.base = base.group(1)
        if e.new:
            refs.branches[e.ref] = e.new
        else:
            refs.branches.pop(e.ref, None)
    return refs


def _repair_refs(
    refs: Refs,
    entries: list[ReflogEntry],
    on_engine: dict[str, Commit],
    in_flight: set[str],
    allow_loss: bool,
    r: FsckResult,
) -> list[ReflogEntry]:
    """Point refs whose image is gone at their last surviving reflog value; give commits the
    reflog does not reach a branch from their labels. Returns the reflog entries to add."""
    log: list[ReflogEntry] = []

    def last_alive(ref: str) -> str | None:
        for e in reversed(entries):
            if e.ref == ref and e.new in on_engine:
                return e.new
        return None

    for kind, table, prefix in (("branch", refs.branches, ""), ("tag", refs.tags, "tags/")):
        for name, cid in sorted(table.items()):
            if cid in on_engine:
                continue
            alive = last_alive(prefix + name)
            if alive:
                table[name] = alive
                log.append(ReflogEntry(prefix + name, cid, alive, now_rfc3339(), "fsck", FSCK))
                r.fixed.append(f"{kind} {name} -> {short(alive)} (its last commit still there)")
            elif allow_loss:
                del table[name]
                log.append(ReflogEntry(prefix + name, cid, None, now_rfc3339(), "fsck", FSCK))
                r.unrestorable.append(f"{kind} {name}: no commit of it is left; dropped")
            else:
                r.unrestorable.append(
                    f"{kind} {name}: no commit of it is left; kept as is "
                    "(`pienv fsck --repair --allow-loss` drops it)"
                )
    # What the reflog no longer knows (expired, or lost with refs.json): label branches.
    g = dag.build(on_engine)
    roots = [*refs.branches.values(), *refs.tags.values(), *in_flight]
    roots += [v for e in entries for v in (e.old, e.new) if v]
    if refs.head_detached:
        roots.append(refs.head_detached)
    known = dag.reachable(g, [c for c in roots if c in on_engine])
    heads: dict[str, Commit] = {}
    for c in sorted(on_engine.values(), key=lambda c: c.created):
        if c.id not in known:
            heads[c.branch or "recovered"] = c  # the newest of each labelled branch
    for label, c in sorted(heads.items()):
        name = label if label not in refs.branches else f"recovered/{c.short}"
        refs.branches[name] = c.id
        log.append(ReflogEntry(name, None, c.id, now_rfc3339(), "fsck", FSCK + " from labels"))
        r.fixed.append(f"branch {name} -> {c.short} (newest commit labelled {label!r})")
    if refs.head_branch and refs.branches and refs.head_branch not in refs.branches:
        r.unrestorable.append(f"HEAD names branch {refs.head_branch!r}, which has no commit")
    return log


FSCK = "fsck: restored"
RENAMED = "branch: renamed "
_BASE_IN_WHAT = re.compile(r"(?:^root: base|: base|bare base) (\S+)")
