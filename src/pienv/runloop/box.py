"""The box of a container that mounts a workspace (rules 6 and 13), whoever starts it: `pienv
run`'s session, and the containers other commands start from the agent's own images with the
workspace mounted (bisect probes, rebase replays: ops/probe.py). One set of steps, so that a
probe is not a way around what a run holds:

- ``checked``: the workspace through the mount policy, and its git metadata read-only or
  pre-made (gitguard.git_mounts, every source through the same policy);
- the capabilities plan.DROPPED_CAPS (plan.cap_drop), whatever the network;
- ``gate``: every bind mount verified after the container is created and before its command
  starts (runloop/pin.py), ``refused`` when one is not what the policy checked;
- ``watch`` before the command and ``git_findings`` after it: a symlink, `commondir`,
  alternates or nested repository planted in the git dirs is moved aside (gitguard);
- ``sweep_job`` of the writable host mounts after it ends: planted setuid/setgid files,
  file capabilities, device nodes and trees of another uid defused (runloop/sweep.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pienv.context import Context
from pienv.gitrepo import RepoInfo, gitlinks
from pienv.runloop.baseimage import BASE_TAG
from pienv.runloop.gitguard import (
    git_mounts,
    links_of,
    planted_alternates,
    planted_commondir,
    planted_submodules,
    quarantine,
    quarantine_link,
    quarantine_submodule,
)
from pienv.runloop.pin import REFUSED, Gate
from pienv.runloop.sandbox import ENV_FILE, MountPolicy, env_text
from pienv.runloop.spec import ContainerSpec, Mount
from pienv.runloop.sweep import Sweep

if TYPE_CHECKING:
    from pienv.engine import Engine


def policy(ctx: Context) -> MountPolicy:
    """The one mount policy (rule 4) of this store, config and engine."""
    return MountPolicy.of(ctx.store.home, ctx.store.config_path, ctx.engine().base_url)


def checked(
    ctx: Context, root: Path, repo: RepoInfo | None, rules: MountPolicy | None = None
) -> tuple[tuple[Mount, ...], list[str]]:
    """Check the workspace at ``root`` against the mount policy (UsageError when refused,
    before anything is written), then its git metadata mounts (gitguard.git_mounts, every
    source through the same policy) and notes on what was left out. The workspace's own
    mount is the plan's (plan.own_mounts, plan.probe_spec)."""
    rules = rules or policy(ctx)
    rules.check(root, "the workspace")
    git, notes = git_mounts(root, repo, rules, ctx.config.protect_git)
    return tuple(git.values()), notes


def gate(engine: Engine, spec: ContainerSpec) -> tuple[Gate | None, str]:
    """The gate that holds ``spec``'s container until its mounts are verified (pin.py): it
    replaces the env file (written already) by a FIFO. None and a note saying so when the
    engine is not on this machine (docs/security.md: not skipped silently)."""
    if engine.local and os.path.exists("/proc/self/mountinfo"):
        host = [m for m in spec.mounts if m.target != ENV_FILE]
        return Gate.make(Path(spec.env_file), env_text(spec.env).encode(), host), ""
    return None, (
        f"the engine at {engine.base_url} is not on this machine: its mounts are not "
        "verified before the command, and the after-run sweep of planted privilege "
        "looks at this machine's files at the workspace path, not the engine's"
    )


def refused(g: Gate | None, code: int) -> list[str]:
    """What the gate found wrong when the container exited as refused (empty: the command
    ran, and ``code`` is its own)."""
    if g is None or code != REFUSED:
        return []
    g.done.wait(10)
    return list(g.problems)


def container_pid(cid: str) -> int:
    """The container's first process on this host (asked on a connection of its own: the
    gate's thread runs while the attach streams on the caller's)."""
    from pienv.engine import Engine

    state = Engine().inspect_container(cid)
    return state.pid if state else 0


@dataclass
class GitWatch:
    """What the after-run checks compare with: the git metadata as the run found it."""

    commondir: Path | None = None
    commondir_before: bool = False
    had_dotgit: bool = False
    started: float = 0.0
    gitlinks: frozenset[str] = frozenset()
    links: frozenset[Path] = frozenset()  # symlinks among the git dirs' entries


def watch(root: Path, repo: RepoInfo | None, protect: bool) -> GitWatch:
    """The git metadata as the command starts (compared after it by ``git_findings``)."""
    commondir = planted_commondir(root, repo) if protect else None
    return GitWatch(
        commondir=commondir,
        commondir_before=commondir is not None and os.path.lexists(commondir),
        had_dotgit=os.path.lexists(root / ".git"),
        # ctimes are the filesystem's clock (whole seconds on some): a margin, not a race.
        started=time.time() - 1.0,
        links=links_of(repo) if protect else frozenset(),
        # Cheap without submodules: the index is only parsed when it holds a gitlink.
        gitlinks=frozenset(gitlinks(repo.gitdir))
        if protect and repo is not None and not repo.link_problem
        else frozenset(),
    )


def watch_file(runs_dir: Path, token: str) -> Path:
    """Where a probe keeps its ``GitWatch`` while its command runs (beside its env file)."""
    return runs_dir / f"{token}.watch.json"


def save_watch(path: Path, root: Path, w: GitWatch) -> None:
    """``w`` of the workspace ``root`` written for `pienv doctor`: a probe's pienv killed
    (kill -9) before its after-run check leaves what the check compares with, whatever
    becomes of its container (the store is out of the container's reach)."""
    import json

    data = {
        "root": str(root),
        "commondir": str(w.commondir) if w.commondir is not None else "",
        "commondir_before": w.commondir_before,
        "had_dotgit": w.had_dotgit,
        "started": w.started,
        "gitlinks": sorted(w.gitlinks),
        "links": sorted(str(p) for p in w.links),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def load_watch(path: Path) -> tuple[Path, GitWatch] | None:
    """A ``save_watch`` record: the workspace and its watch; None when there is none or it
    cannot be read."""
    import json

    try:
        data = json.loads(path.read_text())
        return Path(data["root"]), GitWatch(
            commondir=Path(data["commondir"]) if data["commondir"] else None,
            commondir_before=bool(data["commondir_before"]),
            had_dotgit=bool(data["had_dotgit"]),
            started=float(data["started"]),
            gitlinks=frozenset(str(x) for x in data["gitlinks"]),
            links=frozenset(Path(x) for x in data["links"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def git_findings(root: Path, repo: RepoInfo | None, w: GitWatch, protect: bool) -> list[str]:
    """What the command left in the git metadata that would make the host's git run it or
    read elsewhere, moved aside; one note each."""
    notes = []
    if w.commondir is not None and not w.commondir_before and os.path.lexists(w.commondir):
        notes.append(quarantine(w.commondir))
    if protect:
        notes += [quarantine_link(p, repo) for p in sorted(links_of(repo) - w.links)]
        notes += [quarantine(p) for p in planted_alternates(repo, w.started)]
        for nested in planted_submodules(root, repo, w.started, w.gitlinks):
            notes.append(quarantine_submodule(nested))
    new_repo = root / ".git"
    if repo is None and not w.had_dotgit and os.path.lexists(new_repo):
        # Not pienv's to remove (the agent may have meant it), but the host's git would
        # run what its config and hooks say: say so.
        notes.append(
            f"warning: the run created {new_repo}; its config and hooks are the agent's "
            "and run when you use git here (docs/security.md)"
        )
    return notes


def sweep_job(ctx: Context, spec_mounts: Sequence[Mount], since: float) -> Sweep:
    """What the container can write on the host and must be swept after it (rule 13): its
    writable host mounts (the workspace, a worktree's common git dir, `[run] mounts`)."""
    rw = sorted(m.source for m in spec_mounts if not (m.volume or m.read_only))
    roots = [r for r in rw if not any(r != o and r.startswith(o + "/") for o in rw)]
    return Sweep(
        roots=tuple(roots),
        since=since,
        uid=os.getuid(),
        gid=os.getgid(),
        base=ctx.refs().base or os.environ.get("PIENV_BASE_IMAGE") or BASE_TAG,
        fifo_dir=str(ctx.store.runs_dir),
    )
