"""Making env commits: root from a base, a run container, a flattened head.

Every commit is: image committed with its parent's own config plus the full pienv label set
(`Engine.commit(cid, parent, labels)`), tagged in the store's repository so `docker image
prune` keeps it, then appended to the commit index. Moving a ref is the caller's business.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from pienv.config import CACHES
from pienv.context import Context
from pienv.engine import EMPTY_LAYER, Engine, ImageInfo
from pienv.errors import EngineError, MaxDepthExceeded
from pienv.model import LABEL, Commit, CommitKind, short
from pienv.runloop.helpers import FLATTEN, helper_labels
from pienv.runloop.sandbox import ENV_FILE, TMPFS, WORKSPACE
from pienv.runloop.spec import MountPoint
from pienv.store import crashpoint

# Progress of a long copy: (bytes done, bytes expected); the expected total is an estimate
# (an image's size; the tar stream runs a little over it).
ProgressFn = Callable[[int, int], None]


def run_mount_points(engine: Engine) -> tuple[MountPoint, ...]:
    """The mount points of every run: the workspace, the env file, the temp directories
    (tmpfs) and the engine's init; and what the engine itself writes into every run's
    layer (Podman's `/etc/mtab`)."""
    return (
        MountPoint(WORKSPACE),
        *(MountPoint(path, mode=0o1777) for path in TMPFS),
        MountPoint(ENV_FILE, directory=False),
        MountPoint(engine.init_path(), directory=False),
        *(MountPoint(path, directory=False, link=link) for path, link in engine.made_paths()),
    )


def prepare(engine: Engine, cid: str, extra: Sequence[MountPoint] = ()) -> list[str]:
    """The one "prepare" step of every commit pienv makes itself (root, flatten, reset
    --system/--all, a run's missing mount points): give the never-started container ``cid``
    what a run would otherwise create in its writable layer, so that a run which changed
    nothing leaves that layer empty and adds no commit (design rule 3). Returns the paths
    it created.

    Today: the run's mount points (``run_mount_points`` and ``extra``), made as the engine
    makes them (directories or empty files, root, 0755; parents created, symlinked parents
    followed, so ``/sbin/docker-init`` lands in ``/usr/sbin`` on merged-/usr bases). Only
    missing paths are written: an existing one keeps its owner, mode and time.

    Extend it here, not beside it (issue 12: the host user's passwd entry, home and sudo
    rule; the agent's state and cache mount points): everything a run would otherwise
    create belongs in this one step, so every pienv-made commit gets it.
    """
    points = [*run_mount_points(engine), *extra]
    missing = [m for m in points if not engine.path_exists(cid, m.path)]
    if missing:
        engine.write_archive(cid, "/", _mount_point_tar(missing))
    return [m.path for m in missing]


def _mount_point_tar(points: Sequence[MountPoint]) -> bytes:
    # Only the leaves: the engine makes missing parents itself (0755, root) and follows a
    # parent that is a symlink, where a directory entry for it would replace the symlink.
    import tarfile  # here, not at the top: ~6 ms off every run's start (rarely needed)

    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in points:
            entry = tarfile.TarInfo(m.path.strip("/"))
            entry.type = tarfile.DIRTYPE if m.directory else tarfile.REGTYPE
            entry.mode, entry.mtime = m.mode, now
            if m.link:
                entry.type, entry.linkname, entry.mode = tarfile.SYMTYPE, m.link, 0o777
            tar.addfile(entry)
    return buf.getvalue()


def finish(
    ctx: Context,
    engine: Engine,
    image_id: str,
    commit: Commit,
    changes: list[tuple[str, str]] | None,
    parent_image: ImageInfo | None,
    index: bool = True,
    info: ImageInfo | None = None,
) -> Commit:
    """Tag the new image, measure it, and index it (``index=False``: the caller indexes it in
    the transaction that moves its ref, see docs/architecture.md; ``info``: the new image,
    if inspected)."""
    crashpoint("committed")
    engine.tag(image_id, ctx.repository(), short(image_id))
    info = info or engine.inspect_image(image_id)
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
    fill: Callable[[str], None] | None = None,
    extra: Sequence[MountPoint] = (),
) -> tuple[str, list[str]]:
    """Commit a never-started container of ``image`` with ``config_from``'s config + labels,
    after ``fill`` (which may copy files in) and the prepare step; the new image's id and
    the paths the prepare step created."""
    # The labels go on the container too: an engine whose commit keeps the container's
    # labels (Podman) then needs no label sent as text (engine.commit).
    cid = engine.create_stopped(image, labels=labels)
    try:
        if fill is not None:
            fill(cid)
        made = prepare(engine, cid, extra)
        return engine.commit(cid, config_from, labels), made
    finally:
        engine.remove_container(cid, force=True)


def make_root(
    ctx: Context,
    base_image: str,
    branch: str | None,
    message: str = "",
    kind: CommitKind = "root",
    fill: Callable[[str], list[str]] | None = None,
    egress: str = "",
) -> Commit:
    """The base image plus one small layer that prepares it for the host user (see
    ``ops.hostuser``) and holds the run's mount points (``prepare``), labelled for this store;
    ``fill`` may copy more in (reset --system's home) and returns the paths it wrote.
    ``egress``: the policy hash of the branch it is made for (runloop/egressrun.label_of)."""
    from pienv.runloop.hostuser import prepare_host_user

    engine = ctx.engine()
    base = engine.inspect_image(base_image)
    if base is None:
        raise EngineError(f"base image {base_image!r} is not there")
    draft = Commit.draft(branch, message or f"root: base {base_image}", kind, egress=egress)
    written: list[str] = []

    def prepare(cid: str) -> None:
        user = prepare_host_user(
            engine, cid, os.getuid(), os.getgid(), ctx.config.caches, ctx.config.agent.state
        )
        engine.write_archive(cid, "/", user.tar)
        written.extend(user.paths)
        if fill is not None:
            written.extend(fill(cid))

    # The shared caches outside the home (the home's are made for the host user above).
    caches = [MountPoint(p) for _, p in CACHES if ctx.config.caches and p.startswith("/")]
    image_id, made = commit_fresh(
        engine, base.id, base, draft.labels(ctx.store_id), prepare, caches
    )
    written.extend(made)
    # Measured with no parent: the whole image, base included, so `status` shows the
    # environment's real size (prune subtracts what the base itself still holds).
    return finish(ctx, engine, image_id, draft, [("A", p) for p in written], None)


# Image label listing the per-run mount points (a worktree's git dir, configured mounts) an
# image is known to hold. Not a commit key: descendants inherit it with their parent's config.
MOUNT_POINTS_LABEL = LABEL + "mount-points"


def known_mount_points(image: ImageInfo) -> set[str]:
    try:
        return set(json.loads(image.labels.get(MOUNT_POINTS_LABEL) or "[]"))
    except (ValueError, TypeError):
        return set()


def make_prepared(
    ctx: Context, parent: str, branch: str | None, extra: Sequence[MountPoint], egress: str = ""
) -> Commit:
    """A child of ``parent`` holding the mount points ``extra`` that a run is about to get
    (a linked worktree's git dir, a configured mount) and listing them in its labels: so a
    run that changes nothing there adds no commit, and no later run checks again.
    ``egress``: the policy hash of the run it is made for (a reset there keeps it)."""
    engine = ctx.engine()
    info = engine.inspect_image(parent)
    if info is None:
        raise EngineError(f"image {short(parent)} is not there")
    old = ctx.store.commits().get(parent)
    draft = Commit.draft(
        branch,
        f"prepare: mount points {', '.join(m.path for m in extra)}",
        "prepare",
        parents=(parent,),
        workspace=old.workspace if old else "",
        git_head=old.git_head if old else "",
        code=old.code if old else "",
        egress=egress,
    )
    labels = draft.labels(ctx.store_id)
    known = known_mount_points(info) | {m.path for m in extra}
    labels[MOUNT_POINTS_LABEL] = json.dumps(sorted(known))
    image_id, made = commit_fresh(engine, parent, info, labels, None, extra)
    return finish(ctx, engine, image_id, draft, [("A", p) for p in made], info)


def commit_container(
    ctx: Context,
    cid: str,
    draft: Commit,
    parent_image: ImageInfo | None,
    index: bool = True,
) -> Commit | None:
    """Commit a run container on top of its parent, or None when the commit captured nothing.

    "Changed" is decided by what the commit holds, never by `docker diff` (which misses a
    same-size rewrite within the second of the previous write, and walks the whole image):
    an unchanged writable layer commits to an image with exactly the parent's layers, which
    is removed again. The cost is the commit's, proportional to the change. Mount points are
    not in that layer because pienv's own commits hold them (``prepare``). At max depth the
    container is squashed into one layer and committed (whether or not it changed).
    """
    engine = ctx.engine()
    draft = replace(draft, container=cid)
    try:
        image_id = engine.commit(cid, parent_image, draft.labels(ctx.store_id))
        crashpoint("imaged")  # labelled, not yet known to add a layer
    except MaxDepthExceeded:
        # Docker refuses a layer past ~125: squash the container's whole filesystem (its
        # changes included) into one layer and commit that with the parent's config.
        draft = replace(draft, flattened_from=draft.parents[0] if draft.parents else "")
        image_id = _squash_commit(engine, cid, parent_image, draft.labels(ctx.store_id), None)
        return finish(ctx, engine, image_id, draft, None, parent_image, index)
    info = engine.inspect_image(image_id)
    if info is not None and not adds_layer(info, parent_image):
        engine.remove_image(image_id)
        return None
    return finish(ctx, engine, image_id, draft, None, parent_image, index, info)


def adds_layer(image: ImageInfo, parent: ImageInfo | None) -> bool:
    """Whether ``image`` holds a layer with content beyond ``parent``'s layers (Podman adds an
    empty layer to every commit; Docker adds none when nothing changed)."""
    if parent is None or image.layers[: len(parent.layers)] != parent.layers:
        return True
    return any(layer != EMPTY_LAYER for layer in image.layers[len(parent.layers) :])


def captures_anything(engine: Engine, cid: str, parent_image: ImageInfo | None) -> bool:
    """Whether committing container ``cid`` would add a layer (the probe image is removed)."""
    probe = engine.commit(cid, parent_image, {})
    try:
        info = engine.inspect_image(probe)
        return info is None or adds_layer(info, parent_image)
    finally:
        engine.remove_image(probe)


def flatten_image(
    ctx: Context,
    image_id: str,
    branch: str | None,
    on_progress: ProgressFn | None = None,
    keep_parent: bool = True,
) -> Commit:
    """A one-layer copy of ``image_id`` with its whole config; parent = the old commit
    (``keep_parent=False``: no parent, `push --squash`'s history-free snapshot).

    It costs a copy of the whole image (export streamed into an import, then a commit for
    the config), so it runs only every ``flatten_at`` layers; ``on_progress`` follows the copy.
    """
    engine = ctx.engine()
    info = engine.inspect_image(image_id)
    if info is None:
        raise EngineError(f"image {short(image_id)} is not there")
    old = ctx.store.commits().get(image_id)
    draft = Commit.draft(
        branch,
        f"flatten {short(image_id)} ({info.depth} layers -> 1)",
        "flatten",
        parents=(image_id,) if keep_parent else (),
        flattened_from=image_id,
        workspace=old.workspace if old else "",
        git_head=old.git_head if old else "",
        code=old.code if old else "",
        # A copy of its parent: a reset to it gives the branch the policy that one ran under.
        egress=old.egress if old else "",
    )
    done = 0

    def counted(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, max(info.size, done))

    # Labelled (the copy is exported, never committed): a kill -9 here leaves it Created,
    # and `pienv orphans` lists it by these labels.
    cid = engine.create_stopped(image_id, labels=helper_labels(ctx.store_id, FLATTEN))
    try:
        crashpoint("flattening")  # tests: pienv killed while its copy container exists
        new_id = _squash_commit(engine, cid, info, draft.labels(ctx.store_id), counted)
    finally:
        engine.remove_container(cid, force=True)
    return finish(ctx, engine, new_id, draft, [], info)


def _squash_commit(
    engine: Engine,
    cid: str,
    config_from: ImageInfo | None,
    labels: dict[str, str],
    on_bytes: Callable[[int], None] | None,
) -> str:
    """Export container ``cid`` as one layer, then give it ``config_from``'s config + labels."""
    flat = engine.export_container(cid, on_bytes)
    try:
        return commit_fresh(engine, flat, config_from, labels)[0]
    finally:
        # The bare imported image is only an intermediate; its layer lives on in the commit.
        engine.remove_image(flat)


def host_ids() -> str:
    return f"{os.getuid()}:{os.getgid()}"
