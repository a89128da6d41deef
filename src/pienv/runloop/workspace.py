"""Which workspace and which env branch a run acts on.

Every command that defaults to "the current branch" asks `select_branch`, so they all follow
one rule (rule 11, docs/rules.md): --branch > PIENV_PROFILE > worktree binding > HEAD.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pienv import gitrepo
from pienv.errors import UsageError
from pienv.store import Refs


@dataclass(frozen=True)
class Workspace:
    path: Path
    repo: gitrepo.RepoInfo | None
    # Where the command was started, relative to ``path`` ("" at the top): a run started in
    # repo/sub starts in /workspace/sub, as a local command would.
    subdir: str = ""


def find_workspace(cwd: Path, workdir: Path | None) -> Workspace:
    """The git repo root containing ``cwd`` (linked worktrees too), or ``cwd`` outside a
    repo; ``-w DIR`` is taken as given. / and the home directory itself are refused."""
    given = (workdir or cwd).expanduser()
    if not given.is_dir():
        raise UsageError(f"workspace {given} is not a directory")
    repo = gitrepo.find(given)
    root = Path(os.path.realpath(given if workdir or repo is None else repo.root))
    if repo is not None and repo.root != root:
        repo = None  # a subdirectory of a repo: git metadata is not inside it
    if root == Path("/"):
        raise UsageError("refusing to mount / as the workspace", hint="cd into a project first")
    if root == gitrepo.home_dir():
        raise UsageError(
            f"refusing to mount your home directory {root} as the workspace",
            hint="cd into a project directory, or pass -w DIR",
        )
    sub = ""
    if workdir is None:
        here = Path(os.path.realpath(cwd))
        if here != root and root in here.parents:
            sub = here.relative_to(root).as_posix()
    return Workspace(path=root, repo=repo, subdir=sub)


def select_branch(
    refs: Refs, explicit: str | None, environ: Mapping[str, str], workspace: Path
) -> tuple[str | None, str]:
    """(branch, rule): --branch > PIENV_PROFILE > worktree binding > HEAD (None = detached)."""
    if explicit:
        return explicit, "--branch"
    profile = environ.get("PIENV_PROFILE")
    if profile:
        return profile, "PIENV_PROFILE"
    bound = refs.worktrees.get(str(workspace))
    if bound:
        return bound, f"worktree binding of {workspace}"
    if refs.head_branch:
        return refs.head_branch, "HEAD"
    return None, "detached HEAD"
