"""The orphan search: run containers of this store that no live run owns (rule 1 in
docs/rules.md: what no run or finalizer committed is listed and restorable), and the run's
first step under its lock, committing its branch's finished orphans (`auto_recover`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pienv import locks
from pienv.context import Context
from pienv.locks import name_of
from pienv.model import INTERNAL, LABEL, JsonResult, RunInfo, short
from pienv.runloop.finish import finalize
from pienv.runloop.helpers import KINDS
from pienv.runloop.sandbox import remove_env_file

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
    kind: str = "run"  # or a helper's (runloop/helpers.py): flatten, install

    @property
    def recoverable(self) -> bool:
        return self.kind == "run" and self.state != "running" and not self.handled

    @property
    def removable(self) -> bool:
        """What `clean-orphans` removes: a recoverable run, or a dead pienv's helper."""
        return self.recoverable or (self.kind != "run" and not self.holder_alive)


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
    """Run containers no live run owns (their pienv died, and no finalizer is at work), then
    the helper containers (a flatten's copy, an install) a dead pienv left."""
    runs = [o for o in run_containers(ctx, with_size) if not (o.handled and o.holder_alive)]
    return runs + helper_orphans(ctx)


def helper_orphans(ctx: Context) -> list[Orphan]:
    """Helper containers of this store whose pienv is dead (a kill -9 during a flatten or an
    install: nothing else removes them)."""
    engine = ctx.engine()
    out = []
    for kind in KINDS:
        for row in engine.containers(
            [f"{LABEL}store={ctx.refs().store_id}", f"{LABEL}role={kind}"]
        ):
            info = RunInfo.from_labels(dict(row.labels))
            holder = locks.Holder(info.pid, info.pid_start, info.host, info.started, "", "")
            if holder.alive():
                continue  # its pienv is at work on it
            out.append(
                Orphan(
                    container=row.id,
                    name=row.name,
                    branch=info.branch,
                    parent=info.parent,
                    started=info.started,
                    state=row.state,
                    exit_code=None,
                    holder_pid=info.pid,
                    holder_alive=False,
                    handled=False,
                    size=0,
                    info=info,
                    kind=kind,
                )
            )
    out.sort(key=lambda o: o.started)
    return out


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
        notes.append(describe(o, result.commit.short if result.commit else "", result.branch))
    return notes


def describe(o: Orphan, commit: str, branch: str | None) -> str:
    if not commit:
        return f"orphan {o.container[:12]} changed nothing; removed"
    if branch == o.branch:
        return f"orphan {o.container[:12]} committed as {commit} on {name_of(branch)!r}"
    return (
        f"orphan {o.container[:12]} committed as {commit} on new branch {branch!r} "
        f"({name_of(o.branch)!r} had moved past its parent {short(o.parent)})"
    )
