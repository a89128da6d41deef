"""Maintenance that rewrites a branch's images: flatten, reset --system/--all.

prune, doctor and fsck have their own modules (ops/prune.py, ops/doctor.py, ops/fsck.py); the
names are re-exported here for callers that import them from maint.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

from pienv import locks
from pienv.context import Context
from pienv.errors import UsageError
from pienv.locks import name_of
from pienv.model import Commit, short
from pienv.ops.doctor import Check, doctor
from pienv.ops.fsck import FsckResult, fsck
from pienv.ops.prune import KeptInUse, PruneResult, prune
from pienv.runloop import baseimage as basemod
from pienv.runloop import keeper
from pienv.runloop.commits import flatten_image, make_root
from pienv.runloop.egressrun import label_of
from pienv.runloop.sandbox import AGENT_HOME

__all__ = [
    "BaseResetResult",
    "Check",
    "FlattenResult",
    "FsckResult",
    "KeptInUse",
    "PruneResult",
    "doctor",
    "flatten",
    "fsck",
    "prune",
    "reset_base",
]

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
        keeper.sync(ctx)
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
        # The branch keeps its policy (reset --system moves the environment, not it), and
        # the new root carries it: a later reset back there keeps it too.
        policy = label_of(ctx, branch)
        if keep_home:
            new = _base_with_home(ctx, base.image, old, branch, AGENT_HOME, policy)
            what = f"reset --system: base {base.image} + {AGENT_HOME} of {short(old)}"
        else:
            new = make_root(ctx, base.image, branch, egress=policy)
            what = f"reset --all: bare base {base.image}"
        with ctx.store.transaction(what) as txn:
            txn.move_head(branch, old, new.id)
            txn.refs.base = base.image
        keeper.sync(ctx)
    finally:
        lock.release()
    return BaseResetResult(branch, old, new.id, what)


def _base_with_home(
    ctx: Context, base_image: str, old: str, branch: str | None, home: str, policy: str
) -> Commit:
    engine = ctx.engine()
    src = engine.create_stopped(old, kind="reset")
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
    return make_root(ctx, base_image, branch, message, "reset-system", copy_home, policy)


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
