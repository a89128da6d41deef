"""Remotes: `remote add|list|remove`, `fetch`, `pull`, `clone` (push is ops/push.py).

A remote is a name for REGISTRY/REPOSITORY (registry.Location). What a remote holds is read
from its tags alone (ops/remotelayout.py); what this store last saw there is kept as
remote-tracking refs (``origin/main``) in ``remotes.json`` beside refs.json, written
atomically under the store lock. Tracked commits are indexed and tagged like local ones, so
`log`, `status` and `prune` see them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pienv import dag, locks, registry
from pienv.context import Context
from pienv.errors import ConcurrentUpdate, StoreError, UsageError
from pienv.model import Commit, JsonResult, check_ref_name, parse_time, short
from pienv.ops.remotelayout import (
    PREFIX,
    RemoteRef,
    notes_of,
    parse_index,
    parse_record,
    problem,
)
from pienv.registry import Client, Location, escape, parse_location
from pienv.tracking import load, save

# A push record younger than this whose head is not on its branch is a push in progress, not
# yet a lost update.
RECORD_GRACE = 120.0


@dataclass(frozen=True)
class Progress:
    """A step of a long transfer: ``phase`` (scan, push, pull, write), ``done`` of ``total``
    commits, ``detail`` (the engine's word on the current layer), bytes moved so far."""

    phase: str
    done: int
    total: int
    detail: str = ""
    bytes: int = 0


OnProgress = Callable[[Progress], None] | None


@dataclass
class RemoteRow(JsonResult):
    name: str
    url: str
    branches: dict[str, str]
    tags: dict[str, str]


def add(ctx: Context, name: str, url: str) -> RemoteRow:
    check_ref_name(name, "remote")
    if "/" in name:
        raise UsageError(f"invalid remote name {name!r}: it contains '/'")
    location = parse_location(url)
    if not ctx.store.exists():
        ctx.store.init()  # as `pienv run` would: a remote may come before the first run
    with ctx.store.locked():
        r = load(ctx.store)
        if name in r.urls:
            raise UsageError(f"remote {name!r} already exists ({r.urls[name]})")
        r.urls[name] = str(location)
        save(ctx.store, r)
    return RemoteRow(name, str(location), {}, {})


def remove(ctx: Context, name: str) -> RemoteRow:
    with ctx.store.locked():
        r = load(ctx.store)
        if name not in r.urls:
            raise UsageError(f"no remote {name!r}", hint="`pienv remote list` lists them")
        row = RemoteRow(name, r.urls.pop(name), r.branches(name), r.tags(name))
        r.tracking.pop(name, None)
        save(ctx.store, r)
    return row


def listing(ctx: Context) -> list[RemoteRow]:
    r = load(ctx.store)
    return [RemoteRow(n, u, r.branches(n), r.tags(n)) for n, u in sorted(r.urls.items())]


def split_args(ctx: Context, remote: str | None, names: list[str]) -> tuple[str | None, list[str]]:
    """`push main` / `pull main`: a first argument that names no remote but a branch or tag
    is that ref, for the default remote (git would take it for a remote and fail)."""
    if remote is None or remote in load(ctx.store).urls:
        return remote, names
    refs = ctx.refs()
    if remote in refs.branches or remote in refs.tags:
        return None, [remote, *names]
    return remote, names


def pick(ctx: Context, name: str | None) -> tuple[str, Location]:
    """The remote ``name`` (default: origin, or the only one) and its location."""
    r = load(ctx.store)
    if name is None:
        name = "origin" if "origin" in r.urls or len(r.urls) != 1 else next(iter(r.urls))
    if name not in r.urls:
        raise UsageError(
            f"no remote {name!r}", hint="add one: `pienv remote add origin REGISTRY/REPOSITORY`"
        )
    return name, parse_location(r.urls[name])


# -- reading a remote -------------------------------------------------------------------------


@dataclass
class Lost(JsonResult):
    """A push whose head is not on its branch: another push overwrote it unnoticed."""

    branch: str
    head: str  # 12 hex: the record's tag holds only that much
    pushed: str
    by: str


@dataclass
class RemoteView:
    tags: list[str]
    refs: dict[tuple[str, str], RemoteRef]  # (kind, name)
    lost: list[Lost]

    def branch(self, name: str) -> RemoteRef | None:
        return self.refs.get(("branch", name))


def read(client: Client, only: RemoteRef | None = None) -> RemoteView:
    """Every ref index of the remote (their tags listed once), and its lost updates."""
    tags = client.tags()
    refs: dict[tuple[str, str], RemoteRef] = {}
    for tag in tags:
        if not tag.startswith(tuple(PREFIX.values())):
            continue
        got = client.manifest(tag)
        ref = parse_index(got[2], got[0]) if got else None
        if ref is not None and tag == PREFIX[ref.kind] + escape(ref.name):
            bad = problem(ref)
            if bad is not None:
                raise registry.RegistryError(
                    f"remote {client.location} holds a corrupt or hostile ref ({tag!r}: "
                    f"{bad}); nothing was changed here"
                )
            refs[(ref.kind, ref.name)] = ref
    return RemoteView(tags, refs, lost_updates(client, tags, refs))


def lost_updates(
    client: Client, tags: list[str], refs: dict[tuple[str, str], RemoteRef]
) -> list[Lost]:
    by_escape = {escape(r.name): r for (kind, _), r in refs.items() if kind == "branch"}
    present = set(tags)
    out = []
    for tag in tags:
        rec = parse_record(tag)
        if rec is None or rec[2]:
            continue
        head12, esc, _ = rec
        ref = by_escape.get(esc)
        if ref is not None and any(c.startswith(head12) for c in ref.commits):
            continue
        got = client.manifest(tag)
        notes = notes_of(got[2]) if got else {}
        if withdrawn(client, tag, present, notes):
            continue
        pushed = notes.get("dev.pienv.pushed", "")
        if pushed and age(pushed) < RECORD_GRACE:
            continue  # a push still under way
        # The record's words are the remote's: shown only when they are plain text and match
        # its tag.
        name = notes.get("dev.pienv.name", esc)
        if escape(name) != esc or not name.isprintable():
            name = esc
        by = notes.get("dev.pienv.by", "")
        stamp = pushed if age(pushed) != float("inf") else ""
        out.append(Lost(name, head12, stamp, by[:80] if by.isprintable() else repr(by)))
    return out


def age(stamp: str) -> float:
    """Seconds since RFC 3339 ``stamp``; infinite if it is not one (a remote's word)."""
    try:
        return time.time() - parse_time(stamp).timestamp()
    except ValueError:
        return float("inf")


def withdrawn(client: Client, tag: str, present: set[str], notes: dict[str, str]) -> bool:
    """Whether the push record ``tag`` (annotations ``notes``) was withdrawn: its ``x-`` twin
    exists and names the same attempt (a retry of the same head rewrites the record)."""
    twin = "x" + tag[1:]
    if twin not in present:
        return False
    got = client.manifest(twin)
    attempt = notes_of(got[2]).get("dev.pienv.attempt") if got else None
    return attempt is not None and attempt == notes.get("dev.pienv.attempt")


def bring(
    ctx: Context, location: Location, wanted: dict[str, Any], on_progress: OnProgress
) -> list[Commit]:
    """Pull the commits of ``wanted`` (id -> Descriptor) this engine lacks, tag them for this
    store and return them (to index), parents first. A commit another store on this engine
    already has is only tagged."""
    engine = ctx.engine()
    have = ctx.store.commits()
    repo = ctx.repository()
    auth = engine_auth(location)
    todo = [c for c in wanted if c not in have]
    out: list[Commit] = []
    meter = Meter()
    # Heads first: the deepest image brings most layers in one pull, downloaded in parallel
    # by the engine; its ancestors then need little more than their manifests and configs.
    order = sorted(todo, key=lambda c: _depth(c, wanted), reverse=True)
    for n, cid in enumerate(order, 1):
        d = wanted[cid]
        info = engine.inspect_image(cid)
        if info is None:
            reference = f"{location}@{d.digest}"

            def event(e: Any, n: int = n) -> None:
                moved = meter.feed(e)
                if on_progress:
                    line = f"{e.get('id', '')} {e.get('status', '')}".strip()
                    on_progress(Progress("pull", n - 1, len(todo), line, moved))

            got = engine.pull_image(reference, auth, event)
            if got.removeprefix("sha256:") != cid:
                raise StoreError(
                    f"remote commit {short(cid)} arrived as image {short(got)}: the registry "
                    "changed its config; not indexed"
                )
            meter.next_image()
            engine.tag(cid, repo, short(cid))
            engine.untag(reference)
            info = engine.inspect_image(cid)
        else:
            engine.tag(cid, repo, short(cid))
        if info is None:
            raise StoreError(f"image {short(cid)} vanished while it was fetched")
        commit = Commit.from_labels(info.id, dict(info.labels))
        out.append(_sized(commit, info.size, info.depth))
        if on_progress:
            on_progress(Progress("pull", n, len(todo), "", meter.total))
    return out


def _sized(commit: Commit, size: int, depth: int) -> Commit:
    from dataclasses import replace

    return replace(commit, size=size, layers=depth)


def _depth(cid: str, wanted: dict[str, Any]) -> int:
    n, seen = 0, {cid}
    todo = list(wanted[cid].parents)
    while todo:
        p = todo.pop()
        if p in seen or p not in wanted:
            continue
        seen.add(p)
        n += 1
        todo.extend(wanted[p].parents)
    return n


class Meter:
    """Bytes a push or pull moved so far, from the engine's per-layer progress lines."""

    def __init__(self) -> None:
        self.layers: dict[str, int] = {}
        self.base = 0  # bytes of earlier commits' transfers

    def feed(self, event: Any) -> int:
        detail = event.get("progressDetail") if isinstance(event, dict) else None
        if isinstance(detail, dict) and "current" in detail and event.get("id"):
            key = str(event["id"])
            self.layers[key] = max(self.layers.get(key, 0), int(detail["current"]))
        return self.total

    @property
    def total(self) -> int:
        return self.base + sum(self.layers.values())

    def next_image(self) -> None:
        self.base, self.layers = self.total, {}


def engine_auth(location: Location) -> dict[str, str] | None:
    login = registry.login_for(location.registry)
    if login is None:
        return None
    if login.identity_token:
        return {"identitytoken": login.identity_token, "serveraddress": location.registry}
    return {
        "username": login.username,
        "password": login.password,
        "serveraddress": location.registry,
    }


# -- fetch ------------------------------------------------------------------------------------


@dataclass
class RefUpdate(JsonResult):
    name: str
    old: str | None
    new: str | None


@dataclass
class FetchResult(JsonResult):
    remote: str
    url: str
    branches: list[RefUpdate]
    tags: list[RefUpdate]
    commits: int  # commits brought to this engine
    tag_conflicts: list[str]  # remote tags that name another commit than the local tag
    lost: list[Lost]


def fetch(
    ctx: Context,
    name: str | None = None,
    on_progress: OnProgress = None,
    view: RemoteView | None = None,
) -> FetchResult:
    """Read the remote's refs, pull every commit they reach that this store lacks, and move
    the remote-tracking refs (branches gone from the remote are dropped, as `fetch --prune`);
    remote tags become local tags unless a local tag of that name differs."""
    name, location = pick(ctx, name)
    view = view or read(Client(location))
    wanted: dict[str, Any] = {}
    for ref in view.refs.values():
        wanted.update(ref.commits)
    brought = bring(ctx, location, wanted, on_progress)
    remote_branches = {r.name: r.head for (k, _), r in view.refs.items() if k == "branch"}
    remote_tags = {r.name: r.head for (k, _), r in view.refs.items() if k == "tag"}
    conflicts: list[str] = []
    with ctx.store.transaction(f"fetch: {name}") as txn:
        for c in brought:
            txn.add_commit(c)
        for tag, cid in sorted(remote_tags.items()):
            local = txn.refs.tags.get(tag)
            if local is None:
                txn.set_tag(tag, cid, f"fetch: tag {tag} from {name}")
            elif local != cid:
                conflicts.append(tag)
        r = load(ctx.store)
        old_b, old_t = dict(r.branches(name)), dict(r.tags(name))
        r.tracking[name] = {"branches": remote_branches, "tags": remote_tags}
        save(ctx.store, r)
    return FetchResult(
        name,
        str(location),
        _updates(old_b, remote_branches),
        _updates(old_t, remote_tags),
        len(brought),
        conflicts,
        view.lost,
    )


def _updates(old: dict[str, str], new: dict[str, str]) -> list[RefUpdate]:
    names = sorted(set(old) | set(new))
    return [RefUpdate(n, old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n)]


# -- pull -------------------------------------------------------------------------------------


@dataclass
class PullResult(JsonResult):
    remote: str
    branch: str
    old: str | None
    new: str
    outcome: str  # "fast-forward", "created", "up to date", "ahead"
    fetch: FetchResult


def pull(
    ctx: Context, name: str | None, branch: str | None, on_progress: OnProgress = None
) -> PullResult:
    """Fetch, then fast-forward ``branch`` (default: the current one) to the remote's head;
    refuse, naming both heads, when they have diverged."""
    if branch is None:
        name, given = split_args(ctx, name, [])
        branch = given[0] if given else None
    fetched = fetch(ctx, name, on_progress)
    remote = fetched.remote
    refs = ctx.refs()
    branch = branch or refs.head_branch
    if branch is None:
        raise UsageError("HEAD is detached: name the branch to pull")
    theirs = load(ctx.store).branches(remote).get(branch)
    if theirs is None:
        raise UsageError(f"remote {remote!r} has no branch {branch!r}")
    ours = refs.branches.get(branch)
    commits = ctx.store.commits()
    if ours == theirs:
        return PullResult(remote, branch, ours, theirs, "up to date", fetched)
    if ours is not None:
        g = dag.build(commits)
        if dag.is_ancestor(g, theirs, ours):
            return PullResult(remote, branch, ours, ours, "ahead", fetched)
        if not dag.is_ancestor(g, ours, theirs):
            raise UsageError(
                f"{branch} ({short(ours)}) and {remote}/{branch} ({short(theirs)}) have "
                "diverged: pull only fast-forwards",
                hint=f"keep both: `pienv branch {branch}-remote {remote}/{branch}`; or take "
                f"theirs: `pienv reset {remote}/{branch}` on {branch}",
            )
    lock, _ = locks.acquire(ctx.store.locks_dir, branch, "(pienv pull)")
    try:
        with ctx.store.transaction(f"pull: {remote}/{branch}") as txn:
            try:
                txn.move_branch(branch, ours, theirs)
            except ConcurrentUpdate as exc:
                raise ConcurrentUpdate(f"{exc.message} (pull)") from None
    finally:
        lock.release()
    outcome = "created" if ours is None else "fast-forward"
    return PullResult(remote, branch, ours, theirs, outcome, fetched)


# -- clone ------------------------------------------------------------------------------------


@dataclass
class CloneResult(JsonResult):
    home: str
    url: str
    branch: str | None
    head: str | None
    fetch: FetchResult


def clone(ctx: Context, url: str, on_progress: OnProgress = None) -> CloneResult:
    """A new store from a remote: origin added, every branch as a remote-tracking ref, the
    default branch (main, else the only or first one) checked out as a local branch."""
    location = parse_location(url)
    home = ctx.store.home
    resume = ctx.store.exists() and _unfinished_clone(ctx, location)
    if ctx.store.exists() and not resume:
        raise UsageError(
            f"a store exists at {home} already",
            hint="clone into a new one: `PIENV_HOME=DIR pienv clone ...`",
        )
    # Read the remote before making anything: a bad URL or a missing login leaves no store.
    view = read(Client(location))
    if not view.refs:
        raise UsageError(f"{location} holds no pienv branches or tags")
    fresh = not resume and (not home.exists() or not any(home.iterdir()))
    if not resume:
        ctx.store.init()
    try:
        if "origin" not in load(ctx.store).urls:
            add(ctx, "origin", str(location))
        fetched = fetch(ctx, "origin", on_progress, view)
    except BaseException:
        # Nothing half-made: a failed (or interrupted) clone leaves no store to trip over,
        # and no image tagged for it.
        if fresh:
            _undo_clone(ctx)
        raise
    branches = load(ctx.store).branches("origin")
    default = "main" if "main" in branches else (sorted(branches)[0] if branches else None)
    head = branches.get(default) if default else None
    if default is not None and head is not None:
        with ctx.store.transaction(f"clone: from {location}") as txn:
            txn.move_branch(default, None, head)
            txn.checkout(default)
    return CloneResult(str(home), str(location), default, head, fetched)


def _unfinished_clone(ctx: Context, location: Location) -> bool:
    """Whether the store is what a clone of ``location`` killed half-way (kill -9 runs no
    clean-up) leaves: no branch, and origin that location or no remote and no commit yet.
    Cloning again finishes it (a fetch is idempotent)."""
    urls = load(ctx.store).urls
    if ctx.refs().branches:
        return False
    return urls == {"origin": str(location)} or (not urls and not ctx.store.commits())


def _undo_clone(ctx: Context) -> None:
    import contextlib
    import shutil

    with contextlib.suppress(Exception):
        engine = ctx.engine()
        for row in engine.images_in(ctx.repository()):
            for tag in row.tags:
                if tag.startswith(ctx.repository() + ":"):
                    engine.untag(tag)
    shutil.rmtree(ctx.store.home, ignore_errors=True)
