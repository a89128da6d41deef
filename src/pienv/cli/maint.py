"""Store maintenance: `pienv prune`, `flatten`, `doctor`, `fsck`."""

from __future__ import annotations

from typing import Annotated

import typer

from pienv import ui
from pienv.cli.common import (
    JsonOpt,
    complete_branch,
    context,
    family,
    reporting,
    selected,
)

app = family()


@app.command()
def prune(
    keep: Annotated[
        int | None,
        typer.Option("--keep", metavar="N", help="Keep only the newest N commits of each branch."),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than", metavar="AGE", help="Expire reflog entries older than AGE (7d, 12h)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would go.")] = False,
    caches: Annotated[
        bool,
        typer.Option(
            "--caches", help="Empty the store's shared apt/npm/pip caches instead (not commits)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove commits nothing reaches; report the bytes freed.

    A commit stays while a branch, a tag or an unexpired reflog entry reaches it.
    """
    from pienv.ops import maint

    if caches:
        from pienv.ops import agent as agent_ops

        pruned = agent_ops.prune_caches(context())
        for name in pruned.removed:
            ui.out(f"emptied {name}")
        for name in pruned.busy:
            ui.out(f"kept {name}: a run is using it")
        if not pruned.removed and not pruned.busy:
            ui.out("no caches to empty")
        return

    ctx = context()
    with ui.activity("prune") as act:
        reporting(ctx, lambda _what, n, total: act.update(f"{n}/{total} commits"))
        r = maint.prune(ctx, keep, older_than, dry_run)
    if as_json:
        ui.emit_json(r.to_json())
        return
    for cid in r.removed:
        ui.out(f"{'would remove' if dry_run else 'removed'} {cid[:12]}")
    for k in r.kept_in_use:
        ui.out(f"kept {k.commit[:12]}: {k.why}")
    verb = "would free" if dry_run else "freed"
    ui.out(f"{len(r.removed)} commit(s), {verb} {ui.size(r.bytes_freed)}")


@app.command()
def flatten(
    branch_name: Annotated[
        str | None,
        typer.Argument(
            metavar="[BRANCH]",
            help="The branch to flatten (default: the current one).",
            autocompletion=complete_branch,
        ),
    ] = None,
) -> None:
    """Rewrite a branch head as one layer.

    The image config and the history stay; runs do this by themselves at flatten_at layers.
    """
    from pienv.ops import maint

    ctx = selected(branch_name)
    with ui.progress("flattening", None) as bar:
        task = bar.add_task("flatten", total=None)
        reporting(ctx, lambda _what, done, total: bar.update(task, completed=done, total=total))
        r = maint.flatten(ctx, branch_name)
    ui.out(f"{r.branch}: {r.old[:12]} ({r.old_depth} layers) -> {r.new[:12]} (1 layer)")


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Check engine, store, images and locks; say how to fix each.

    Also the free disk, each branch's layer depth, the base and orphan runs.
    """
    from pienv.ops import maint

    checks = maint.doctor(context())
    if as_json:
        ui.emit_json([c.to_json() for c in checks])
        return
    style = {"ok": "green", "warn": "yellow", "fail": "red"}
    for c in checks:
        ui.console().print(
            f"[{style[c.level]}]{c.level:<4}[/] {c.name}: {c.detail}"
            + (f"  -> {c.fix}" if c.fix else ""),
            highlight=False,
        )
    if any(c.level == "fail" for c in checks):
        raise typer.Exit(1)


@app.command()
def fsck(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Rebuild the index from image labels and lost refs from the reflog."
        ),
    ] = False,
    allow_loss: Annotated[
        bool,
        typer.Option("--allow-loss", help="Let --repair drop refs whose commits are all gone."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check refs, reflog and index against the engine.

    `--repair` saves the old files next to the new ones, drops torn lines, rebuilds the
    commit index from the images' labels and refs.json from the reflog (labels only for what
    the reflog no longer knows).
    """
    from pienv.ops import maint

    r = maint.fsck(context(), repair, allow_loss)
    if as_json:
        ui.emit_json(r.to_json())
        return
    for p in r.problems:
        ui.out(f"problem: {p}")
    for f in r.fixed:
        ui.out(f"repaired: {f}")
    for u in r.unrestorable:
        ui.out(f"could not restore: {u}")
    ui.out("store ok" if not r.problems else f"{len(r.problems)} problem(s)")
    if r.problems and not repair:
        raise typer.Exit(1)
