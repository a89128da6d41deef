"""`pienv rebase --onto BASE [BRANCH]`: replay a branch's recorded runs on a new base.

A layer swap is wrong for apt (the dpkg database lives in the base), so each replayable
run's recorded command is run again (its user and working directory), in order, on a fresh
root made from BASE (an image) or on an env commit BASE; each result is a commit labelled
with the commit it replays. An interactive session, or a command that now exits otherwise
than it did, stops the rebase as a git conflict does: HEAD is detached at the replayed tip,
the user fixes it with `pienv run` there, then `--continue`, `--skip` or `--abort` (which
puts HEAD back; the branch never moved). Only the last step moves the branch, by
compare-and-swap; the old head stays in its reflog.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pienv import dag, locks
from pienv.context import Context
from pienv.engine import ImageInfo
from pienv.errors import EngineError, UsageError
from pienv.model import Commit, JsonResult, check_ref_name, short
from pienv.ops import probe, replay
from pienv.runloop.commits import commit_container, finish, make_root
from pienv.runloop.egressrun import label_of
from pienv.store import write_atomic

STATE = "rebase.json"
SCHEMA = 1


@dataclass
class State:
    branch: str
    old_head: str
    onto: str  # what the user named
    tip: str  # the newest commit of the replayed line
    todo: list[str]  # commits still to replay, oldest first
    head_before: dict[str, str | None]  # HEAD as the rebase found it
    done: list[list[str]] = field(default_factory=list)  # [old, new or ""] pairs
    stopped: str = ""  # the commit the rebase stopped at
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if data.pop("schema", None) != SCHEMA:
            raise UsageError("the rebase state was written by another pienv version")
        return cls(**data)


@dataclass(frozen=True)
class Outcome(JsonResult):
    branch: str
    old_head: str
    new_head: str  # the branch's head when finished; the replayed tip when stopped
    replayed: tuple[tuple[str, str], ...]  # (old commit, new commit or "" when it was empty)
    stopped_at: str = ""  # set: the rebase waits for --continue / --skip / --abort
    reason: str = ""
    aborted: bool = False


def _path(ctx: Context) -> Path:
    return ctx.store.home / STATE


def _save(ctx: Context, state: State) -> None:
    write_atomic(_path(ctx), json.dumps(state.to_json(), indent=1).encode())


def _load(ctx: Context) -> State:
    try:
        return State.from_json(json.loads(_path(ctx).read_text()))
    except FileNotFoundError:
        raise UsageError("no rebase is under way") from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{_path(ctx)} is unreadable: {exc}") from exc


def start(ctx: Context, onto: str, branch: str | None = None) -> Outcome:
    if _path(ctx).exists():
        raise UsageError(
            "a rebase is under way", hint="`pienv rebase --continue`, --skip or --abort"
        )
    ctx.settle("HEAD", ctx.refs())
    refs = ctx.refs()
    name = branch or refs.head_branch
    if not name:
        raise UsageError("HEAD is detached: name the branch to rebase")
    check_ref_name(name)
    if name not in refs.branches:
        raise UsageError(f"no env branch {name!r}")
    _refuse_busy(ctx, name)
    old_head = refs.branches[name]
    stored = ctx.store.load_refs()
    agents = replay.session_commands(ctx.config)
    _root, items = replay.plan(ctx.store.commits(), old_head, agents)
    tip = _onto(ctx, onto, name)
    state = State(
        branch=name,
        old_head=old_head,
        onto=onto,
        tip=tip,
        todo=[i.commit.id for i in items if i.action != "skip"],
        # refs.json's own HEAD (ctx.refs() may name the branch rule 11 chose here instead).
        head_before={"branch": stored.head_branch, "detached": stored.head_detached},
    )
    _save(ctx, state)
    return _proceed(ctx, state)


def _onto(ctx: Context, onto: str, branch: str) -> str:
    """BASE as a commit: an env revision, else an image made into a fresh root."""
    try:
        return ctx.resolve(onto)
    except UsageError:
        pass
    if ctx.engine().inspect_image(onto) is None:
        raise UsageError(f"{onto!r} is neither an env revision nor an image on the engine")
    message = f"root: base {onto} (rebase of {branch})"
    return make_root(ctx, onto, branch, message, egress=label_of(ctx, branch)).id


def _refuse_busy(ctx: Context, name: str) -> None:
    if locks.is_locked(ctx.store.locks_dir, name):
        raise locks.busy_error(ctx.store.locks_dir, name)


def _proceed(ctx: Context, state: State) -> Outcome:
    commits = ctx.store.commits()
    agents = replay.session_commands(ctx.config)
    while state.todo:
        old = commits[state.todo[0]]
        item = replay.classify(old, agents)
        if item.action == "manual":
            return _stop(ctx, state, old, f"{item.why}: redo it with `pienv run` or `pienv shell`")
        new, problem = _replay_one(ctx, state, item)
        if problem:
            return _stop(ctx, state, old, problem)
        state.done.append([old.id, new])
        state.tip = new or state.tip
        state.todo.pop(0)
        state.stopped = state.reason = ""
        _save(ctx, state)
    return _finish(ctx, state)


def _replay_one(ctx: Context, state: State, item: replay.Item) -> tuple[str, str]:
    """Run ``item``'s command on the tip and commit it: (new commit or "" when the run
    changed nothing, "" or why it failed)."""
    old = item.commit
    engine = ctx.engine()
    parent_image = engine.inspect_image(state.tip)
    if parent_image is None:
        raise EngineError(f"the image of commit {short(state.tip)} is gone from the engine")
    with probe.container(
        ctx, state.tip, old.command, None, "rebase", old.user, item.workdir, state.branch
    ) as replayed:
        cid = replayed.cid
        result = probe.start(ctx, replayed)
        if result.exit_code not in (0, old.exit_code):
            tail = result.output.strip().splitlines()[-1:] or [""]
            return "", f"`{' '.join(old.command)}` exited {result.exit_code}: {tail[0][:200]}"
        draft = Commit.draft(
            state.branch,
            old.message,
            old.kind,
            parents=(state.tip,),
            command=old.command,
            exit_code=result.exit_code,
            workspace=old.workspace,
            git_head=old.git_head,
            code=old.code,
            replays=old.id,
            user=old.user,
            workdir=old.workdir,
            egress=replayed.egress,
            egress_audit=replayed.egress_audit,
        )
        if old.kind == "install":
            return _commit_install(ctx, cid, draft, parent_image), ""
        made = commit_container(ctx, cid, draft, parent_image)
        return (made.id if made else ""), ""


def _commit_install(ctx: Context, cid: str, draft: Commit, parent: ImageInfo) -> str:
    """An agent install's replay, labelled as installed (as runloop.install labels it):
    the next run of that agent on the rebased branch does not install it again."""
    from pienv.runloop.agent import INSTALLED_LABEL

    engine = ctx.engine()
    labels = draft.labels(ctx.store_id)
    labels[INSTALLED_LABEL] = draft.command[-1]  # recorded as ("sh", "-c", INSTALL)
    image_id = engine.commit(cid, parent, labels)
    return finish(ctx, engine, image_id, draft, None, parent).id


def _stop(ctx: Context, state: State, at: Commit, reason: str) -> Outcome:
    """Wait for the user: HEAD detached at the tip, where their fixing run lands."""
    state.stopped, state.reason = at.id, reason
    refs = ctx.refs()
    if refs.head_detached != state.tip:
        with ctx.store.transaction(f"rebase: stopped at {at.short}") as txn:
            txn.checkout(None, state.tip)
    _save(ctx, state)
    pairs = tuple((a, b) for a, b in state.done)
    return Outcome(state.branch, state.old_head, state.tip, pairs, at.id, reason)


def _finish(ctx: Context, state: State) -> Outcome:
    _refuse_busy(ctx, state.branch)
    before = state.head_before
    with ctx.store.transaction(f"rebase: {state.branch} onto {state.onto}") as txn:
        txn.move_branch(state.branch, state.old_head, state.tip)
        if before["branch"]:
            txn.checkout(before["branch"])
        elif before["detached"]:
            txn.checkout(None, before["detached"])
    os.unlink(_path(ctx))
    pairs = tuple((a, b) for a, b in state.done)
    return Outcome(state.branch, state.old_head, state.tip, pairs)


def continue_(ctx: Context) -> Outcome:
    """Go on after a stop. Runs made on the detached tip meanwhile replace the commit the
    rebase stopped at; with none, that commit is replayed again (a failure fixed outside)."""
    state = _load(ctx)
    if not state.stopped:
        return _proceed(ctx, state)
    ctx.settle("HEAD", ctx.refs())
    head = ctx.refs().head_detached
    if head and head != state.tip:
        g = dag.build(ctx.store.fresh_commits())  # the fixing runs are new
        if not dag.is_ancestor(g, state.tip, head):
            raise UsageError(
                f"HEAD ({short(head)}) does not descend from the rebase's tip {short(state.tip)}",
                hint=f"`pienv checkout {short(state.tip)}`, run the fix there, then --continue",
            )
        state.done.append([state.stopped, head])
        state.tip = head
        state.todo.remove(state.stopped)
    elif replay.classify(ctx.commit(state.stopped), replay.session_commands(ctx.config)).action != (
        "replay"
    ):
        raise UsageError(
            f"nothing was run since the rebase stopped at {short(state.stopped)}",
            hint="redo it with `pienv run`/`pienv shell`, or `pienv rebase --skip`",
        )
    return _proceed(ctx, state)


def skip(ctx: Context) -> Outcome:
    """Drop the commit the rebase stopped at (and anything run on the tip since) and go on."""
    state = _load(ctx)
    if not state.stopped:
        raise UsageError("the rebase is not stopped at a commit")
    state.todo.remove(state.stopped)
    state.done.append([state.stopped, ""])
    return _proceed(ctx, state)


def abort(ctx: Context) -> Outcome:
    """Put HEAD back where the rebase found it; the branch never moved."""
    state = _load(ctx)
    before = state.head_before
    with ctx.store.transaction(f"rebase: abort ({state.branch})") as txn:
        if before["branch"] and before["branch"] not in txn.refs.branches:
            # Deleted meanwhile: HEAD on a branch that is not would start over from the base.
            txn.checkout(None, state.old_head)
        elif before["branch"]:
            txn.checkout(before["branch"])
        elif before["detached"]:
            txn.checkout(None, before["detached"])
    os.unlink(_path(ctx))
    return Outcome(state.branch, state.old_head, state.old_head, (), aborted=True)
