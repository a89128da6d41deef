"""`pienv push`: send branches and tags, with every commit they reach, to a remote.

Order of a push (docs/sharing.md): refuse what is not a fast-forward (the remote head must be
an ancestor of the local one) before anything leaves; refuse commits made before logins
moved out of images unless forced; scan every layer that would leave for credential files;
push each missing commit as its own image (the engine skips layers the registry holds); then
per branch: write an append-only push record, look for a competing push from the same remote
head, write the branch index (conditional where the registry honours it) and read it back.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pienv import dag
from pienv.context import Context
from pienv.errors import ConcurrentUpdate, PienvError, UsageError
from pienv.model import JsonResult, short
from pienv.ops import pushscan
from pienv.ops.remote import (
    RECORD_GRACE,
    Lost,
    Meter,
    OnProgress,
    Progress,
    RemoteView,
    age,
    engine_auth,
    pick,
    read,
    split_args,
    withdrawn,
)
from pienv.ops.remotelayout import (
    Descriptor,
    RefKind,
    RemoteRef,
    build_index,
    commit_tag,
    notes_of,
    parse_index,
    parse_record,
    record_body,
    record_tag,
    ref_tag,
)
from pienv.registry import INDEX, Client, Location, escape
from pienv.runloop.commits import flatten_image
from pienv.store import who
from pienv.tracking import load, save

# How long a push waits for a rival push from the same remote head to give way.
CLAIM_WAIT = 30.0

Outcome = Literal["pushed", "created", "forced", "up to date"]


class SecretsFound(PienvError):
    """A layer of the pushed history holds a credential file."""


@dataclass
class PushedRef(JsonResult):
    kind: str
    name: str
    old: str | None
    new: str
    outcome: Outcome


@dataclass
class PushResult(JsonResult):
    remote: str
    url: str
    refs: list[PushedRef]
    commits: int  # commits sent (the remote lacked them)
    bytes: int  # bytes the engine uploaded (layers the registry lacked)
    lost: list[Lost] = field(default_factory=list)


@dataclass
class Target:
    kind: RefKind
    name: str
    head: str
    history: set[str]  # the head and every ancestor
    remote: RemoteRef | None


def push(
    ctx: Context,
    remote: str | None = None,
    names: list[str] | None = None,
    all_refs: bool = False,
    force: bool = False,
    on_progress: OnProgress = None,
    squash: bool = False,
) -> PushResult:
    remote, names = split_args(ctx, remote, names or [])
    name, location = pick(ctx, remote)
    client = Client(location)
    view = read(client)
    targets = _targets(ctx, names, all_refs, view)
    if squash:
        for t in targets:
            _squash(ctx, t, force)
    _refuse_non_fast_forward(name, targets, force)
    known = _remote_commits(client, view, {c for t in targets for c in t.history})
    missing = sorted(
        {c for t in targets for c in t.history} - set(known),
        key=lambda c: ctx.commit(c).created,
    )
    _check_secrets(ctx, missing, force, on_progress)
    meter = Meter()
    for n, cid in enumerate(missing, 1):
        parent = ctx.commit(cid).parents[:1]
        below = known[parent[0]].digest if parent and parent[0] in known else None
        known[cid] = _send(
            ctx, location, client, (cid, below), meter, on_progress, (n, len(missing))
        )
    results = []
    for t in targets:
        if t.remote is not None and t.remote.head == t.head:
            results.append(PushedRef(t.kind, t.name, t.head, t.head, "up to date"))
            continue
        results.append(_write_ref(ctx, client, t, known, force))
        with ctx.store.locked():
            r = load(ctx.store)
            (r.branches(name) if t.kind == "branch" else r.tags(name))[t.name] = t.head
            save(ctx.store, r)
    return PushResult(name, str(location), results, len(missing), meter.total, view.lost)


def _targets(ctx: Context, names: list[str], all_refs: bool, view: RemoteView) -> list[Target]:
    refs = ctx.refs()
    # A run that just returned may still be committing in the background: push what it
    # commits, not the head before it (as every revision naming the branch waits).
    pushed = list(refs.branches) if all_refs else [n for n in names if n in refs.branches]
    settled = [ctx.settle(b, refs) for b in pushed or ([] if names else ["HEAD"])]
    if any(settled):
        refs = ctx.refs()
    chosen: list[tuple[RefKind, str, str]] = []
    if all_refs:
        chosen += [("branch", b, c) for b, c in sorted(refs.branches.items())]
        chosen += [("tag", t, c) for t, c in sorted(refs.tags.items())]
    for n in names:
        if n in refs.branches:
            chosen.append(("branch", n, refs.branches[n]))
        elif n in refs.tags:
            chosen.append(("tag", n, refs.tags[n]))
        else:
            raise UsageError(f"no branch or tag {n!r} to push", hint="`pienv branch` lists them")
    if not chosen:
        branch = refs.head_branch
        if branch is None or branch not in refs.branches:
            raise UsageError("HEAD names no branch with commits: name what to push")
        chosen.append(("branch", branch, refs.branches[branch]))
    commits = ctx.store.commits()
    heads = dag.ancestor_sets(commits, {c for _, _, c in chosen})
    out = []
    for kind, n, head in dict.fromkeys(chosen):
        ctx.commit(head)  # an unindexed head: one clear line
        out.append(Target(kind, n, head, heads[head], view.refs.get((kind, n))))
    return out


def _squash(ctx: Context, t: Target, force: bool) -> None:
    """Replace ``t``'s head by a one-layer copy with no parents (files deleted on the way
    are not in it; nothing of the history travels). A remote head that is an earlier squash
    of this line (its flattened-from is in our history) counts as an ancestor; a squash of
    the very same head is reused, so pushing again sends nothing."""
    commits = ctx.store.commits()
    r = t.remote
    old = commits.get(r.head) if r else None
    if old is not None and not old.parents and old.flattened_from == t.head:
        t.head, t.history = old.id, {old.id}
        return
    if r is not None and not force and (old is None or old.flattened_from not in t.history):
        raise UsageError(
            f"the remote {t.kind} {t.name!r} ({short(r.head)}) is not a squash of this "
            f"{t.kind}'s history: nothing was pushed",
            hint="`push --squash --force` replaces it",
        )
    flat = flatten_image(ctx, t.head, None, keep_parent=False)
    t.history = {flat.id} | ({r.head} if r is not None else set())
    t.head = flat.id


def _refuse_non_fast_forward(remote: str, targets: list[Target], force: bool) -> None:
    for t in targets:
        r = t.remote
        if r is None or r.head == t.head or force:
            continue
        if t.kind == "tag":
            raise UsageError(
                f"tag {t.name!r} on {remote} names {short(r.head)}, not {short(t.head)}; "
                "nothing was pushed",
                hint="`push --force` moves it",
            )
        if r.head not in t.history:
            raise UsageError(
                f"{remote}/{t.name} is at {short(r.head)}, which is not an ancestor of "
                f"{t.name} ({short(t.head)}): not a fast-forward; nothing was pushed",
                hint=f"`pienv fetch {remote}` and look (`pienv log --graph --all`); "
                "`push --force` overwrites their head",
            )


def _remote_commits(client: Client, view: RemoteView, wanted: set[str]) -> dict[str, Descriptor]:
    """Descriptors of the commits of ``wanted`` the remote already holds: from its ref
    indexes, or (a commit pushed by a push that stopped before its index) its own tag."""
    known: dict[str, Descriptor] = {}
    for ref in view.refs.values():
        known.update({c: d for c, d in ref.commits.items() if c in wanted})
    tagged = set(view.tags)
    for cid in wanted - set(known):
        if commit_tag(cid) not in tagged:
            continue
        got = client.manifest(commit_tag(cid))
        # Only if it is this commit's image: the tag holds 12 hex digits of the id, and anyone
        # who can push there can put another image under it.
        if got is not None and _config_digest(got[2]) == "sha256:" + cid:
            known[cid] = Descriptor(cid, got[0], got[1], len(got[2]))
    return known


def _config_digest(manifest: bytes) -> str | None:
    import json

    try:
        return str(json.loads(manifest)["config"]["digest"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_secrets(ctx: Context, missing: list[str], force: bool, on_progress: OnProgress) -> None:
    commits = [ctx.commit(c) for c in missing]
    old = pushscan.legacy(commits)
    if old and not force:
        c = old[0]
        raise SecretsFound(
            f"commit {c.short} ({c.created[:10]}) was made before agent logins moved out of "
            f"images ({len(old)} such commit{'' if len(old) == 1 else 's'} to push): it may "
            "hold a login; nothing was pushed",
            hint="`pienv show` it; `push --force` sends it anyway",
        )
    if on_progress:
        on_progress(Progress("scan", 0, len(missing)))
    found = pushscan.scan(ctx.engine(), commits)
    if found:
        f = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise SecretsFound(
            f"commit {short(f.commit)} holds {f.what} at {f.path}{more}; nothing was pushed",
            hint="a file deleted by a later run stays in this commit's layer: reset the "
            "branch to before it, or `push --squash`",
        )


def _send(
    ctx: Context,
    location: Location,
    client: Client,
    commit_and_parent: tuple[str, str | None],
    meter: Meter,
    on_progress: OnProgress,
    count: tuple[int, int],
) -> Descriptor:
    """Push one commit; ``commit_and_parent``: its id and its parent's manifest digest on the
    remote (None: no parent there)."""
    n, total = count
    cid, below = commit_and_parent
    before = meter.total

    def event(e: Any) -> None:
        moved = meter.feed(e)
        if on_progress:
            line = f"{e.get('id', '')} {e.get('status', '')}".strip()
            on_progress(Progress("push", n - 1, total, line, moved))

    digest = ctx.engine().push_image(
        cid, str(location), commit_tag(cid), engine_auth(location), event
    )
    meter.next_image()
    got = client.head_manifest(digest or commit_tag(cid))
    if got is None:
        raise ConcurrentUpdate(f"the registry lost commit {short(cid)} right after its push")
    if meter.total == before:  # the engine reported no byte counts (Podman): the layers
        meter.base += _new_layer_bytes(client, digest or got[0], below)  # over the parent's
    if on_progress:
        on_progress(Progress("push", n, total, "", meter.total))
    commit = ctx.commit(cid)
    return Descriptor(cid, digest or got[0], got[1], got[2], commit.parents)


def _write_ref(
    ctx: Context, client: Client, t: Target, known: dict[str, Descriptor], force: bool
) -> PushedRef:
    commits = ctx.store.commits()
    order = dag.log_order(commits, [t.head])
    descs = {c: _with_parents(known[c], commits[c].parents) for c in order}
    ref = RemoteRef(t.kind, t.name, t.head, descs, by=who())
    old = t.remote.head if t.remote else None
    tag = ref_tag(t.kind, t.name)
    if t.kind == "branch":
        _claim(client, t, descs[t.head], old, force)
    elif not force and (now := _remote_head(client, t)) != old:
        # Tags have no push records; this narrows the race to the next two requests.
        raise ConcurrentUpdate(
            f"tag {t.name!r} was set on the remote to {short(now) if now else '(gone)'} since "
            "this push read it; nothing was overwritten",
            hint="`pienv fetch` and look; `push --force` moves it",
        )
    body = build_index(ref, order)
    client.put_manifest(tag, body, INDEX, if_match=t.remote.digest if t.remote else None)
    got = client.manifest(tag)
    back = parse_index(got[2], got[0]) if got else None
    if back is None or back.head != t.head:
        now = short(back.head) if back else "gone"
        raise ConcurrentUpdate(
            f"another push moved {t.kind} {t.name!r} on the remote at the same moment (it is "
            f"at {now}): this push lost; its commits stay on the remote and its record shows "
            "at the next fetch",
            hint="`pienv fetch`, then pull or push again",
        )
    outcome: Outcome = "created" if old is None else "pushed"
    if old is not None and old not in t.history:
        outcome = "forced"
    return PushedRef(t.kind, t.name, old, t.head, outcome)


def _with_parents(d: Descriptor, parents: tuple[str, ...]) -> Descriptor:
    return Descriptor(d.id, d.digest, d.media_type, d.size, parents)


def _claim(client: Client, t: Target, head: Descriptor, old: str | None, force: bool) -> None:
    """Write this push's record, then make sure the remote head is still the one this push
    read (a push that finished while this one uploaded, longer ago than its record's grace
    time, is no live rival but moved the head) and that no other live push from the same
    remote head for another head goes ahead too. Of two overlapping pushes, at least the
    later one to list the tags sees the other's record. One that sees a rival with a smaller
    head id withdraws and refuses; one that sees a larger one waits until that rival
    withdraws (then goes on) or the branch moves (then refuses). A push only writes the
    branch when no live rival is left, and withdraws before it refuses, so at most one of
    them moves it."""
    attempt = os.urandom(6).hex()
    body = record_body(head, t.name, old, who(), attempt)
    client.put_manifest(record_tag(t.head, t.name), body, INDEX)
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        now = _remote_head(client, t)
        rival = _rival(client, t, old)
        if (now == old or force) and rival is None:
            return
        waiting = now == old and rival is not None and short(t.head) > rival[0]
        if waiting and time.monotonic() <= deadline:
            time.sleep(0.3)
            continue
        client.put_manifest(record_tag(t.head, t.name, withdrawn=True), body, INDEX)
        if now != old and not force:
            raise ConcurrentUpdate(
                f"{t.kind} {t.name!r} moved on the remote to {short(now) if now else '(gone)'} "
                f"since this push read it at {short(old) if old else '(none)'}; nothing was "
                "overwritten",
                hint="`pienv fetch`, then pull or push again",
            )
        head12, by = rival or ("", "")
        raise ConcurrentUpdate(
            f"another push to {t.kind} {t.name!r} started from the same remote head "
            f"(by {by or 'someone'}, commit {head12}); nothing was overwritten",
            hint="`pienv fetch`, then pull or push again",
        )


def _rival(client: Client, t: Target, old: str | None) -> tuple[str, str] | None:
    """(head12, by) of a live push record for ``t`` from the same remote head; None."""
    tags = client.tags()
    present = set(tags)
    esc = escape(t.name)
    for tag in tags:
        rec = parse_record(tag)
        if rec is None or rec[2] or rec[1] != esc or rec[0] == short(t.head):
            continue
        if any(c.startswith(rec[0]) for c in t.history):
            continue  # an earlier push of our own history
        got = client.manifest(tag)
        notes = notes_of(got[2]) if got else {}
        pushed = notes.get("dev.pienv.pushed", "")
        if not pushed or age(pushed) >= RECORD_GRACE or notes.get("dev.pienv.old") != (old or ""):
            continue
        if withdrawn(client, tag, present, notes):
            continue
        return rec[0], notes.get("dev.pienv.by", "")
    return None


def _remote_head(client: Client, t: Target) -> str | None:
    got = client.manifest(ref_tag(t.kind, t.name))
    ref = parse_index(got[2], got[0]) if got else None
    return ref.head if ref else None


def _new_layer_bytes(client: Client, digest: str, below: str | None) -> int:
    """Bytes of the layers of manifest ``digest`` that manifest ``below`` lacks."""
    import json

    def layers(ref: str | None) -> dict[str, int]:
        got = client.manifest(ref) if ref else None
        try:
            data = json.loads(got[2]) if got else {}
            return {str(x["digest"]): int(x["size"]) for x in data.get("layers") or []}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}

    old = layers(below)
    return sum(size for d, size in layers(digest).items() if d not in old)
