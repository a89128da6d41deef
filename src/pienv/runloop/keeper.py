"""Keepers: one container per branch head and tag, created and never started, so that what a
ref points at survives `docker image prune -a` and `docker rmi TAG`.

An image a container uses is never pruned, and its last tag cannot be removed without `-f`.
Measured on Docker 20.10 and Podman 4.3 (docs/recovery.md has the matrix): on Docker the
ancestors of a kept head stay too (as its parents; prune -a only untags them, and pienv tags
them again), on Podman only the kept image itself stays. `docker system prune -a` removes
stopped containers first, keepers included: against it only a copy elsewhere (`pienv push`)
protects. A keeper costs a container record and an empty writable layer; no process.
"""

from __future__ import annotations

from pienv.context import Context
from pienv.errors import PienvError
from pienv.model import LABEL
from pienv.store import Refs

ROLE = "keeper"


def targets(refs: Refs) -> set[str]:
    """What the keepers keep: every branch head, every tag, a detached HEAD."""
    out = {*refs.branches.values(), *refs.tags.values()}
    if refs.head_detached:
        out.add(refs.head_detached)
    return out


def sync(ctx: Context, refs: Refs | None = None) -> list[str]:
    """Make the keepers match the refs: one per target, none for anything else. Returns the
    targets whose image is gone (nothing can keep those). Best effort: a failure here never
    fails the command that moved a ref (the next sync catches up)."""
    try:
        return _sync(ctx, refs or ctx.refs())
    except PienvError:
        return []


def _sync(ctx: Context, refs: Refs) -> list[str]:
    from pienv.engine import HTTPError

    engine = ctx.engine()
    want = targets(refs)
    have: set[str] = set()
    for row in engine.containers([f"{LABEL}store={refs.store_id}", f"{LABEL}role={ROLE}"]):
        if row.image_id in want and row.image_id not in have:
            have.add(row.image_id)
        else:
            engine.remove_container(row.id, force=True)
    labels = {f"{LABEL}store": refs.store_id, f"{LABEL}role": ROLE}
    gone = []
    for cid in sorted(want - have):
        try:
            engine.create_stopped(cid, labels)
        except HTTPError as exc:
            if exc.status != 404:
                raise
            gone.append(cid)
    return gone


def unkept(ctx: Context, refs: Refs) -> list[str]:
    """The targets no keeper keeps (`docker system prune` removes stopped containers, keepers
    included; a target whose image is gone is not listed: nothing can keep it)."""
    engine = ctx.engine()
    rows = engine.containers([f"{LABEL}store={refs.store_id}", f"{LABEL}role={ROLE}"])
    kept = {row.image_id for row in rows}
    return sorted(t for t in targets(refs) - kept if engine.inspect_image(t) is not None)
