"""`pienv status`: where am I (store, engine, branch and why, head, base, size, depth, locks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pienv import dag, locks
from pienv.context import Context
from pienv.errors import PienvError
from pienv.model import Commit, JsonResult
from pienv.runloop.gitguard import suspicious
from pienv.runloop.sandbox import MountPolicy
from pienv.runloop.workspace import Workspace, find_workspace, select_branch
from pienv.tracking import tracking_refs


@dataclass
class StatusResult(JsonResult):
    store: str
    store_id: str
    workspace: str
    engine: str  # version, or the error
    engine_ok: bool
    branch: str | None  # None: detached HEAD
    branch_rule: str  # which selection rule chose the branch (rule 11)
    detached: bool
    head: Commit | None
    base: str | None
    size: int
    depth: int
    flatten_at: int
    locks: list[locks.Holder] = field(default_factory=list)
    orphans: int | None = None  # None: the engine cannot be asked
    warnings: list[str] = field(default_factory=list)
    # The branch against each remote tracking it: commits only here / only there.
    remotes: list[Tracking] = field(default_factory=list)
    # Ports the store's running runs publish: "127.0.0.1:3000->3000/tcp (branch main)".
    ports: list[str] = field(default_factory=list)


@dataclass
class Tracking(JsonResult):
    remote: str
    head: str
    ahead: int
    behind: int


def _boundary_warnings(ctx: Context, ws: Workspace) -> list[str]:
    """What a run here would refuse or leave out (the mount policy of docs/security.md)."""
    policy = MountPolicy.of(ctx.store.home, ctx.store.config_path)
    try:
        policy.check(ws.path, "the workspace")
    except PienvError as exc:
        return [f"runs here are refused: {exc.message}"]
    repo = ws.repo
    if repo is None:
        return []
    # What a run may have planted in its git dirs (a killed run's after-run check never came).
    planted = [f"git metadata: {what}" for what in suspicious(repo)]
    if repo.link_problem:
        return [f"runs here mount no git metadata: {repo.link_problem}", *planted]
    if repo.is_linked_worktree:
        try:
            policy.check(repo.common_dir, "the worktree's common git dir")
        except PienvError as exc:
            return [f"runs here mount no git metadata: {exc.message}", *planted]
    return planted


def _under_way(ctx: Context) -> list[str]:
    """A bisection or a rebase left waiting for the user (as `git status` says)."""
    from pienv.ops import bisect, rebase

    out = []
    if (ctx.store.home / bisect.STATE).exists():
        out.append("a bisection is under way: `pienv bisect log`; `pienv bisect reset` ends it")
    if (ctx.store.home / rebase.STATE).exists():
        out.append(
            "a rebase is under way: `pienv rebase --continue` after fixing it with a run "
            "(or --skip, --abort)"
        )
    return out


def status(ctx: Context, cwd: Path, environ: Mapping[str, str]) -> StatusResult:
    refs = ctx.refs()
    warnings: list[str] = []
    try:
        found = find_workspace(cwd, None)
        ws = found.path
        warnings = _boundary_warnings(ctx, found)
    except PienvError:
        ws = cwd
    branch, rule = select_branch(refs, None, environ, ws)
    commits = ctx.store.commits()
    head_id = refs.branches.get(branch) if branch else refs.head_detached
    head = commits.get(head_id) if head_id else None
    size = 0
    if head_id:
        size = sum(commits[c].size for c in dag.ancestor_sets(commits, [head_id])[head_id])
    held = []
    for name in locks.lock_names(ctx.store.locks_dir):
        if locks.is_locked(ctx.store.locks_dir, name):
            holder = locks.read_holder(ctx.store.locks_dir, name)
            if holder:
                held.append(holder)
    result = StatusResult(
        store=str(ctx.store.home),
        store_id=refs.store_id,
        workspace=str(ws),
        engine="",
        engine_ok=False,
        branch=branch,
        branch_rule=rule,
        detached=refs.head_branch is None,
        head=head,
        base=refs.base,
        size=size,
        depth=head.layers if head else 0,
        flatten_at=ctx.config.flatten_at,
        locks=held,
    )
    result.warnings.extend(warnings)
    if branch and head_id:
        result.remotes = _tracking(ctx, branch, head_id, commits)
    if branch and head_id is None:
        result.warnings.append(f"branch {branch!r} has no commit yet; `pienv run` creates it")
    result.warnings.extend(_under_way(ctx))
    if result.detached:
        result.warnings.append(
            "HEAD is detached: runs advance it without a branch; "
            "`pienv checkout -b NAME` keeps them on a branch"
        )
    try:
        result.engine = ctx.engine().describe()
        result.engine_ok = True
        from pienv.ops.integrity import history_warnings
        from pienv.ops.recovery import orphans

        if head_id:
            # The head image's own size on the engine (every layer, the base included): the
            # index's per-commit sizes miss what prune dropped from the index.
            image = ctx.engine().inspect_image(head_id)
            if image is not None:
                result.size = image.size
        if head_id:
            what = f"branch {branch}" if branch else "HEAD"
            result.warnings += history_warnings(ctx, refs.store_id, [head_id], what)
        result.ports = _published(ctx, refs.store_id)
        result.orphans = len(orphans(ctx, with_size=False))
        if result.orphans:
            result.warnings.append(f"{result.orphans} orphan run(s): see `pienv orphans`")
    except PienvError as exc:
        result.engine = str(exc)
    return result


def _published(ctx: Context, store_id: str) -> list[str]:
    """What the store's running runs publish (`run -p`): inspected only for running ones."""
    from pienv.model import LABEL

    out: list[str] = []
    for row in ctx.engine().containers([f"{LABEL}store={store_id}", f"{LABEL}role=run"]):
        if row.state != "running":
            continue
        state = ctx.engine().inspect_container(row.id)
        branch = row.labels.get(LABEL + "branch") or "detached HEAD"
        out.extend(f"{port} (branch {branch})" for port in (state.ports if state else ()))
    return out


def _tracking(ctx: Context, branch: str, head: str, commits: dict[str, Commit]) -> list[Tracking]:
    out = []
    for ref, theirs in sorted(tracking_refs(ctx.store).items()):
        remote, _, name = ref.partition("/")
        if name != branch:
            continue
        a = dag.ancestor_sets(commits, [head, theirs])
        mine, other = a[head] or {head}, a[theirs] or {theirs}
        out.append(Tracking(remote, theirs, len(mine - other), len(other - mine)))
    return out
