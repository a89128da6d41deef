"""`pienv worktree add|list|remove`: git worktrees bound to env branches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pienv import ui
from pienv.cli.common import (
    JsonOpt,
    complete_branch,
    complete_rev,
    context,
    family,
)
from pienv.errors import UsageError

app = family("Git worktrees bound to env branches (one per agent).", group=True)


@app.command("add")
def worktree_add(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Where the new git worktree goes.")],
    branch: Annotated[
        str | None,
        typer.Argument(
            metavar="BRANCH",
            help="The git and env branch (default: PATH's name); may exist.",
            autocompletion=complete_branch,
        ),
    ] = None,
    from_rev: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="REV",
            help="Where a new env branch starts (default: HEAD).",
            autocompletion=complete_rev,
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="REV",
            help="Environment and code of env commit REV (a detached worktree).",
            autocompletion=complete_rev,
        ),
    ] = None,
) -> None:
    """A git worktree and an env branch bound to it.

    The branch is created (git and env) from HEAD unless it exists: an existing env branch
    gets a worktree again. With --at REV the env branch starts at REV and the worktree holds
    the code recorded with it (detached at its git commit, its uncommitted state put back).
    """
    from pienv.ops import worktree

    if at:
        from pienv.ops import codetravel

        if from_rev:
            raise UsageError("--at and --from both say where to start: use one")
        c = codetravel.worktree_at(context(), Path.cwd(), at, path, branch)
        ui.out(
            f"Worktree {c.path} at git {c.git_head[:12]} (detached), "
            f"env branch '{c.env_branch}' at {c.env_commit[:12]}."
        )
        if c.restored:
            ui.note(f"uncommitted state put back: {', '.join(c.restored[:10])}")
        ui.note(f"cd {c.path} && pienv run   # runs there use env branch {c.env_branch!r}")
        return

    r = worktree.add(context(), Path.cwd(), path, branch, from_rev)
    kept = "existing " if r.existing else ""
    ui.out(
        f"Worktree {r.path} on git branch '{r.branch}', "
        f"{kept}env branch '{r.branch}' at {r.env_head[:12] or '(first run)'}."
    )
    ui.note(f"cd {r.path} && pienv run   # runs there use env branch {r.branch!r}")


@app.command("list")
def worktree_list(as_json: JsonOpt = False) -> None:
    """Worktrees bound to env branches."""
    from pienv.ops import worktree

    rows = worktree.list_(context())
    if as_json:
        ui.emit_json([r.to_json() for r in rows])
        return
    ui.table(
        ["path", "git branch", "env branch", "env head", "running", "exists"],
        keep=("git branch", "env branch", "env head"),
        paths=("path",),
        rows=[
            (
                r.path,
                r.git_branch or "-",
                r.env_branch,
                (r.env_head or "-")[:12],
                f"pid {r.holder_pid}" if r.holder_pid else "",
                "yes" if r.exists else "missing",
            )
            for r in rows
        ],
    )


@app.command("remove")
def worktree_remove(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="The worktree to remove.")],
    force: Annotated[
        bool, typer.Option("--force", help="Remove it even with uncommitted changes.")
    ] = False,
) -> None:
    """Remove a git worktree and its binding.

    The env branch stays (it is history); `pienv worktree add PATH BRANCH` brings it back.
    """
    from pienv.ops import worktree

    r = worktree.remove(context(), path, force)
    ui.out(f"Removed worktree {r.path}; env branch '{r.env_branch}' is kept.")
