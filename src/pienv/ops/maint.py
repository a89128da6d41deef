"""Maintenance: prune, flatten, reset --system/--all, doctor, fsck."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from pienv import dag, locks
from pienv.engine import MAX_DEPTH, Engine, ImageRow
from pienv.errors import PienvError, StoreError, UsageError
from pienv.locks import DETACHED, name_of
from pienv.model import LABEL, Commit, JsonResult, now_rfc3339, parse_age, parse_time, short
from pienv.ops import baseimage as basemod
from pienv.ops.commits import flatten_image, make_root
from pienv.ops.context import Context
from pienv.ops.sandbox import AGENT_HOME
from pienv.ops.tracking import tracked_commits
from pienv.store import CHECKOUT, WORKTREE_BIND, WORKTREE_UNBIND, ReflogEntry, Refs

# -- prune ------------------------------------------------------------------------------------


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
        commits = dict(ctx.store.fresh_commits())
        # Commits the engine holds but the index does not: a run still finishing (indexed in
        # the transaction that moves its branch), or leftovers of an interrupted commit.
        rows = engine.images([f"{LABEL}store={refs.store_id}", f"{LABEL}role=commit"])
        labelled = {row.id: row for row in rows + _fetched(engine, refs.store_id, rows)}
        strays = {
            cid: Commit.from_labels(cid, dict(row.labels))
            for cid, row in labelled.items()
            if cid not in commits
        }
        known = {**strays, **commits}
        g = dag.build(known)
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
        entries = ctx.store.reflog()
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
        victims = [c for c in dag.log_order(known, list(known)) if c not in protected]
        in_use = _images_in_use(ctx)
        repo = ctx.repository()
        for n, cid in enumerate(victims):  # children before parents, so parents become free
            ctx.report.progress("commits", n, len(victims))
            if cid in in_use:
                result.kept_in_use.append(KeptInUse(cid, f"used by container {in_use[cid][:12]}"))
                continue
            result.removed.append(cid)
            freed = _own_bytes(ctx, known, labelled, cid, refs.base)
            if dry_run:
                result.bytes_freed += freed
                continue
            engine.untag(f"{repo}:{short(cid)}")
            # False: a kept commit still builds on this image's layers (only untagged).
            if engine.remove_image(cid):
                result.bytes_freed += freed
            commits.pop(cid, None)
            ctx.store.forget_commit_files(cid)
        if not dry_run:
            ctx.store.rewrite_index(list(commits.values()))
            if result.reflog_expired:
                ctx.store.rewrite_reflog(kept_entries)
    return result


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


# -- flatten ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlattenResult:
    branch: str
    old: str
    new: str
    old_depth: int


def flatten(ctx: Context, branch: str | None) -> FlattenResult:
    refs = ctx.refs()
    name = branch or refs.head_branch
    if not name or name not in refs.branches:
        raise UsageError(f"unknown branch {name!r}" if name else "HEAD is detached: name a branch")
    lock, _ = locks.acquire(ctx.store.locks_dir, name, "(pienv flatten)")
    try:
        head = ctx.refs().branches[name]
        info = ctx.engine().inspect_image(head)
        old_depth = info.depth if info else 0
        flat = flatten_image(
            ctx, head, name, lambda done, total: ctx.report.progress("bytes", done, total)
        )
        with ctx.store.transaction(f"flatten: {old_depth} layers -> 1") as txn:
            txn.move_branch(name, head, flat.id)
    finally:
        lock.release()
    return FlattenResult(name, head, flat.id, old_depth)


# -- reset --system / --all -------------------------------------------------------------------


@dataclass(frozen=True)
class BaseResetResult:
    branch: str | None
    old: str | None
    new: str
    what: str


def reset_base(ctx: Context, keep_home: bool) -> BaseResetResult:
    """A fresh base on the current branch: with ``keep_home`` the agent's home comes along."""
    refs = ctx.refs()
    branch = refs.head_branch
    if refs.head_commit() is None:
        raise UsageError("nothing to reset: no commit yet")
    lock, _ = locks.acquire(ctx.store.locks_dir, name_of(branch), "(pienv reset)")
    try:
        # The head as of now: a finished run's background commit has landed (acquire waits
        # for it), and `--system` keeps the home of that commit.
        refs = ctx.refs()
        old = refs.branches.get(branch) if branch else refs.head_detached
        if old is None:
            raise UsageError("nothing to reset: no commit yet")
        base = basemod.ensure(ctx)
        if keep_home:
            new = _base_with_home(ctx, base.image, old, branch, AGENT_HOME)
            what = f"reset --system: base {base.image} + {AGENT_HOME} of {short(old)}"
        else:
            new = make_root(ctx, base.image, branch)
            what = f"reset --all: bare base {base.image}"
        with ctx.store.transaction(what) as txn:
            txn.move_head(branch, old, new.id)
            txn.refs.base = base.image
    finally:
        lock.release()
    return BaseResetResult(branch, old, new.id, what)


def _base_with_home(
    ctx: Context, base_image: str, old: str, branch: str | None, home: str
) -> Commit:
    engine = ctx.engine()
    src = engine.create_stopped(old)
    try:
        data = engine.read_archive(src, home) or b""  # no home in the old env: start clean
    finally:
        engine.remove_container(src, force=True)
    parent = os.path.dirname(home.rstrip("/")) or "/"

    def copy_home(cid: str) -> list[str]:
        # After the host user's layer: the old home (owned by that user already) wins.
        if data:
            # Into / with the parent path inside the tar: the new base may lack /home (a
            # PUT into a missing directory is Docker's raw 404).
            engine.write_archive(cid, "/", _under(data, parent))
        return _tar_paths(data, parent)

    message = f"reset --system from {short(old)}: fresh base, {home} kept"
    return make_root(ctx, base_image, branch, message, "reset-system", copy_home)


def _under(data: bytes, parent: str) -> bytes:
    """The tar ``data`` with its members moved under ``parent`` (relative to /), and entries
    for ``parent``'s own directories so that extraction creates them."""
    prefix = parent.strip("/")
    if not prefix:
        return data
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        parts = prefix.split("/")
        for i in range(len(parts)):
            d = tarfile.TarInfo("/".join(parts[: i + 1]))
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            dst.addfile(d)
        for m in src.getmembers():
            f = src.extractfile(m) if m.isfile() else None
            m.name = f"{prefix}/{m.name}"
            if m.islnk():  # hard links name their target by its path inside the tar
                m.linkname = f"{prefix}/{m.linkname}"
            dst.addfile(m, f)
    return out.getvalue()


def _tar_paths(data: bytes, prefix: str) -> list[str]:
    if not data:
        return []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [f"{prefix.rstrip('/')}/{m.name}" for m in tar.getmembers()]


# -- doctor -----------------------------------------------------------------------------------


# How a doctor check came out: `fail` makes `pienv doctor` exit 1.
Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check(JsonResult):
    name: str
    level: Level
    detail: str
    fix: str = ""


def doctor(ctx: Context) -> list[Check]:
    checks: list[Check] = []
    try:
        refs = ctx.refs()
        checks.append(Check("store", "ok", f"{ctx.store.home} schema 1, id {refs.store_id}"))
    except StoreError as exc:
        checks.append(Check("store", "fail", exc.message, exc.hint or ""))
        refs = None
    try:
        engine = ctx.engine()
        version = engine.version()
        info = engine.info()
    except PienvError as exc:
        checks.append(Check("engine", "fail", exc.message, exc.hint or "start Docker"))
        return checks
    mode = "rootless" if info.rootless else "rootful"
    checks.append(Check("engine", "ok", f"{version}, {mode}, at {engine.base_url}"))
    driver = info.driver
    # Docker's overlay2 and Podman's overlay are the drivers pienv is tested on.
    tested = driver in ("overlay2", "overlay")
    checks.append(
        Check(
            "storage driver",
            "ok" if tested else "warn",
            driver,
            "" if tested else "pienv is tested on overlay2 (Docker) and overlay (Podman)",
        )
    )
    root = info.root_dir
    try:
        if not engine.local:
            # A directory of that name here would be this machine's, not the engine's.
            raise OSError
        free = shutil.disk_usage(root).free
        level: Level = "ok" if free > 5e9 else "warn" if free > 1e9 else "fail"
        checks.append(
            Check(
                "free disk",
                level,
                f"{free / 1e9:.1f} GB free at {root}",
                "" if level == "ok" else "`pienv prune` or `docker system prune`",
            )
        )
    except OSError:
        remote = "" if engine.local else " of a remote engine"
        checks.append(Check("free disk", "warn", f"cannot read {root}{remote} from here"))
    if refs is None:
        return checks
    named = os.environ.get("PIENV_BASE_IMAGE")
    base_ref = named or basemod.BASE_TAG
    if engine.inspect_image(base_ref) is not None:
        checks.append(Check("base", "ok", base_ref))
        fixes = {
            "init binary": "Podman: install catatonit; Docker: docker-init (tini) ships with it",
            "commit labels": "this engine loses commit metadata: use Docker or Podman >= 4.3",
            "archive API": "`pienv diff --packages` and `reset --system` need it",
        }
        for name, problem in engine.probe(base_ref):
            checks.append(
                Check(
                    name,
                    "fail" if problem else "ok",
                    problem or "works",
                    fixes[name] if problem else "",
                )
            )
    else:
        checks.append(
            Check(
                "base",
                "warn",
                f"{base_ref} is not built",
                "`pienv base build` (the first run builds it too)",
            )
        )
    limit = ctx.config.flatten_at
    for name, head in sorted(refs.branches.items()):
        img = engine.inspect_image(head)
        if img is None:
            checks.append(
                Check(
                    f"branch {name}",
                    "fail",
                    f"head {short(head)} image missing",
                    "`pienv fsck --repair`",
                )
            )
            continue
        d = img.depth
        level = "ok" if d < limit else "warn" if d < MAX_DEPTH - 5 else "fail"
        checks.append(
            Check(
                f"branch {name}",
                level,
                f"depth {d}/{MAX_DEPTH} (flatten at {limit})",
                "" if level == "ok" else f"`pienv flatten {name}`",
            )
        )
    stale = []
    for name in locks.lock_names(ctx.store.locks_dir):
        holder = locks.read_holder(ctx.store.locks_dir, name)
        if holder and not locks.is_locked(ctx.store.locks_dir, name):
            stale.append(name)
    checks.append(
        Check(
            "locks",
            "warn" if stale else "ok",
            f"stale: {', '.join(stale)}" if stale else "no stale locks",
            "they are taken over automatically; `pienv unlock BRANCH`" if stale else "",
        )
    )
    from pienv.ops.recovery import orphans

    found = orphans(ctx, with_size=False)
    checks.append(
        Check(
            "orphans",
            "warn" if found else "ok",
            f"{len(found)} orphan run(s)",
            "`pienv orphans`, then `pienv recover --all`" if found else "",
        )
    )
    from pienv.ops.recovery import remove_stale_env_files

    stale_env = remove_stale_env_files(ctx)
    checks.append(
        Check(
            "env files",
            "warn" if stale_env else "ok",
            f"removed {len(stale_env)} stale env file(s) of ended runs: {', '.join(stale_env)}"
            if stale_env
            else "no stale env files",
            "they may have held API keys; the runs that wrote them are gone" if stale_env else "",
        )
    )
    return checks


# -- fsck -------------------------------------------------------------------------------------


@dataclass
class FsckResult(JsonResult):
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    unrestorable: list[str] = field(default_factory=list)


def _fetched(engine: Engine, store_id: str, labelled: list[ImageRow]) -> list[ImageRow]:
    """Commits fetched from a remote: made by another store (its label), tagged for this one."""
    seen = {row.id for row in labelled}
    return [
        row
        for row in engine.images_in(f"pienv/{store_id}")
        if row.id not in seen and row.labels.get(f"{LABEL}role") == "commit"
    ]


def _store_id(ctx: Context) -> str:
    try:
        return ctx.store_id
    except StoreError:
        pass
    for c in ctx.store.commits().values():
        info = ctx.engine().inspect_image(c.id)
        if info:
            return str(info.labels.get(LABEL + "store", ""))
    raise StoreError(
        f"cannot tell which store {ctx.store.home} was: refs.json and the commit index are gone"
    )


def fsck(ctx: Context, repair: bool, allow_loss: bool = False) -> FsckResult:
    """Check refs, tags, reflog and index against the engine.

    ``repair``: drop torn lines, rebuild the index from image labels, and restore refs.json
    from the reflog (labels only for what the reflog no longer knows), saving the old files
    next to the new ones first. A ref whose commits are all gone is dropped only with
    ``allow_loss``; without it the repair keeps it and says so.
    """
    r = FsckResult()
    engine = ctx.engine()
    refs_broken = False
    try:
        refs: Refs | None = ctx.refs()
    except StoreError as exc:
        r.problems.append(exc.message)
        refs, refs_broken = None, True
    store_id = refs.store_id if refs else _store_id(ctx)
    for path, line in ctx.store.torn_lines():
        r.problems.append(f"{path.name} line {line} is torn (a crash or full disk mid-append)")
    images = engine.images([f"{LABEL}store={store_id}", f"{LABEL}role=commit"])
    images += _fetched(engine, store_id, images)
    running = {row.id for row in engine.containers([f"{LABEL}store={store_id}"])}
    on_engine: dict[str, Commit] = {}
    in_flight: set[str] = set()
    for row in images:
        c = Commit.from_labels(row.id, dict(row.labels))
        on_engine[c.id] = c
        if c.container and c.container in running:
            in_flight.add(c.id)  # its run (or its recovery) has not indexed it yet
    index = ctx.store.commits()
    for cid in index:
        if cid not in on_engine:
            r.problems.append(f"indexed commit {short(cid)} has no image")
    for cid in on_engine:
        if cid not in index and cid not in in_flight:
            r.problems.append(f"image {short(cid)} is missing from the commit index")
    entries = ctx.store.reflog()
    if refs:
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
        gone = {e.new for e in entries if e.new and e.new not in on_engine}
        for cid in sorted(gone):
            r.problems.append(f"reflog entry -> {short(cid)}: no such image (pruned?)")
    if not repair or not r.problems:
        return r
    # -- repair ------------------------------------------------------------------------------
    with ctx.store.locked():
        saved = _save_store_files(ctx)
        if saved:
            r.fixed.append(f"saved the old files as {', '.join(saved)}")
        for path, line in ctx.store.drop_torn_lines():
            r.fixed.append(f"dropped torn line {line} of {path.name}")
        if not refs_broken and ctx.store.pending_rename() is not None:
            with ctx.store.transaction("fsck: completed a killed rename"):
                pass  # the transaction completes it (Store._pending_rename)
            r.fixed.append("completed the killed branch rename")
        index = ctx.store.fresh_commits()  # re-read under the lock: nothing indexed is lost
        rebuilt = []
        for cid, c in on_engine.items():
            old = index.get(cid)
            if old is not None:
                rebuilt.append(old)
                continue
            if cid in in_flight:
                continue  # its run indexes it when it moves its branch
            info = engine.inspect_image(cid)
            parent = engine.inspect_image(c.parents[0]) if c.parents else None
            size = (info.size if info else 0) - (parent.size if parent else 0)
            rebuilt.append(replace(c, size=max(size, 0), layers=info.depth if info else 0))
            r.fixed.append(f"indexed {short(cid)} from its labels")
        for cid in index:
            if cid not in on_engine:
                r.fixed.append(f"dropped {short(cid)} from the index (image gone)")
        ctx.store.rewrite_index(rebuilt)
        entries = ctx.store.reflog()
        if refs_broken:
            new_refs = _replay_reflog(entries, store_id)
            for name, cid in sorted(new_refs.branches.items()):
                r.fixed.append(f"branch {name} -> {short(cid)} (from the reflog)")
            for name, cid in sorted(new_refs.tags.items()):
                r.fixed.append(f"tag {name} -> {short(cid)} (from the reflog)")
            r.fixed.append(
                f"restored {len(new_refs.branches)} branch(es), {len(new_refs.tags)} tag(s), "
                f"HEAD and {len(new_refs.worktrees)} worktree binding(s) from the reflog"
            )
        else:
            # Re-read under the lock: a run that finished since the check above moved its
            # branch, and writing the check's snapshot back would undo that move.
            refs = new_refs = ctx.store.load_refs()
        log = _repair_refs(new_refs, entries, on_engine, in_flight, allow_loss, r)
        if refs is not None and len(new_refs.branches) < len(refs.branches) and not allow_loss:
            raise StoreError(  # _repair_refs keeps them; this is the last line of defence
                "fsck --repair would drop branches; nothing written",
                hint="`pienv fsck --repair --allow-loss` drops them",
            )
        repo = f"pienv/{store_id}"
        for cid in on_engine:
            engine.tag(cid, repo, short(cid))
        ctx.store.write_refs_unchecked(new_refs, log)
    r.fixed.append(f"wrote {ctx.store.refs_path}")
    return r


def _save_store_files(ctx: Context) -> list[str]:
    """Copy refs.json, the reflog and the index aside before a repair rewrites them."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    saved = []
    for path in (ctx.store.refs_path, ctx.store.reflog_path, ctx.store.index_path):
        if path.exists():
            copy = path.with_name(f"{path.name}.before-fsck-{stamp}")
            shutil.copy2(path, copy)
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
