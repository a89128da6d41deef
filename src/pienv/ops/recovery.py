"""Runs that never got committed: orphans, recover, clean-orphans, unlock (rule 1 in
docs/rules.md: what no run or finalizer committed is listed and restorable)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pienv import locks
from pienv.errors import UsageError
from pienv.locks import DETACHED, name_of
from pienv.model import INTERNAL, LABEL, JsonResult, RunInfo, short
from pienv.ops.context import Context
from pienv.ops.finish import finalize
from pienv.ops.sandbox import remove_env_file, run_token

if TYPE_CHECKING:
    from pienv.engine import ContainerStatus


@dataclass(frozen=True)
class Orphan(JsonResult):
    container: str
    name: str
    branch: str | None  # None: a detached HEAD
    parent: str
    started: str
    state: ContainerStatus
    exit_code: int | None
    holder_pid: int
    holder_alive: bool
    handled: bool  # the branch lock is held: a live run or finalizer owns it
    size: int
    info: RunInfo = field(metadata=INTERNAL)

    @property
    def recoverable(self) -> bool:
        return self.state != "running" and not self.handled


def run_containers(ctx: Context, with_size: bool = False) -> list[Orphan]:
    """Every run container of this store (live runs included), oldest first."""
    refs = ctx.refs()
    engine = ctx.engine()
    rows = engine.containers([f"{LABEL}store={refs.store_id}", f"{LABEL}role=run"])
    out = []
    for row in rows:
        info = RunInfo.from_labels(dict(row.labels))
        cid = row.id
        state = row.state
        exit_code = None
        if state == "exited":
            detail = engine.inspect_container(cid)
            exit_code = detail.exit_code if detail else None
        holder = locks.Holder(info.pid, info.pid_start, info.host, info.started, "", "")
        # A finalizer at work on it (committing it in the background, or waiting for it after
        # its pienv died) names the container in the branch's lock record: that is its holder.
        owner = locks.read_holder(ctx.store.locks_dir, name_of(info.branch))
        if owner is not None and owner.container == cid:
            holder = owner
        out.append(
            Orphan(
                container=cid,
                name=row.name,
                branch=info.branch,
                parent=info.parent,
                started=info.started,
                state=state,
                exit_code=exit_code,
                holder_pid=holder.pid,
                holder_alive=holder.alive(),
                handled=locks.is_locked(ctx.store.locks_dir, name_of(info.branch)),
                size=engine.container_size(cid) if with_size else 0,
                info=info,
            )
        )
    out.sort(key=lambda o: o.started)
    return out


def orphans(ctx: Context, with_size: bool = True) -> list[Orphan]:
    """Run containers no live run owns (their pienv died, and no finalizer is at work)."""
    return [o for o in run_containers(ctx, with_size) if not (o.handled and o.holder_alive)]


def auto_recover(ctx: Context, branch: str | None) -> list[str]:
    """Called under ``branch``'s lock by `run`: commit its finished orphans first."""
    notes = []
    for o in run_containers(ctx):
        if o.branch != branch or o.state == "running" or o.holder_alive:
            continue
        try:
            result = finalize(ctx, o.container, o.info, None, False)
        finally:
            remove_env_file(ctx.store.runs_dir, o.name)
        notes.append(_describe(o, result.commit.short if result.commit else "", result.branch))
    return notes


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
                note=_describe(o, commit, result.branch),
            )
        )
    return out


def _describe(o: Orphan, commit: str, branch: str | None) -> str:
    if not commit:
        return f"orphan {o.container[:12]} changed nothing; removed"
    if branch == o.branch:
        return f"orphan {o.container[:12]} committed as {commit} on {name_of(branch)!r}"
    return (
        f"orphan {o.container[:12]} committed as {commit} on new branch {branch!r} "
        f"({name_of(o.branch)!r} had moved past its parent {short(o.parent)})"
    )


def clean(ctx: Context, dry_run: bool) -> list[Orphan]:
    gone = [o for o in orphans(ctx, with_size=True) if o.recoverable]
    if not dry_run:
        engine = ctx.engine()
        for o in gone:
            engine.remove_container(o.container, force=True)
            remove_env_file(ctx.store.runs_dir, o.name)
    return gone


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
