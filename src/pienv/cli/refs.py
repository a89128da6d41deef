"""Moving refs: `pienv branch`, `checkout`, `reset`, `tag`, `reflog`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pienv import ui
from pienv.cli.common import (
    JsonOpt,
    complete_branch,
    complete_ref,
    complete_rev,
    complete_tag,
    context,
    family,
    selected,
    selection,
)
from pienv.errors import UsageError

if TYPE_CHECKING:
    from pienv.ops.codetravel import CodeResult
    from pienv.ops.history import BranchInfo

app = family()
WITH_CODE_HELP = "Bring the workspace's code back too (a dirty tree gets a new worktree)."


def _say_code(r: CodeResult) -> None:
    """What a --with-code move did to the code (ops.codetravel)."""
    from pienv.locks import name_of

    where = f"env {name_of(r.env_branch)} at {r.env_commit[:12]}"
    if r.worktree:
        ui.out(f"{where}; the code is in the new worktree {r.path} (at {r.git_head[:12]}).")
        ui.note(f"your checkout has uncommitted changes: it was not touched; cd {r.path}")
    else:
        ui.out(f"{where}; {r.path} is at {r.git_head[:12]} (detached).")
    if r.restored:
        ui.note(f"uncommitted state put back: {', '.join(r.restored[:10])}")


@app.command()
def branch(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="The branch to create (OLD with -m).")
    ] = None,
    start: Annotated[
        str | None,
        typer.Argument(
            metavar="START",
            help="Where it starts (default: HEAD); NEW with -m.",
            autocompletion=complete_rev,
        ),
    ] = None,
    delete: Annotated[
        str | None,
        typer.Option(
            "-d",
            "--delete",
            metavar="NAME",
            help="Delete branch NAME.",
            autocompletion=complete_branch,
        ),
    ] = None,
    force_delete: Annotated[
        str | None,
        typer.Option(
            "-D",
            "--force-delete",
            metavar="NAME",
            help="Delete branch NAME even if nothing else reaches it.",
            autocompletion=complete_branch,
        ),
    ] = None,
    rename: Annotated[bool, typer.Option("-m", "--move", help="Rename branch OLD to NEW.")] = False,
    remotes: Annotated[
        bool, typer.Option("-a", "--all", help="List remote-tracking branches too.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List, create, delete or rename env branches.

    `pienv branch` lists them (* marks the current one), `pienv branch NAME [START]` creates
    one, `-d`/`-D NAME` deletes, `-m OLD NEW` renames.
    """
    from pienv.ops import history

    if delete or force_delete:
        # refs.json's own HEAD: deleting the branch it names is refused wherever you are.
        target = str(delete or force_delete)
        cid = history.delete_branch(context(), target, force=bool(force_delete))
        ui.out(f"Deleted branch {target} (was {cid[:12]}).")
        return
    if rename:
        if not name or not start:
            raise UsageError("usage: pienv branch -m OLD NEW")
        history.rename_branch(context(), name, start)
        ui.out(f"Renamed branch {name} to {start}.")
        return
    ctx = selected()
    if name:
        cid = history.create_branch(ctx, name, start)
        ui.out(f"Created branch {name} at {cid[:12]}.")
        return
    _list_branches(history.branches(ctx, remotes), as_json)


def _list_branches(infos: list[BranchInfo], as_json: bool) -> None:
    if as_json:
        ui.emit_json([b.to_json() for b in infos])
        return
    ui.table(
        ["", "branch", "head", "age", "commits", "size", "lock", "worktree"],
        keep=("branch", "head"),
        paths=("worktree",),
        rows=[
            (
                "*" if b.current else "",
                b.name,
                b.head[:12],
                ui.age(b.created),
                str(b.commits),
                ui.size(b.size),
                "running" if b.locked else "",
                ", ".join(b.worktrees),
            )
            for b in infos
        ],
    )


@app.command()
def checkout(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="A branch, or a revision to detach HEAD at.",
            autocompletion=complete_rev,
        ),
    ],
    start: Annotated[
        str | None,
        typer.Argument(
            metavar="START",
            help="Where the new branch starts with -b (default: HEAD).",
            autocompletion=complete_rev,
        ),
    ] = None,
    create: Annotated[bool, typer.Option("-b", help="Create branch TARGET first.")] = False,
    with_code: Annotated[bool, typer.Option("--with-code", help=WITH_CODE_HELP)] = False,
) -> None:
    """Switch the current env branch, or detach HEAD at a commit."""
    from pienv.ops.history import checkout as do_checkout

    if with_code:
        from pienv.ops import codetravel

        if create:
            raise UsageError("--with-code takes an existing revision, not -b")
        _say_code(codetravel.checkout(context(), Path.cwd(), target))
        return
    ctx, sel = selection()
    r = do_checkout(ctx, target, create, start)
    if not sel.by_default:
        # checkout moves the store's HEAD; here a stronger rule still picks the branch.
        ui.warn(f"commands run here still use branch {sel.branch!r} ({sel.rule} comes first)")
    if r.branch is None:
        ui.out(f"HEAD is now at {r.commit[:12]} (detached).")
        ui.warn("runs will advance a detached HEAD; `pienv checkout -b NAME` keeps them")
    elif r.created:
        ui.out(f"Switched to a new branch '{r.branch}' at {r.commit[:12]}.")
    else:
        ui.out(f"Switched to branch '{r.branch}' at {r.commit[:12]}.")
    if r.left_behind:
        old = r.left_behind[:12]
        ui.warn(
            f"leaving commit {old} behind: no branch or tag reaches it, only the reflog "
            f"(prune removes it when the entry expires); `pienv branch NAME {old}` keeps it"
        )


@app.command()
def reset(
    rev: Annotated[
        str | None,
        typer.Argument(
            metavar="REV", help="The revision to move the branch to.", autocompletion=complete_rev
        ),
    ] = None,
    system: Annotated[
        bool, typer.Option("--system", help="Start from a fresh base, keeping the agent's home.")
    ] = False,
    all_: Annotated[bool, typer.Option("--all", help="Start from the bare base.")] = False,
    branch_name: Annotated[
        str | None,
        typer.Option(
            "--branch",
            "-b",
            metavar="BRANCH",
            help="Reset this branch, not the current one.",
            autocompletion=complete_branch,
        ),
    ] = None,
    with_code: Annotated[bool, typer.Option("--with-code", help=WITH_CODE_HELP)] = False,
) -> None:
    """Move the current branch to REV (environment rollback).

    The old head stays in the reflog: `pienv reset BRANCH@{1}` undoes it. `--system` starts
    the branch from a fresh base keeping the agent's home; `--all` from the bare base.
    """
    from pienv.locks import name_of

    ctx = selected(branch_name)
    if system or all_:
        from pienv.ops import maint

        r = maint.reset_base(ctx, keep_home=system)
        ui.out(f"{name_of(r.branch)} is now at {r.new[:12]} ({r.what}).")
        ui.note(f"the previous head {str(r.old)[:12]} stays in the reflog")
        return
    if not rev:
        raise UsageError("usage: pienv reset REV (or --system / --all)")
    if with_code:
        from pienv.ops import codetravel

        _say_code(codetravel.reset(ctx, Path.cwd(), rev))
        return
    from pienv.ops.history import reset as do_reset

    res = do_reset(ctx, rev)
    ui.out(f"{name_of(res.branch)} is now at {res.new[:12]} (was {str(res.old)[:12]}).")
    if res.egress is not None:
        ui.note(f"egress policy of {res.new[:12]}: {res.egress} (`pienv egress show`)")


@app.command()
def tag(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="The tag to create.")] = None,
    rev: Annotated[
        str | None,
        typer.Argument(
            metavar="REV", help="The commit it names (default: HEAD).", autocompletion=complete_rev
        ),
    ] = None,
    delete: Annotated[
        str | None,
        typer.Option(
            "-d", "--delete", metavar="NAME", help="Delete tag NAME.", autocompletion=complete_tag
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List, create or delete tags: snapshots prune never removes."""
    from pienv.ops import history

    ctx = selected()
    if delete:
        cid = history.delete_tag(ctx, delete)
        ui.out(f"Deleted tag {delete} (was {cid[:12]}).")
        return
    if name:
        cid = history.tag(ctx, name, rev)
        ui.out(f"Tagged {cid[:12]} as {name}.")
        return
    tags = history.tags(ctx)
    if as_json:
        ui.emit_json([t.to_json() for t in tags])
        return
    for t in tags:
        ui.out(f"{t.name:<20} {t.commit[:12]}")


@app.command()
def reflog(
    ref: Annotated[
        str | None,
        typer.Argument(
            metavar="REF",
            help="A branch or tag (default: the current branch).",
            autocompletion=complete_ref,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every move of a branch or tag, newest first.

    Undo a move with `pienv reset BRANCH@{N}`.
    """
    from pienv.ops.history import reflog as get_reflog

    rows = get_reflog(selected(), ref)
    if as_json:
        ui.emit_json([r.to_json() for r in rows])
        return
    for r in rows:
        e = r.entry
        ui.out(
            f"{str(e.new)[:12]} {r.selector}: {ui.printable(e.what)}  ({e.who}, {ui.age(e.time)})"
        )
