"""`pienv bisect`: find the env commit that broke a command, as `git bisect` does for code.

The walk is over first parents, from the bad commit back to the first commit that is good
(or an ancestor of one): a line, so each probe halves what is left and N runs take about
log2(N) probes. A probe runs the command in a throwaway container from the candidate commit
(ops.probe): no env commit, no ref moved. The state is a JSON file in the store, so the
steps can be spread over several commands, like git's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pienv import dag
from pienv.context import Context
from pienv.errors import UsageError
from pienv.model import JsonResult, short
from pienv.ops import probe
from pienv.store import write_atomic

Mark = Literal["good", "bad", "skip"]
STATE = "bisect.json"
SCHEMA = 1


def verdict(exit_code: int) -> Mark | None:
    """git bisect run's rules: 0 good, 125 skip, 1-127 bad, anything else aborts (None)."""
    if exit_code == 0:
        return "good"
    if exit_code == 125:
        return "skip"
    if 1 <= exit_code <= 127:
        return "bad"
    return None


@dataclass
class State:
    """The bisection: ``chain`` runs newest (the first bad) to oldest (a good one)."""

    chain: list[str]
    marks: dict[str, Mark]
    with_code: bool = False
    log: list[str] = field(default_factory=list)
    probes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "chain": self.chain,
            "marks": self.marks,
            "with_code": self.with_code,
            "log": self.log,
            "probes": self.probes,
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        """The state as saved; ValueError when it is not (torn, hand-edited, another tool's)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise UsageError("the bisect state was written by another pienv version")
        state = cls(
            chain=[str(c) for c in data["chain"]],
            marks={str(c): m for c, m in dict(data["marks"]).items()},
            with_code=bool(data.get("with_code")),
            log=[str(line) for line in data.get("log", [])],
            probes=int(data.get("probes", 0)),
        )
        marked = {state.marks.get(c) for c in state.chain}
        known = set(state.marks.values()) <= {"good", "bad", "skip"}
        if not known or not {"good", "bad"} <= marked:
            raise ValueError("its marks name no good and bad commit of its line")
        return state


@dataclass(frozen=True)
class Step(JsonResult):
    """Where a bisection stands: the next commit to test, or the answer."""

    next: str | None  # the commit to test next
    first_bad: str | None  # found: the first bad commit
    remaining: int  # candidates left untested between the bounds
    # Found only up to skipped commits: the first bad is one of these.
    ambiguous: tuple[str, ...] = ()
    probes: int = 0


def first_parent_chain(commits: dict[str, Any], bad: str, goods: list[str]) -> list[str]:
    """First parents from ``bad`` back to the first commit that is one of ``goods`` or an
    ancestor of one (included, last)."""
    g = dag.build(commits)
    chain = [bad]
    cur = bad
    while not any(cur == good or dag.is_ancestor(g, cur, good) for good in goods):
        parents = commits[cur].parents if cur in commits else ()
        if not parents:
            raise UsageError(
                f"no good commit on the first-parent line of {short(bad)}",
                hint="a good commit must be an ancestor of the bad one",
            )
        cur = parents[0]
        chain.append(cur)
    if len(chain) == 1:
        raise UsageError(f"{short(bad)} is both good and bad (or an ancestor of a good one)")
    return chain


def next_step(state: State) -> Step:
    """The pure heart: the bounds the marks set on the chain, and the candidate nearest the
    middle between them that is not skipped."""
    chain, marks = state.chain, state.marks
    bads = [i for i, c in enumerate(chain) if marks.get(c) == "bad"]
    goods = [i for i, c in enumerate(chain) if marks.get(c) == "good"]
    lo, hi = max(bads), min(goods)  # lo: oldest known bad; hi: newest known good
    if hi < lo:
        raise UsageError(
            f"{short(chain[hi])} is marked good but is newer than bad {short(chain[lo])}",
            hint="`pienv bisect log` shows the marks; `pienv bisect reset` starts over",
        )
    between = [i for i in range(lo + 1, hi) if marks.get(chain[i]) != "skip"]
    if not between:
        skipped = tuple(chain[i] for i in range(lo + 1, hi))
        if skipped:
            return Step(None, None, 0, (chain[lo], *skipped), state.probes)
        return Step(None, chain[lo], 0, (), state.probes)
    mid = (lo + hi) / 2
    pick = min(between, key=lambda i: (abs(i - mid), i))
    return Step(chain[pick], None, len(between), (), state.probes)


# -- the state file -----------------------------------------------------------------------


def _path(ctx: Context) -> Path:
    return ctx.store.home / STATE


def load(ctx: Context) -> State:
    try:
        return State.from_json(json.loads(_path(ctx).read_text()))
    except FileNotFoundError:
        raise UsageError(
            "no bisection is under way", hint="`pienv bisect start BAD GOOD`"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{_path(ctx)} is unreadable: {exc}", hint="`pienv bisect reset`") from exc


def save(ctx: Context, state: State) -> None:
    write_atomic(_path(ctx), json.dumps(state.to_json(), indent=1).encode())


# -- commands -----------------------------------------------------------------------------


def start(ctx: Context, bad: str, goods: list[str], with_code: bool = False) -> Step:
    if _path(ctx).exists():
        raise UsageError("a bisection is under way", hint="`pienv bisect reset` ends it")
    refs = ctx.refs()
    bad_id = ctx.resolve(bad, refs)
    good_ids = [ctx.resolve(g, refs) for g in goods]
    chain = first_parent_chain(ctx.store.commits(), bad_id, good_ids)
    marks: dict[str, Mark] = {bad_id: "bad", chain[-1]: "good"}
    state = State(chain=chain, marks=marks, with_code=with_code)
    state.log.append(f"start bad {bad_id} good {' '.join(good_ids)}")
    step = next_step(state)
    save(ctx, state)
    return step


def mark(ctx: Context, what: Mark, rev: str | None) -> Step:
    """``bisect good|bad|skip [REV]`` (REV: the current candidate)."""
    state = load(ctx)
    if rev is None:
        cid = next_step(state).next
        if cid is None:
            raise UsageError("the bisection is done", hint="`pienv bisect reset`")
    else:
        cid = ctx.resolve(rev)
        if cid not in state.chain:
            raise UsageError(f"{short(cid)} is not on the line being bisected")
    _set(state, cid, what)
    step = next_step(state)
    save(ctx, state)
    return step


def _set(state: State, cid: str, what: Mark) -> None:
    state.marks[cid] = what
    state.log.append(f"{what} {cid}")


@dataclass(frozen=True)
class Probed:
    commit: str
    exit_code: int
    mark: Mark | None


@dataclass(frozen=True)
class RunOutcome(JsonResult):
    probed: tuple[Probed, ...]
    step: Step
    aborted: Probed | None = None  # exit code above 127: stopped, the state kept


def run(ctx: Context, command: tuple[str, ...], workspace: Path) -> RunOutcome:
    """Probe candidates until the first bad commit is found (``bisect run -- CMD``)."""
    if not command:
        raise UsageError("bisect run needs a command: pienv bisect run -- CMD ...")
    state = load(ctx)
    commits = ctx.store.commits()
    probed: list[Probed] = []
    # The egress policy of HEAD's branch holds for the probes (they run its environment).
    branch = ctx.refs().head_branch
    step = next_step(state)
    while step.next is not None:
        cid = step.next
        result = _probe(ctx, cid, commits.get(cid), command, workspace, state.with_code, branch)
        state.probes += 1
        decided = verdict(result.exit_code)
        probed.append(Probed(cid, result.exit_code, decided))
        if decided is None:
            state.log.append(f"# run aborted at {cid}: exit {result.exit_code}")
            save(ctx, state)
            return RunOutcome(tuple(probed), step, probed[-1])
        _set(state, cid, decided)
        save(ctx, state)
        step = next_step(state)
    return RunOutcome(tuple(probed), step)


def _probe(
    ctx: Context,
    cid: str,
    commit: Any,
    command: tuple[str, ...],
    workspace: Path,
    with_code: bool,
    branch: str | None,
) -> probe.ProbeResult:
    if not with_code:
        return probe.run(ctx, cid, command, workspace, branch)
    head = commit.git_head if commit is not None else ""
    code = commit.code if commit is not None else ""
    if not head and not code:
        # No code recorded with this commit: git's skip (it cannot be tested as asked).
        return probe.ProbeResult(125, "no code recorded with this commit")
    with probe.recorded_code(workspace, head, code) as tree:
        return probe.run(ctx, cid, command, tree, branch)


def log(ctx: Context) -> list[str]:
    return load(ctx).log


def reset(ctx: Context) -> bool:
    """End the bisection; False when none was under way. No ref was moved by it."""
    try:
        os.unlink(_path(ctx))
    except FileNotFoundError:
        return False
    return True
