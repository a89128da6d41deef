"""`pienv orphans`, `recover`, `clean-orphans`, `unlock`: runs that never got committed
(rule 1 in docs/rules.md). The orphan search itself is the run loop's (runloop.orphans)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from pienv import locks
from pienv.context import Context
from pienv.errors import UsageError
from pienv.locks import DETACHED, name_of
from pienv.model import LABEL
from pienv.runloop.finish import finalize
from pienv.runloop.helpers import INSTALL
from pienv.runloop.orphans import Orphan, describe, orphans
from pienv.runloop.sandbox import remove_env_file, run_token

__all__ = ["Orphan", "clean", "orphans", "recover", "remove_stale_env_files", "unlock"]


@dataclass(frozen=True)
class Recovered:
    container: str
    commit: str  # "" when the orphan changed nothing
    branch: str | None  # None: a detached HEAD
    note: str


def recover(ctx: Context, target: str | None) -> list[Recovered]:
    """Commit one orphan (container id/name prefix) or all recoverable ones (target None)."""
    found = orphans(ctx, with_size=False)
    if target is not None:
        found = [o for o in found if o.container.startswith(target) or o.name == target]
        if not found:
            raise UsageError(
                f"no orphan container {target!r} in this store", hint="`pienv orphans`"
            )
        if found[0].state == "running":
            raise UsageError(
                f"container {target} is still running",
                hint=f"wait for it to finish or stop it with `docker stop {found[0].name}`",
            )
    out = []
    for o in found:
        if not o.recoverable:
            continue
        lock, _ = locks.acquire(ctx.store.locks_dir, name_of(o.branch), o.info.workspace)
        try:
            if ctx.engine().inspect_container(o.container) is None:
                continue  # a finalizer committed it while we waited for the lock
            result = finalize(ctx, o.container, o.info, None, False)
        finally:
            lock.release()
            remove_env_file(ctx.store.runs_dir, o.name)
        commit = result.commit.short if result.commit else ""
        out.append(
            Recovered(
                container=o.container,
                commit=commit,
                branch=result.branch,
                note=describe(o, commit, result.branch),
            )
        )
    return out


def clean(ctx: Context, dry_run: bool) -> list[Orphan]:
    gone = [o for o in orphans(ctx, with_size=True) if o.removable]
    if not dry_run:
        engine = ctx.engine()
        for o in gone:
            engine.remove_container(o.container, force=True)
            remove_env_file(ctx.store.runs_dir, o.name)
            if o.kind == INSTALL:
                _drop_unfinished_image(ctx, o.container)
    return gone


def _drop_unfinished_image(ctx: Context, container: str) -> None:
    """An install killed after its engine commit and before its commit was indexed left an
    image labelled with its container that no branch, tag or index entry knows: the install
    never happened (the next run installs again), so the image goes with its container."""
    engine = ctx.engine()
    index = ctx.store.commits()
    rows = engine.images([f"{LABEL}store={ctx.store_id}", f"{LABEL}container={container}"])
    for row in rows:
        if row.id not in index:
            engine.remove_image(row.id)


# A run writes its env file just before it creates its container: younger files may belong
# to a run that is still starting.
ENV_FILE_GRACE = 120.0


def remove_stale_env_files(ctx: Context, grace: float = ENV_FILE_GRACE) -> list[str]:
    """Remove env files (``runs/*.env``, they may hold API keys) that no starting or running
    container of this store (a run, or its agent install step) needs any more; return their
    names."""
    live = set()
    for row in ctx.engine().containers([f"{LABEL}store={ctx.refs().store_id}"]):
        token = run_token(row.name)
        if token and row.state in ("created", "running", "restarting", "paused"):
            live.add(token)
    gone = []
    now = time.time()
    for path in sorted(ctx.store.runs_dir.glob("*.env")):
        try:
            young = now - path.stat().st_mtime < grace
        except OSError:
            continue
        if path.stem in live or young:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            gone.append(path.name)
    return gone


@dataclass(frozen=True)
class UnlockResult:
    branch: str
    was_locked: bool
    holder: locks.Holder | None


def unlock(ctx: Context, branch: str, force: bool) -> UnlockResult:
    """Clear the holder record of a lock nobody holds.

    The flock is the truth: a held lock cannot be broken (not even with ``force``), because
    its holder would go on running and committing while a second run starts on the branch;
    the kernel frees it when the holder exits. The lock file is never unlinked, so every
    later run locks the same file.
    """
    locks_dir = ctx.store.locks_dir
    if not locks.lock_path(locks_dir, branch).exists():
        refs = ctx.refs()
        if branch not in refs.branches and branch != DETACHED:
            raise UsageError(
                f"no branch or lock named {branch!r}", hint="`pienv status` lists the held locks"
            )
        return UnlockResult(branch=branch, was_locked=False, holder=None)
    # A finished run's background commit frees the lock within moments: wait for it.
    locks.await_commit(locks_dir, branch, 120.0)
    holder = locks.read_holder(locks_dir, branch)
    if locks.is_locked(locks_dir, branch):
        who = f"live pid {holder.pid}" if holder else "a live process"
        since = f" (since {holder.since[:19]}, workspace {holder.workspace})" if holder else ""
        stop = f"`kill {holder.pid}`" if holder else "stop it"
        raise UsageError(
            f"branch {branch!r} is locked by {who}{since}"
            + ("; a held lock cannot be broken, even with --force" if force else ""),
            hint=f"the lock frees itself when that run ends; {stop} ends it (its changes are "
            "committed first)",
        )
    locks.clear_record(locks_dir, branch)
    return UnlockResult(branch=branch, was_locked=False, holder=holder)
