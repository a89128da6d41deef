"""Making env commits: root from a base, a run container, a flattened head.

Every commit is: image committed with its parent's own config plus the full pienv label set
(`Engine.commit(cid, parent, labels)`), tagged in the store's repository so `docker image
prune` keeps it, then appended to the commit index. Moving a ref is the caller's business.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from pienv.engine import INIT_MOUNTS, Engine, ImageInfo
from pienv.errors import EngineError, MaxDepthExceeded
from pienv.model import Commit, CommitKind, short
from pienv.ops.context import Context
from pienv.store import crashpoint

ProgressFn = Callable[[int], None]


# The engine bind-mounts its init here for init=True; it is not listed in Mounts.
ENGINE_MOUNTS = INIT_MOUNTS


def mount_filter(changes: list[tuple[str, str]], mounts: list[str]) -> list[tuple[str, str]]:
    """Drop the paths Docker creates as mount points (and their parent dirs): not changes."""
    mounts = [*mounts, *ENGINE_MOUNTS]
    out = []
    for kind, path in changes:
        if any(path == m or path.startswith(m + "/") for m in mounts):
            continue
        if kind != "D" and any(m.startswith(path.rstrip("/") + "/") for m in mounts):
            continue
        out.append((kind, path))
    return out


def finish(
    ctx: Context,
    engine: Engine,
    image_id: str,
    commit: Commit,
    changes: list[tuple[str, str]] | None,
    parent_image: ImageInfo | None,
    index: bool = True,
) -> Commit:
    """Tag the new image, measure it, and index it (``index=False``: the caller indexes it in
    the transaction that moves its ref, see docs/architecture.md)."""
    crashpoint("committed")
    engine.tag(image_id, ctx.repository(), short(image_id))
    info = engine.inspect_image(image_id)
    size = (info.size if info else 0) - (parent_image.size if parent_image else 0)
    done = replace(commit, id=image_id, size=max(size, 0), layers=info.depth if info else 0)
    if index:
        ctx.store.add_commit(done, changes)
    return done


def commit_fresh(
    engine: Engine,
    image: str,
    config_from: ImageInfo | None,
    labels: dict[str, str],
    prepare: Callable[[str], None] | None = None,
) -> str:
    """Commit a never-started container of ``image`` with ``config_from``'s config + labels;
    ``prepare`` may copy files into the container first."""
    # The labels go on the container too: an engine whose commit keeps the container's
    # labels (Podman) then needs no label sent as text (engine.commit).
    cid = engine.create_stopped(image, labels=labels)
    try:
        if prepare is not None:
            prepare(cid)
        return engine.commit(cid, config_from, labels)
    finally:
        engine.remove_container(cid, force=True)


def make_root(
    ctx: Context,
    base_image: str,
    branch: str | None,
    message: str = "",
    kind: CommitKind = "root",
    fill: Callable[[str], list[str]] | None = None,
) -> Commit:
    """The base image plus one small layer that prepares it for the host user (see
    ``ops.hostuser``), labelled for this store; ``fill`` may copy more in (reset --system's
    home) and returns the paths it wrote."""
    from pienv.ops.hostuser import prepare_host_user

    engine = ctx.engine()
    base = engine.inspect_image(base_image)
    if base is None:
        raise EngineError(f"base image {base_image!r} is not there")
    draft = Commit.draft(branch, message or f"root: base {base_image}", kind)
    written: list[str] = []

    def prepare(cid: str) -> None:
        user = prepare_host_user(
            engine, cid, os.getuid(), os.getgid(), ctx.config.caches, ctx.config.agent.state
        )
        engine.write_archive(cid, "/", user.tar)
        written.extend(user.paths)
        if fill is not None:
            written.extend(fill(cid))

    image_id = commit_fresh(engine, base.id, base, draft.labels(ctx.store_id), prepare)
    # Measured with no parent: the whole image, base included, so `status` shows the
    # environment's real size (prune subtracts what the base itself still holds).
    return finish(ctx, engine, image_id, draft, [("A", p) for p in written], None)


def commit_container(
    ctx: Context,
    cid: str,
    draft: Commit,
    parent_image: ImageInfo | None,
    changes: list[tuple[str, str]],
    index: bool = True,
) -> Commit:
    """Commit a run container on top of its parent; flatten and retry once at max depth."""
    engine = ctx.engine()
    draft = replace(draft, container=cid)
    try:
        image_id = engine.commit(cid, parent_image, draft.labels(ctx.store_id))
    except MaxDepthExceeded:
        # Docker refuses a layer past ~125: squash the container's whole filesystem (its
        # changes included) into one layer and commit that with the parent's config.
        draft = replace(draft, flattened_from=draft.parents[0] if draft.parents else "")
        image_id = _squash_commit(engine, cid, parent_image, draft.labels(ctx.store_id), None)
    return finish(ctx, engine, image_id, draft, changes, parent_image, index)


def flatten_image(
    ctx: Context, image_id: str, branch: str | None, on_bytes: ProgressFn | None = None
) -> Commit:
    """A one-layer copy of ``image_id`` with its whole config; parent = the old commit."""
    engine = ctx.engine()
    info = engine.inspect_image(image_id)
    if info is None:
        raise EngineError(f"image {short(image_id)} is not there")
    old = ctx.store.commits().get(image_id)
    draft = Commit.draft(
        branch,
        f"flatten {short(image_id)} ({info.depth} layers -> 1)",
        "flatten",
        parents=(image_id,),
        flattened_from=image_id,
        workspace=old.workspace if old else "",
        git_head=old.git_head if old else "",
    )
    cid = engine.create_stopped(image_id)
    try:
        new_id = _squash_commit(engine, cid, info, draft.labels(ctx.store_id), on_bytes)
    finally:
        engine.remove_container(cid, force=True)
    return finish(ctx, engine, new_id, draft, [], info)


def _squash_commit(
    engine: Engine,
    cid: str,
    config_from: ImageInfo | None,
    labels: dict[str, str],
    on_bytes: ProgressFn | None,
) -> str:
    """Export container ``cid`` as one layer, then give it ``config_from``'s config + labels."""
    flat = engine.export_container(cid, on_bytes)
    try:
        return commit_fresh(engine, flat, config_from, labels)
    finally:
        # The bare imported image is only an intermediate; its layer lives on in the commit.
        engine.remove_image(flat)


def host_ids() -> str:
    return f"{os.getuid()}:{os.getgid()}"
