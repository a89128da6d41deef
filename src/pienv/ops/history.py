"""The git-like history commands. They answer from the store (refs, reflog, commit index);
only `show --size`, `diff` and `diff --packages` ask the engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pienv import dag, locks
from pienv.context import Context
from pienv.errors import PienvError, UsageError
from pienv.model import Commit, JsonResult, check_ref_name, short
from pienv.ops.integrity import require_image
from pienv.runloop import keeper
from pienv.store import ReflogEntry, Refs
from pienv.tracking import tracking_refs

if TYPE_CHECKING:
    from pienv.engine import ImageInfo
    from pienv.ops import fsdiff

# -- decorations ------------------------------------------------------------------------------


def decorations(refs: Refs, tracking: dict[str, str] | None = None) -> dict[str, list[str]]:
    """commit id -> ["HEAD -> main", "tag: v1", "exp", "origin/main"] in git's order."""
    out: dict[str, list[str]] = {}
    if refs.head_branch is None and refs.head_detached:
        out.setdefault(refs.head_detached, []).append("HEAD")
    for name, cid in sorted(refs.branches.items()):
        label = f"HEAD -> {name}" if name == refs.head_branch else name
        lst = out.setdefault(cid, [])
        lst.insert(0, label) if name == refs.head_branch else lst.append(label)
    for name, cid in sorted((tracking or {}).items()):
        out.setdefault(cid, []).append(name)
    for name, cid in sorted(refs.tags.items()):
        out.setdefault(cid, []).append(f"tag: {name}")
    return out


# -- log --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry(JsonResult):
    commit: Commit
    refs: tuple[str, ...]
    graph: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**self.commit.to_output(self.refs), "graph": self.graph}


@dataclass(frozen=True)
class LogResult:
    entries: list[LogEntry]
    # With --graph: the connector rows between commits, keyed by the index of the entry they
    # follow (-1 = before the first).
    connectors: dict[int, list[str]] = field(default_factory=dict)
    # Runs still being committed in the background on the branches shown (after the wait).
    pending: list[locks.Holder] = field(default_factory=list)


# How long `log` waits for a background commit on a branch it shows: a commit takes ~0.1 s
# (seconds for thousands of files), so a script's `pienv run ...; pienv log` sees its run.
LOG_WAIT = 5.0


def log(
    ctx: Context,
    rev: str | None,
    all_refs: bool,
    limit: int | None,
    graph: bool,
    all_kinds: bool = True,
) -> LogResult:
    """The commits from ``rev`` (or every ref), newest first. Without ``all_kinds`` the
    commits pienv makes for itself (``prepare``: a worktree's mount points) are left out,
    and the graph joins their children to their parents."""
    if limit is not None and limit < 0:
        raise UsageError(f"-n takes a number of commits, 0 or more (not {limit})")
    refs = ctx.refs()
    names = [locks.name_of(refs.head_branch)]
    if all_refs:
        names = locks.lock_names(ctx.store.locks_dir)
    elif rev in refs.branches:
        names = [rev]
    waited, pending = await_commits(ctx, names, LOG_WAIT)
    if waited:
        refs = ctx.refs()  # what landed meanwhile
    commits = ctx.store.commits()
    tracking = tracking_refs(ctx.store)  # origin/main and the like, fetched or pushed
    if all_refs:
        starts = [*refs.branches.values(), *refs.tags.values(), *tracking.values()]
        if refs.head_detached:
            starts.append(refs.head_detached)
    else:
        head = refs.head_commit()
        if rev is None and head is None:
            return LogResult([], pending=pending)
        # `log` waited for the commits it shows already (LOG_WAIT), and says what is pending.
        starts = [ctx.resolve(rev, refs, settle=False) if rev else head]  # type: ignore[list-item]
    order = dag.log_order(commits, starts)
    _warn_missing(ctx, refs.store_id, starts)
    if not all_kinds:
        order = [c for c in order if commits[c].kind not in HIDDEN_KINDS or c in starts]
    if limit is not None:
        order = order[:limit]
    deco = decorations(refs, tracking)
    if not graph:
        return LogResult(
            [LogEntry(commits[c], tuple(deco.get(c, ()))) for c in order], pending=pending
        )
    parents = {c: commits[c].parents for c in order}
    if not all_kinds:
        parents = {c: tuple(_shown(p, commits) for p in ps) for c, ps in parents.items()}
    rows = dag.lanes(order, parents)
    entries: list[LogEntry] = []
    connectors: dict[int, list[str]] = {}
    for row in rows:
        if row.commit is None:
            connectors.setdefault(len(entries) - 1, []).append(row.graph)
        else:
            entries.append(
                LogEntry(commits[row.commit], tuple(deco.get(row.commit, ())), row.graph)
            )
    return LogResult(entries, connectors, pending)


# Commits pienv makes for itself, hidden from `log` unless --all-kinds.
HIDDEN_KINDS = ("prepare",)


def _shown(cid: str, commits: Mapping[str, Commit]) -> str:
    """``cid``, or its nearest first-parent ancestor that `log` shows."""
    while cid in commits and commits[cid].kind in HIDDEN_KINDS and commits[cid].parents:
        cid = commits[cid].parents[0]
    return cid


def _warn_missing(
    ctx: Context, store_id: str, starts: list[str], what: str = "this history", deep: bool = True
) -> None:
    """Say what Docker deleted or untagged of the commits shown (``deep``: and of their
    ancestors); one image listing. A command that works without an engine says nothing."""
    from pienv.ops.integrity import history_warnings

    try:
        for text in history_warnings(ctx, store_id, starts, what, deep):
            ctx.report.warn(text)
    except PienvError:
        pass


def await_commits(
    ctx: Context, names: list[str], timeout: float
) -> tuple[bool, list[locks.Holder]]:
    """Wait up to ``timeout`` s in all for the background commits on branches ``names``.
    Returns whether there was any to wait for, and those still pending at the end."""
    import time

    end = time.monotonic() + timeout
    waited, pending = False, []
    for name in names:
        if locks.committing(ctx.store.locks_dir, name) is None:
            continue  # the usual case: one file read per branch
        waited = True
        left = max(end - time.monotonic(), 0.0)
        holder = locks.await_commit(ctx.store.locks_dir, name, left, ctx.report.note)
        if holder is not None:
            pending.append(holder)
    return waited, pending


# -- show / diff ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShowResult(JsonResult):
    commit: Commit
    refs: tuple[str, ...]
    changes: list[tuple[str, str]] | None  # None: not recorded (e.g. recovered from labels)

    def to_json(self) -> dict[str, Any]:
        paths = [{"kind": k, "path": p} for k, p in (self.changes or [])]
        return {**self.commit.to_output(self.refs), "paths": paths}


def show(ctx: Context, rev: str) -> ShowResult:
    """One commit and its paths. A run commit's paths are not listed when it is made (that
    would cost a read of the image on every run: docs/performance.md); the first `show`
    lists what the commit's own layer holds, as `diff` with its parent does, and keeps it."""
    refs = ctx.refs()
    cid = ctx.resolve(rev, refs)
    commit = ctx.commit(cid)
    _warn_missing(ctx, refs.store_id, [cid], f"commit {short(cid)}", deep=False)
    changes = commit_changes(ctx, commit)
    return ShowResult(commit, tuple(decorations(refs).get(cid, ())), changes)


@dataclass(frozen=True)
class SecretHit(JsonResult):
    commit: Commit
    paths: list[str]


def commit_changes(ctx: Context, commit: Commit) -> list[tuple[str, str]] | None:
    """The paths ``commit``'s own layers hold (None for a root): recorded, or read once and
    kept, as `show` does."""
    changes = ctx.store.changes(commit.id)
    if changes is None and commit.parents:
        changes = _path_changes(ctx, commit.parents[0], commit.id, lambda _text: None).listing()
        ctx.store.record_changes(commit.id, changes)
    return changes


def secret_files(ctx: Context, rev: str | None, all_refs: bool) -> list[SecretHit]:
    """The commits reachable from ``rev`` (default HEAD; ``all_refs``: every branch and
    tag) whose layers add or change credential-looking files (secrets.py), newest first.
    A later deletion does not count: the file is still in the older layer."""
    from pienv.secrets import credential_paths

    refs = ctx.refs()
    commits = ctx.store.commits()
    if all_refs:
        starts = [*refs.branches.values(), *refs.tags.values()]
    else:
        head = ctx.resolve(rev, refs) if rev else refs.head_commit()
        starts = [head] if head else []
    hits = []
    for i, cid in enumerate(dag.log_order(commits, starts)):
        ctx.report.progress("reading layers", i)
        changes = commit_changes(ctx, commits[cid])
        found = credential_paths(changes or [])
        if found:
            hits.append(SecretHit(commits[cid], found))
    return hits


@dataclass(frozen=True)
class DiffResult(JsonResult):
    old: str
    new: str
    added: list[str] | None  # None with --packages: files are not compared then
    changed: list[str] | None
    deleted: list[str] | None
    # Directories whose own metadata alone changed (their time, after files came and went).
    metadata: list[str] | None = None
    packages: dict[str, dict[str, list[str]]] | None = None  # manager -> added/removed/upgraded


def diff(
    ctx: Context,
    rev_a: str,
    rev_b: str | None,
    packages: bool,
) -> DiffResult:
    """Paths added/changed/deleted from ``rev_a`` to ``rev_b`` (default HEAD); with
    ``packages`` the package changes instead, read from the package databases alone."""
    from pienv.ops import fsdiff

    refs = ctx.refs()
    old = ctx.resolve(rev_a, refs)
    new = ctx.resolve(rev_b, refs) if rev_b else ctx.resolve("HEAD", refs)
    _warn_missing(ctx, refs.store_id, [old, new], "this diff", deep=False)
    step = ctx.report.progress
    if packages:
        step(f"reading the package databases of {short(old)} and {short(new)}")
        version = fsdiff.PACKAGES_VERSION
        known = {i: p for i in (old, new) if (p := ctx.store.packages(i, version)) is not None}
        pkgs, read = fsdiff.package_diff(ctx.engine(), old, new, known)
        for image, found in read.items():
            ctx.store.record_packages(image, version, found)
        return DiffResult(old, new, None, None, None, packages=pkgs)
    ch = _path_changes(ctx, old, new, step)
    return DiffResult(old, new, ch.added, ch.changed, ch.deleted, ch.metadata)


def _path_changes(
    ctx: Context, old: str, new: str, step: Callable[[str], None]
) -> fsdiff.LayerChanges:
    """The paths from image ``old`` to ``new``. When one is the other plus layers (a commit
    and its ancestors, until a flatten), they are what those layers hold: every change a
    commit captured, whatever its metadata. Otherwise (across a flatten, between branches)
    the two images' path metadata are compared, which cannot see a same-size rewrite that
    kept its mtime."""
    from pienv.ops import fsdiff
    from pienv.runloop.commits import known_mount_points

    engine = ctx.engine()
    images = [engine.inspect_image(old), engine.inspect_image(new)]
    mounts: set[str] = set()
    for image in images:
        if image is not None:
            mounts |= known_mount_points(image)
    a, b = images
    if a is not None and b is not None:
        if a.layers == b.layers:
            return fsdiff.LayerChanges()
        fast = _overlay_changes(a, b, mounts)
        if fast is not None:
            return fast
        if b.layers[: len(a.layers)] == a.layers:
            step(f"reading the layers of {short(new)}")
            return fsdiff.layer_changes(engine.image_layers(new), len(a.layers), mounts)
        if a.layers[: len(b.layers)] == b.layers:
            step(f"reading the layers of {short(old)}")
            return fsdiff.layer_changes(engine.image_layers(old), len(b.layers), mounts).reversed()
    step(f"reading {short(old)}")
    before = fsdiff.scan(engine, old, mounts)
    step(f"reading {short(new)}")
    after = fsdiff.scan(engine, new, mounts)
    step("comparing")
    added, changed, deleted = fsdiff.compare_files(before, after)
    return fsdiff.LayerChanges(added, changed, deleted)


def _overlay_changes(a: ImageInfo, b: ImageInfo, mounts: set[str]) -> fsdiff.LayerChanges | None:
    """The paths from ``a`` to ``b`` read from the storage driver's layer directories when
    this host can read them (ops/overlay.py): only the layers above what the two share."""
    from pienv.ops import fsdiff, overlay

    if len(a.layer_dirs) != len(a.layers) or len(b.layer_dirs) != len(b.layers):
        return None
    common = 0
    while common < min(len(a.layers), len(b.layers)) and a.layers[common] == b.layers[common]:
        common += 1
    if common == len(a.layers):  # b is a plus layers: what those layers hold
        layers = overlay.read(b.layer_dirs, common)
        return None if layers is None else fsdiff.layer_changes(layers, common, mounts)
    if common == len(b.layers):
        layers = overlay.read(a.layer_dirs, common)
        if layers is None:
            return None
        return fsdiff.layer_changes(layers, common, mounts).reversed()
    layers_a = overlay.read(a.layer_dirs, common)
    if layers_a is None:
        return None
    also, also_trees = overlay.touched(layers_a[common:])
    layers_b = overlay.read(b.layer_dirs, common, also, also_trees)
    if layers_b is None:
        return None
    # The base layers as b's read saw them: every path either side touches.
    base = layers_b[:common]
    return fsdiff.compare_layers([*base, *layers_a[common:]], layers_b, common, mounts)


# -- branches ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchInfo(JsonResult):
    name: str
    head: str
    current: bool
    created: str
    commits: int
    size: int
    locked: bool
    worktrees: tuple[str, ...]


def branches(ctx: Context, remotes: bool = False) -> list[BranchInfo]:
    """The branches; ``remotes`` (`branch -a`): the remote-tracking ones too, named
    ``remotes/REMOTE/BRANCH`` as git lists them."""
    refs = ctx.refs()
    commits = ctx.store.commits()
    listed = dict(refs.branches)
    if remotes:
        listed |= {f"remotes/{n}": c for n, c in tracking_refs(ctx.store).items()}
    ancestry = dag.ancestor_sets(commits, listed.values())
    _warn_missing(ctx, refs.store_id, list(refs.branches.values()), "the branches")
    out = []
    for name, cid in sorted(listed.items(), key=lambda kv: (kv[0].startswith("remotes/"), kv[0])):
        anc = ancestry[cid]
        c = commits.get(cid)
        out.append(
            BranchInfo(
                name=name,
                head=cid,
                current=name == refs.head_branch,
                created=c.created if c else "",
                commits=len(anc),
                size=sum(commits[a].size for a in anc),
                locked=locks.is_locked(ctx.store.locks_dir, name),
                worktrees=tuple(p for p, b in refs.worktrees.items() if b == name),
            )
        )
    return out


def create_branch(ctx: Context, name: str, start: str | None) -> str:
    check_ref_name(name)
    refs = ctx.refs()
    if name in refs.tags:
        # A branch would shadow the tag of the same name in every revision.
        raise UsageError(f"{name!r} is a tag", hint="choose another branch name")
    cid = ctx.resolve(start or "HEAD", refs)
    require_image(ctx, cid)
    with ctx.store.transaction(f"branch: created from {start or 'HEAD'}") as txn:
        txn.move_branch(name, None, cid)
    keeper.sync(ctx)
    return cid


# Ref moves on a branch wait this long for a background commit on it to land first.
MOVE_WAIT = 120.0


def _refuse_busy(ctx: Context, name: str) -> None:
    """Refuse a branch a run is on; wait for a finished run's background commit first (the
    ref move would otherwise race it, and the run's commit would land beside the branch)."""
    locks.await_commit(ctx.store.locks_dir, name, MOVE_WAIT)
    if locks.is_locked(ctx.store.locks_dir, name):
        raise locks.busy_error(ctx.store.locks_dir, name)


def delete_branch(ctx: Context, name: str, force: bool) -> str:
    refs = ctx.refs()
    if name not in refs.branches:
        raise UsageError(f"branch {name!r} not found")
    if name == refs.head_branch:
        raise UsageError(
            f"cannot delete branch {name!r}: it is the current branch",
            hint="`pienv checkout` another branch first",
        )
    _refuse_busy(ctx, name)
    cid = refs.branches[name]
    if not force:
        g = dag.build(ctx.store.commits())
        others = [*(c for n, c in refs.branches.items() if n != name), *refs.tags.values()]
        if refs.head_detached:
            others.append(refs.head_detached)
        if cid not in dag.reachable(g, others):
            raise UsageError(
                f"branch {name!r} has commits no other branch or tag reaches",
                hint=f"`pienv branch -D {name}` deletes it anyway (the reflog keeps them until "
                "prune)",
            )
    bound = [p for p, b in refs.worktrees.items() if b == name]
    if bound:
        raise UsageError(
            f"branch {name!r} is bound to worktree {bound[0]}",
            hint="`pienv worktree remove` it first",
        )
    with ctx.store.transaction(f"branch: deleted {name}") as txn:
        txn.delete_branch(name, cid)
    return cid


def rename_branch(ctx: Context, old: str, new: str) -> None:
    check_ref_name(new)
    if new in ctx.refs().tags:
        raise UsageError(f"{new!r} is a tag", hint="choose another branch name")
    _refuse_busy(ctx, old)
    with ctx.store.transaction(f"branch: renamed {old} to {new}") as txn:
        txn.rename_branch(old, new)


# -- checkout / reset -------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutResult:
    branch: str | None
    commit: str
    created: bool
    # A detached head this checkout left that no branch or tag reaches (only the reflog).
    left_behind: str | None = None


def checkout(ctx: Context, target: str, create: bool, start: str | None) -> CheckoutResult:
    refs = ctx.refs()
    if create:
        cid = create_branch(ctx, target, start)
        with ctx.store.transaction(f"checkout: moving to {target}") as txn:
            txn.checkout(target)
        return CheckoutResult(target, cid, True, _left_behind(ctx, refs, cid))
    if target in refs.branches:
        with ctx.store.transaction(f"checkout: moving to {target}") as txn:
            txn.checkout(target)
        cid = refs.branches[target]
        return CheckoutResult(target, cid, False, _left_behind(ctx, refs, cid))
    cid = ctx.resolve(target, refs)
    require_image(ctx, cid)
    with ctx.store.transaction(f"checkout: moving to {short(cid)}") as txn:
        txn.checkout(None, cid)
    keeper.sync(ctx)
    return CheckoutResult(None, cid, False, _left_behind(ctx, refs, cid))


def _left_behind(ctx: Context, refs: Refs, new: str) -> str | None:
    """The detached head ``refs`` had, when moving HEAD to ``new`` leaves it reachable from no
    branch or tag (as git's "you are leaving N commits behind"): only the reflog keeps it, until
    prune expires the entry. Costs a graph only when HEAD was detached."""
    old = refs.head_detached
    if refs.head_branch or not old or old == new:
        return None
    heads = [*refs.branches.values(), *refs.tags.values()]
    if old in heads or old in dag.reachable(dag.build(ctx.store.commits()), heads):
        return None
    return old


@dataclass(frozen=True)
class ResetResult:
    branch: str | None
    old: str | None
    new: str
    egress: str | None = None  # the egress mode the branch took from ``new`` (None: unchanged)


def reset(ctx: Context, rev: str, what: str | None = None) -> ResetResult:
    """Move the current branch (or detached HEAD) to ``rev``; the old head stays in the reflog."""
    # A finished run's background commit lands first: `reset HEAD~1` right after a run
    # undoes that run (and the refs read below are the ones it left).
    ctx.settle("HEAD", ctx.refs())
    refs = ctx.refs()
    new = ctx.resolve(rev, refs)
    require_image(ctx, new)
    branch = refs.head_branch
    _refuse_busy(ctx, locks.name_of(branch))
    old = refs.head_commit()
    with ctx.store.transaction(what or f"reset: moving to {rev}") as txn:
        txn.move_head(branch, old, new)
    keeper.sync(ctx)
    # The environment and the policy it ran under go back together (egress.py).
    from pienv.ops import egress

    policy = egress.follow(ctx, branch, new)
    return ResetResult(branch, old, new, policy.mode if policy else None)


# -- tags / reflog ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TagInfo(JsonResult):
    name: str
    commit: str


def tags(ctx: Context) -> list[TagInfo]:
    return [TagInfo(name, cid) for name, cid in sorted(ctx.refs().tags.items())]


def tag(ctx: Context, name: str, rev: str | None) -> str:
    check_ref_name(name, "tag")
    refs = ctx.refs()
    if name in refs.tags:
        raise UsageError(f"tag {name!r} already exists", hint=f"`pienv tag -d {name}` first")
    if name in refs.branches:
        # A revision names the branch first: such a tag could never be reached by its name.
        raise UsageError(f"{name!r} is a branch", hint="choose another tag name")
    cid = ctx.resolve(rev or "HEAD", refs)
    require_image(ctx, cid)
    with ctx.store.transaction(f"tag: {name}") as txn:
        txn.set_tag(name, cid)
    keeper.sync(ctx)
    return cid


def delete_tag(ctx: Context, name: str) -> str:
    refs = ctx.refs()
    if name not in refs.tags:
        raise UsageError(f"tag {name!r} not found")
    with ctx.store.transaction(f"tag: deleted {name}") as txn:
        txn.set_tag(name, None)
    return refs.tags[name]


@dataclass(frozen=True)
class ReflogRow(JsonResult):
    selector: str  # main@{0}
    entry: ReflogEntry

    def to_json(self) -> dict[str, Any]:
        return {"selector": self.selector, **self.entry.to_json()}


def reflog(ctx: Context, ref: str | None) -> list[ReflogRow]:
    """Newest first. Without a ref: the current branch (HEAD's log when detached)."""
    refs = ctx.refs()
    name = ref or locks.name_of(refs.head_branch)
    if ref and ref not in refs.branches and ref != "HEAD":
        if ref in refs.tags:
            name = "tags/" + ref
        elif not ctx.store.reflog(ref):
            raise UsageError(f"no reflog for {ref!r}")
    entries = [e for e in reversed(ctx.store.reflog(name)) if e.new]
    return [ReflogRow(f"{ref or name}@{{{i}}}", e) for i, e in enumerate(entries)]
