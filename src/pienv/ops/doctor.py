"""doctor: a list of checks, one small function each, run in order.

A check gets what the ones before it found (the store's refs, the engine) and returns zero or
more ``Check`` rows; to add one, write a function and put it in ``CHECKS``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pienv import locks
from pienv.context import Context
from pienv.engine import MAX_DEPTH
from pienv.errors import PienvError, StoreError
from pienv.model import LABEL, JsonResult, short
from pienv.runloop import baseimage as basemod
from pienv.store import Refs

if TYPE_CHECKING:
    from pienv.engine import Engine, EngineInfo

# How a doctor check came out: `fail` makes `pienv doctor` exit 1.
Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check(JsonResult):
    name: str
    level: Level
    detail: str
    fix: str = ""


@dataclass
class Found:
    """What the checks so far learnt; a check that needs a missing part is skipped."""

    ctx: Context
    refs: Refs | None = None
    engine: Engine | None = None
    info: EngineInfo | None = None
    # (workspace, start in epoch seconds) of the probes whose pienv was killed: swept by
    # check_privilege.
    probed: list[tuple[str, float]] = field(default_factory=list)


CheckFn = Callable[[Found], list[Check]]


def doctor(ctx: Context) -> list[Check]:
    found = Found(ctx)
    out: list[Check] = []
    for check in CHECKS:
        out += check(found)
        if check is check_engine and found.engine is None:
            break  # every later check asks the engine
    return out


def check_store(f: Found) -> list[Check]:
    try:
        f.refs = f.ctx.refs()
    except StoreError as exc:
        return [Check("store", "fail", exc.message, exc.hint or "")]
    return [Check("store", "ok", f"{f.ctx.store.home} schema 1, id {f.refs.store_id}")]


def check_engine(f: Found) -> list[Check]:
    try:
        engine = f.ctx.engine()
        version = engine.version()
        f.info = engine.info()
    except PienvError as exc:
        return [Check("engine", "fail", exc.message, exc.hint or "start Docker")]
    f.engine = engine
    mode = "rootless" if f.info.rootless else "rootful"
    return [Check("engine", "ok", f"{version}, {mode}, at {engine.base_url}")]


def check_root(f: Found) -> list[Check]:
    """Whether root in the container is root on the workspace's files (rule 13), and what
    prevents or sweeps it on this engine (docs/security.md's per-engine table)."""
    assert f.engine is not None and f.info is not None
    up_front = ["MKNOD and SETFCAP dropped"]
    if f.engine.dialect.name == "Podman":
        up_front.append("binds nosuid,nodev")
    if f.info.userns:
        up_front.insert(0, "a user namespace maps it to an unprivileged uid")
        detail = "root in the container is not root on the host: " + ", ".join(up_front)
    else:
        detail = (
            "root in the container is root on the workspace's files: "
            f"{', '.join(up_front)}; the rest swept after every run"
        )
    return [Check("container root", "ok", detail)]


def check_driver(f: Found) -> list[Check]:
    assert f.info is not None
    driver = f.info.driver
    # Docker's overlay2 and Podman's overlay are the drivers pienv is tested on.
    tested = driver in ("overlay2", "overlay")
    fix = "" if tested else "pienv is tested on overlay2 (Docker) and overlay (Podman)"
    return [Check("storage driver", "ok" if tested else "warn", driver, fix)]


def check_disk(f: Found) -> list[Check]:
    assert f.engine is not None and f.info is not None
    root = f.info.root_dir
    if not f.engine.local:
        # A directory of that name here would be this machine's, not the engine's.
        return [Check("free disk", "warn", f"cannot read {root} of a remote engine from here")]
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return [Check("free disk", "warn", f"cannot read {root} from here")]
    level: Level = "ok" if free > 5e9 else "warn" if free > 1e9 else "fail"
    fix = "" if level == "ok" else "`pienv prune` or `docker system prune`"
    return [Check("free disk", level, f"{free / 1e9:.1f} GB free at {root}", fix)]


_PROBE_FIXES = {
    "init binary": "Podman: install catatonit; Docker: docker-init (tini) ships with it",
    "commit labels": "this engine loses commit metadata: use Docker or Podman >= 4.3",
    "archive API": "`pienv diff --packages` and `reset --system` need it",
}


def check_base(f: Found) -> list[Check]:
    if f.refs is None:
        return []
    assert f.engine is not None
    base_ref = os.environ.get("PIENV_BASE_IMAGE") or basemod.BASE_TAG
    if f.engine.inspect_image(base_ref) is None:
        fix = "`pienv base build` (the first run builds it too)"
        return [Check("base", "warn", f"{base_ref} is not built", fix)]
    out = [Check("base", "ok", base_ref)]
    for name, problem in f.engine.probe(base_ref):
        level: Level = "fail" if problem else "ok"
        out.append(Check(name, level, problem or "works", _PROBE_FIXES[name] if problem else ""))
    return out


def check_branches(f: Found) -> list[Check]:
    if f.refs is None:
        return []
    assert f.engine is not None
    limit = f.ctx.config.flatten_at
    out = []
    for name, head in sorted(f.refs.branches.items()):
        img = f.engine.inspect_image(head)
        if img is None:
            fix = "`pienv fsck --repair`"
            out.append(Check(f"branch {name}", "fail", f"head {short(head)} image missing", fix))
            continue
        d = img.depth
        level: Level = "ok" if d < limit else "warn" if d < MAX_DEPTH - 5 else "fail"
        fix = "" if level == "ok" else f"`pienv flatten {name}`"
        out.append(
            Check(f"branch {name}", level, f"depth {d}/{MAX_DEPTH} (flatten at {limit})", fix)
        )
    return out


def check_keepers(f: Found) -> list[Check]:
    """Every branch head and tag has its keeper (runloop/keeper.py): without one, `docker
    image prune -a` deletes the commit."""
    if f.refs is None:
        return []
    from pienv.runloop import keeper

    missing = keeper.unkept(f.ctx, f.refs)
    if not missing:
        return [Check("keepers", "ok", f"{len(keeper.targets(f.refs))} ref target(s) kept")]
    names = [n for n, c in sorted({**f.refs.branches, **f.refs.tags}.items()) if c in missing]
    detail = (
        f"{len(missing)} ref target(s) without a keeper ({', '.join(names) or 'HEAD'}): "
        "`docker image prune -a` would delete them (`docker system prune` removed the keepers?)"
    )
    return [Check("keepers", "warn", detail, "`pienv fsck --repair` makes them again")]


def check_locks(f: Found) -> list[Check]:
    if f.refs is None:
        return []
    locks_dir = f.ctx.store.locks_dir
    stale = [
        name
        for name in locks.lock_names(locks_dir)
        if locks.read_holder(locks_dir, name) and not locks.is_locked(locks_dir, name)
    ]
    if not stale:
        return [Check("locks", "ok", "no stale locks")]
    fix = "they are taken over automatically; `pienv unlock BRANCH`"
    return [Check("locks", "warn", f"stale: {', '.join(stale)}", fix)]


def check_orphans(f: Found) -> list[Check]:
    if f.refs is None:
        return []
    from pienv.ops.recovery import orphans

    found = orphans(f.ctx, with_size=False)
    fix = "`pienv orphans`, then `pienv recover --all`" if found else ""
    return [Check("orphans", "warn" if found else "ok", f"{len(found)} orphan run(s)", fix)]


def check_probes(f: Found) -> list[Check]:
    """A `bisect run` probe or `rebase` replay whose pienv was killed (kill -9) mid-command
    still runs the agent's code, with the workspace mounted read-write: removed here (a
    probe is never committed: nothing in it is lost), then what it planted in the git dirs
    is moved aside as its after-run check would have (from the record it left,
    box.save_watch), and check_privilege sweeps a workspace nothing writes to any more."""
    if f.refs is None or f.engine is None:
        return []
    from pienv import gitrepo
    from pienv.ops.recovery import orphans
    from pienv.runloop import box
    from pienv.runloop.helpers import PROBE, REBASE
    from pienv.runloop.sandbox import remove_env_file, run_token

    runs_dir = f.ctx.store.runs_dir
    # Listed before the containers: a record is written once its container exists.
    records = sorted(runs_dir.glob("*.watch.json"))
    gone: list[str] = []
    for o in orphans(f.ctx, with_size=False):
        if o.kind not in (PROBE, REBASE):
            continue
        try:
            f.engine.remove_container(o.container, force=True)
        except PienvError:
            continue  # still listed by `pienv orphans`
        remove_env_file(runs_dir, o.name)
        gone.append(f"{o.container[:12]} ({o.kind}, pid {o.holder_pid})")
        if o.info.workspace and not box.watch_file(runs_dir, run_token(o.name)).exists():
            # Killed between the record's removal and its checks: swept all the same.
            f.probed.append((o.info.workspace, _epoch(o.started)))
    # Every probe's record whose container is gone (removed above, by `clean-orphans`, or
    # by hand): its after-run check never came; it comes now, then its sweep.
    live = {run_token(row.name) for row in f.engine.containers([f"{LABEL}store={f.refs.store_id}"])}
    moved: list[str] = []
    for record in records:
        if record.name.removesuffix(".watch.json") in live:
            continue
        loaded = box.load_watch(record)
        if loaded is not None and loaded[0].is_dir():
            root, watch = loaded
            found = box.git_findings(root, gitrepo.find(root), watch, f.ctx.config.protect_git)
            moved += [line.removeprefix("warning: ") for line in found]
            f.probed.append((str(root), watch.started))
        with contextlib.suppress(OSError):
            record.unlink()
    if not gone and not f.probed:
        return [Check("probes", "ok", "no probe left by a killed pienv")]
    said = [f"removed what a killed pienv left running: {', '.join(gone)}"] if gone else []
    said += [f"{len(f.probed)} workspace(s) of killed probes checked", *moved]
    detail = "; ".join(said)
    return [Check("probes", "warn", detail, "their workspaces are swept below")]


def check_env_files(f: Found) -> list[Check]:
    if f.refs is None:
        return []
    from pienv.ops.recovery import remove_stale_env_files

    stale = remove_stale_env_files(f.ctx)
    if not stale:
        return [Check("env files", "ok", "no stale env files")]
    detail = f"removed {len(stale)} stale env file(s) of ended runs: {', '.join(stale)}"
    fix = "they may have held API keys; the runs that wrote them are gone"
    return [Check("env files", "warn", detail, fix)]


def check_egress_proxy(f: Found) -> list[Check]:
    """The store's egress proxy (docs/network.md): removed here when no run uses it and the
    store has no policy left that would need it; else said."""
    if f.engine is None or f.refs is None or not (f.ctx.store.home / "egress").is_dir():
        return []
    from pienv import egressnet

    state = egressnet.state(f.engine, f.refs.store_id)
    if state is None:
        return [Check("egress proxy", "ok", "not running (started by the next run with a policy)")]
    return [Check("egress proxy", "ok", state)]


def check_git_dirs(f: Found) -> list[Check]:
    """What runs (a killed one above all: its after-run check never came) may have planted in
    the git dirs of this store's workspaces: symlinks, a `commondir`, entries moved aside."""
    if f.refs is None:
        return []
    from pienv import gitrepo
    from pienv.runloop.gitguard import suspicious

    places = {c.workspace for c in f.ctx.store.commits().values() if c.workspace}
    places |= set(f.refs.worktrees)
    found: list[str] = []
    for place in sorted(places)[:200]:
        if os.path.isdir(place):
            found += suspicious(gitrepo.find(Path(place)))
    if not found:
        return [Check("git dirs", "ok", f"nothing planted in {len(places)} workspace(s)")]
    fix = "check each, then remove it (a run planted it: your git would follow it)"
    return [Check("git dirs", "warn", "; ".join(dict.fromkeys(found)), fix)]


def _epoch(since: str) -> float:
    from pienv.model import parse_time

    try:
        return parse_time(since).timestamp()
    except ValueError:
        return 0.0  # unknown: every entry is looked at


def unfinished_runs(f: Found) -> dict[str, float]:
    """Workspaces of runs that never finished (pienv and its finalizer killed: a stale lock's
    holder, an orphan container) and of killed pienvs' probes, each with the earliest such
    run's start (epoch seconds)."""
    from pienv.ops.recovery import orphans

    runs: list[tuple[str, str]] = []
    locks_dir = f.ctx.store.locks_dir
    for name in locks.lock_names(locks_dir):
        holder = locks.read_holder(locks_dir, name)
        if holder and not locks.is_locked(locks_dir, name):
            runs.append((holder.workspace, holder.since))
    # An orphan run, a killed pienv's probe (a helper labelled with its workspace).
    runs += [(o.info.workspace, o.started) for o in orphans(f.ctx, with_size=False)]
    out: dict[str, float] = {}
    for place, since in runs:
        start = _epoch(since)
        if place and os.path.isdir(place):
            out[place] = min(start, out.get(place, start))
    for place, start in f.probed:  # killed pienvs' probes (check_probes)
        if os.path.isdir(place):
            out[place] = min(start, out.get(place, start))
    return out


def check_privilege(f: Found) -> list[Check]:
    """What a run killed with its finalizer planted in its workspace (rule 13): its sweep
    never came, so doctor does it (runloop/sweep.py: scan as you, fix in a container of the
    base image) and names the paths."""
    if f.refs is None or f.engine is None:
        return []
    from pienv.runloop.sweep import Sweep, scan, summary, sweep

    places = unfinished_runs(f)
    if not places:
        return [Check("privilege", "ok", "no unfinished run left a workspace to sweep")]
    base = f.refs.base or os.environ.get("PIENV_BASE_IMAGE") or basemod.BASE_TAG
    found = []
    for place, since in sorted(places.items()):
        # The ctime margin the run's own sweep has (its start is recorded a moment late).
        job = Sweep((place,), since - 5, os.getuid(), os.getgid(), base, str(f.ctx.store.runs_dir))
        if f.engine.local:
            line = sweep(f.engine, job)
        else:  # the fix container's mounts would be the engine machine's paths: name them
            found_here = scan(Path(place), job.since, job.uid)
            line = summary(found_here, found_here) if found_here else ""
        if line:
            found.append(f"{place}: {line.removeprefix('warning: ')}")
    if not found:
        detail = f"nothing privileged in {len(places)} workspace(s) of unfinished runs"
        return [Check("privilege", "ok", detail)]
    level: Level = "fail" if any("NOT fixed" in x for x in found) else "warn"
    fix = "planted by a killed run's agent: what is NOT fixed, remove as root (`sudo rm`)"
    return [Check("privilege", level, "; ".join(found), fix)]


CHECKS: list[CheckFn] = [
    check_store,
    check_engine,
    check_root,
    check_driver,
    check_disk,
    check_base,
    check_branches,
    check_keepers,
    check_locks,
    check_orphans,
    check_probes,
    check_env_files,
    check_egress_proxy,
    check_git_dirs,
    check_privilege,
]
