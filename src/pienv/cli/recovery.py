"""Runs that never got committed: `pienv orphans`, `recover`, `clean-orphans`, `unlock`."""

from __future__ import annotations

from typing import Annotated

import typer

from pienv import ui
from pienv.cli.common import (
    JsonOpt,
    complete_branch,
    context,
    family,
)
from pienv.errors import UsageError

app = family()


@app.command()
def orphans(as_json: JsonOpt = False) -> None:
    """Run containers whose changes never got committed."""
    from pienv.locks import name_of
    from pienv.ops import recovery

    rows = recovery.orphans(context())
    if as_json:
        ui.emit_json([o.to_json() for o in rows])
        return
    if not rows:
        ui.out("no orphans")
        return
    ui.table(
        ["container", "kind", "branch", "parent", "age", "state", "changes", "holder"],
        keep=("container", "branch", "parent"),
        rows=[
            (
                o.container[:12],
                o.kind,
                name_of(o.branch),
                o.parent[:12],
                ui.age(o.started),
                o.state + (f" ({o.exit_code})" if o.exit_code is not None else ""),
                ui.size(o.size),
                f"pid {o.holder_pid} " + ("alive" if o.holder_alive else "dead"),
            )
            for o in rows
        ],
    )
    ui.note("`pienv recover CONTAINER` (or --all) commits them; `pienv clean-orphans` drops them")


@app.command()
def recover(
    container: Annotated[
        str | None, typer.Argument(metavar="CONTAINER", help="The orphan container's id or name.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Recover every orphan.")] = False,
) -> None:
    """Commit an orphan run onto its branch.

    If the branch moved meanwhile, the commit goes onto a new branch recovered/<id>.
    """
    from pienv.ops import recovery

    if not container and not all_:
        raise UsageError("usage: pienv recover CONTAINER (or --all)")
    done = recovery.recover(context(), None if all_ else container)
    if not done:
        ui.out("nothing to recover")
    for r in done:
        ui.out(r.note)


@app.command("clean-orphans")
def clean_orphans(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove orphan run containers and lose their changes."""
    from pienv.locks import name_of
    from pienv.ops import recovery

    ctx = context()
    listed = recovery.clean(ctx, dry_run=True)
    if not listed:
        ui.out("no orphans to remove")
        return
    for o in listed:
        ui.out(
            f"{'would remove' if dry_run else 'remove'} {o.container[:12]} "
            + (
                f"({name_of(o.branch)}, {ui.size(o.size)} of changes)"
                if o.kind == "run"
                else f"(left by a killed {o.kind})"
            )
        )
    if dry_run:
        return
    if not yes and not typer.confirm("Remove these containers and lose their changes?"):
        ui.out("nothing removed")  # a choice, not a failure: exit 0
        return
    gone = recovery.clean(ctx, dry_run=False)
    ui.out(f"removed {len(gone)} orphan container(s)")


@app.command()
def unlock(
    branch_name: Annotated[
        str,
        typer.Argument(
            metavar="BRANCH", help="The branch whose lock to clear.", autocompletion=complete_branch
        ),
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Accepted, but a held lock is never broken: the error says why."
        ),
    ] = False,
) -> None:
    """Clear the record of a branch lock whose holder is gone."""
    from pienv.ops import recovery

    r = recovery.unlock(context(), branch_name, force)
    if r.holder is not None:
        ui.out(f"unlocked {r.branch} (cleared the record of pid {r.holder.pid}, which is gone)")
    else:
        ui.out(f"unlocked {r.branch}" + ("" if r.was_locked else " (it was not held)"))
