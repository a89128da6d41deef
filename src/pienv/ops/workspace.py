"""Which env branch a command acts on: `select` applies the run's selection rule
(runloop.workspace.select_branch) to every command that defaults to "the current branch"
(rule 11, docs/rules.md): --branch > PIENV_PROFILE > worktree binding > HEAD.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pienv.context import Context
from pienv.errors import PienvError
from pienv.runloop.workspace import find_workspace, select_branch


@dataclass(frozen=True)
class Selection:
    branch: str | None  # None = detached HEAD
    rule: str  # which part of the rule chose it: "--branch", "PIENV_PROFILE", ...

    @property
    def by_default(self) -> bool:
        """Chosen by HEAD (or named on the command line): nothing surprising to point out."""
        return self.rule in ("--branch", "HEAD", "detached HEAD")


def select(
    ctx: Context, cwd: Path, environ: Mapping[str, str], explicit: str | None = None
) -> Selection:
    """Apply the selection rule for a command run in ``cwd`` and make ``ctx`` mean that branch
    by HEAD (``ctx.refs()``, revisions, decorations): log, show, diff, reset, reflog, flatten,
    tag and branch all act on the branch `pienv run` would use there."""
    try:
        ws = find_workspace(cwd, None).path
    except PienvError:  # / or the home directory: no binding can name them
        ws = Path(os.path.realpath(cwd))
    branch, rule = select_branch(ctx.store.load_refs(), explicit, environ, ws)
    ctx.head_branch = branch
    return Selection(branch, rule)
