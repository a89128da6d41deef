"""The typer command line: parse, call one operation, render its result.

entry.py is the console script: it holds the error handler and runs the plain forms of
`run`/`shell` without importing this module. Heavy modules (docker, networkx, dulwich, rich
tables) are imported inside the commands that need them, so `pienv --help` and quick listings
start fast.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pienv import ui
from pienv.errors import UsageError

app = typer.Typer(
    help="A git-like versioned environment in Docker for coding agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
worktree_app = typer.Typer(help="Git worktrees bound to env branches (one per agent).")
base_app = typer.Typer(help="The base image new roots start from.")
app.add_typer(worktree_app, name="worktree")
app.add_typer(base_app, name="base")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (docs/json.md).")]


def _ctx() -> Any:
    from pienv.ops.context import Context

    return Context()


def _commit_json(c: Any, refs: tuple[str, ...] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {"short": c.short, **c.to_json()}
    data["refs"] = list(refs)
    return data


# -- run / shell ------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str] | None, typer.Argument(help="Command to run (after --).")] = None,
    branch: Annotated[str | None, typer.Option("--branch", "-b", help="Env branch.")] = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", "-w", help="Workspace.")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    no_commit: Annotated[bool, typer.Option("--no-commit", help="Discard env changes.")] = False,
    wait: Annotated[
        float | None, typer.Option("--wait", help="Wait SECONDS for a busy branch (0: forever).")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="Pass this host variable (NAME).")
    ] = None,
) -> None:
    """Run the agent (or CMD) in the env branch's container; commit what it changed."""
    # The plain forms of this command never get here: entry.py reads them (runargs.py).
    _run(
        "run",
        command,
        branch=branch,
        workdir=workdir,
        message=message,
        no_commit=no_commit,
        wait=wait,
        envs=env,
    )


@app.command()
def shell(
    branch: Annotated[str | None, typer.Option("--branch", "-b", help="Env branch.")] = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", "-w")] = None,
    no_commit: Annotated[bool, typer.Option("--no-commit")] = False,
) -> None:
    """An interactive login shell in the env (committed on exit, like run)."""
    _run("shell", branch=branch, workdir=workdir, no_commit=no_commit)


def _run(name: str, command: list[str] | None = None, **values: Any) -> None:
    from pienv import runargs

    req = runargs.build(name, command, **values)
    if req is None:
        raise UsageError("--wait takes a number of seconds")
    raise typer.Exit(runargs.run_command(req))


# -- status / log / show / diff ---------------------------------------------------------------


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Store, engine, branch (and why), head, base, size, layer depth, locks, orphans."""
    from pienv.ops.status import status as get_status

    s = get_status(_ctx(), Path.cwd(), os.environ)
    if as_json:
        ui.emit_json(
            {
                "store": s.store,
                "store_id": s.store_id,
                "workspace": s.workspace,
                "engine": s.engine,
                "engine_ok": s.engine_ok,
                "branch": s.branch or None,
                "branch_rule": s.rule,
                "detached": s.detached,
                "head": _commit_json(s.head) if s.head else None,
                "base": s.base,
                "size": s.size,
                "depth": s.depth,
                "flatten_at": s.flatten_at,
                "locks": [h.__dict__ for h in s.locks],
                "orphans": s.orphans,
                "warnings": s.warnings,
            }
        )
        return
    head = f"{s.head.short} {s.head.message}" if s.head else "(no commit yet)"
    rows = [
        ("store", f"{s.store} ({s.store_id})"),
        ("engine", s.engine),
        ("workspace", s.workspace),
        ("branch", f"{s.branch or '(detached HEAD)'}  [chosen by {s.rule}]"),
        ("head", head),
        ("base", s.base or "(none yet)"),
        ("size", ui.size(s.size)),
        ("depth", f"{s.depth} layers (flatten at {s.flatten_at})"),
        ("locks", ", ".join(f"{h.branch} by pid {h.pid}" for h in s.locks) or "none"),
        ("orphans", str(s.orphans)),
    ]
    for key, value in rows:
        ui.out(f"{key:<10} {value}")
    for w in s.warnings:
        ui.warn(w)


@app.command()
def log(
    rev: Annotated[str | None, typer.Argument(help="Start here (default HEAD).")] = None,
    graph: Annotated[bool, typer.Option("--graph", help="Draw the DAG.")] = False,
    all_refs: Annotated[bool, typer.Option("--all", help="All branches and tags.")] = False,
    n: Annotated[int | None, typer.Option("-n", "--max-count", help="At most N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Env commits, newest first."""
    from pienv.ops.history import log as get_log

    result = get_log(_ctx(), rev, all_refs, n, graph)
    if as_json:
        ui.emit_json([_commit_json(e.commit, e.refs) | {"graph": e.graph} for e in result.entries])
        return
    lines = []
    for line in result.connectors.get(-1, []):
        lines.append(line)
    for i, e in enumerate(result.entries):
        c = e.commit
        prefix = f"{e.graph} " if graph else ""
        lines.append(f"{prefix}{c.short}{ui.decorate(e.refs)} {c.message}  ({ui.age(c.created)})")
        lines.extend(result.connectors.get(i, []))
    _print_log(lines, graph)


def _print_log(lines: list[str], graph: bool) -> None:
    from rich.text import Text

    con = ui.console()
    for line in lines:
        text = Text(line)
        if graph:
            text.highlight_regex(r"^[|*/\\_ ]+", "magenta")
        text.highlight_regex(r"\b[0-9a-f]{12}\b", "yellow")
        text.highlight_regex(r"\([^()]*\)(?= )", "cyan")
        con.print(text, soft_wrap=True)


@app.command()
def show(
    rev: Annotated[str, typer.Argument(help="A revision.")] = "HEAD",
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", help="Paths to list.")] = 20,
) -> None:
    """One commit: its metadata and the filesystem changes it recorded."""
    from pienv.ops.history import show as get_show

    r = get_show(_ctx(), rev)
    c = r.commit
    if as_json:
        data = _commit_json(c, r.refs)
        data["paths"] = [{"kind": k, "path": p} for k, p in (r.changes or [])]
        ui.emit_json(data)
        return
    ui.out(f"commit {c.id}{ui.decorate(r.refs)}")
    fields = [
        ("parents", " ".join(p[:12] for p in c.parents) or "(root)"),
        ("branch", c.branch or "(detached)"),
        ("kind", c.kind),
        ("created", c.created),
        ("command", " ".join(c.command) or "-"),
        ("exit code", "-" if c.exit_code is None else str(c.exit_code)),
        ("workspace", c.workspace or "-"),
        ("git HEAD", c.git_head or "-"),
        ("size added", ui.size(c.size)),
        ("layers", str(c.layers)),
    ]
    if c.flattened_from:
        fields.append(("flattened", c.flattened_from[:12]))
    for key, value in fields:
        ui.out(f"{key + ':':<11} {value}")
    ui.out("")
    ui.out(f"    {c.message}")
    ui.out("")
    if r.changes is None:
        ui.out(f"{c.changes} paths changed (list not recorded)")
        return
    counts = {k: sum(1 for kk, _ in r.changes if kk == k) for k in "ACD"}
    ui.out(
        f"{len(r.changes)} paths changed: {counts['A']} added, {counts['C']} changed, "
        f"{counts['D']} deleted"
    )
    for kind, path in r.changes[:limit]:
        ui.out(f"{kind} {path}")
    if len(r.changes) > limit:
        ui.out(f"... and {len(r.changes) - limit} more (--limit N, or --json for all)")


@app.command()
def diff(
    rev_a: Annotated[str, typer.Argument(help="Old commit.")],
    rev_b: Annotated[str | None, typer.Argument(help="New commit (default HEAD).")] = None,
    packages: Annotated[
        bool, typer.Option("--packages", help="Debian, pip and npm-global package changes.")
    ] = False,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", help="Paths to list per kind.")] = 50,
) -> None:
    """Paths added / changed / deleted between two env commits."""
    from pienv.ops.history import diff as get_diff

    r = get_diff(_ctx(), rev_a, rev_b, packages)
    if as_json:
        ui.emit_json(
            {
                "old": r.old,
                "new": r.new,
                "added": r.added,
                "changed": r.changed,
                "deleted": r.deleted,
                "packages": r.packages,
            }
        )
        return
    ui.out(
        f"{r.old[:12]}..{r.new[:12]}: {len(r.added)} added, {len(r.changed)} changed, "
        f"{len(r.deleted)} deleted"
    )
    for kind, paths in (("A", r.added), ("C", r.changed), ("D", r.deleted)):
        for p in paths[:limit]:
            ui.out(f"{kind} {p}")
        if len(paths) > limit:
            ui.out(f"{kind} ... and {len(paths) - limit} more")
    if r.packages is not None:
        for mgr, groups in r.packages.items():
            for what, items in groups.items():
                for item in items:
                    ui.out(f"{mgr:<5} {what:<9} {item}")
        if not any(items for g in r.packages.values() for items in g.values()):
            ui.out("no package changes")


# -- refs -------------------------------------------------------------------------------------


@app.command()
def branch(
    name: Annotated[str | None, typer.Argument(help="Branch to create (or OLD with -m).")] = None,
    start: Annotated[str | None, typer.Argument(help="Start revision (or NEW with -m).")] = None,
    delete: Annotated[str | None, typer.Option("-d", "--delete", help="Delete NAME.")] = None,
    force_delete: Annotated[
        str | None, typer.Option("-D", help="Delete NAME even if unmerged.")
    ] = None,
    rename: Annotated[bool, typer.Option("-m", "--move", help="Rename OLD to NEW.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List, create, delete (-d/-D) or rename (-m OLD NEW) env branches."""
    from pienv.ops import history

    ctx = _ctx()
    if delete or force_delete:
        target = str(delete or force_delete)
        cid = history.delete_branch(ctx, target, force=bool(force_delete))
        ui.out(f"Deleted branch {target} (was {cid[:12]}).")
        return
    if rename:
        if not name or not start:
            raise UsageError("usage: pienv branch -m OLD NEW")
        history.rename_branch(ctx, name, start)
        ui.out(f"Renamed branch {name} to {start}.")
        return
    if name:
        cid = history.create_branch(ctx, name, start)
        ui.out(f"Created branch {name} at {cid[:12]}.")
        return
    infos = history.branches(ctx)
    if as_json:
        ui.emit_json(
            [
                {
                    "name": b.name,
                    "head": b.head,
                    "current": b.current,
                    "created": b.created,
                    "commits": b.count,
                    "size": b.size,
                    "locked": b.locked,
                    "worktrees": list(b.worktrees),
                }
                for b in infos
            ]
        )
        return
    ui.table(
        ["", "branch", "head", "age", "commits", "size", "lock", "worktree"],
        [
            (
                "*" if b.current else "",
                b.name,
                b.head[:12],
                ui.age(b.created),
                str(b.count),
                ui.size(b.size),
                "running" if b.locked else "",
                ", ".join(b.worktrees),
            )
            for b in infos
        ],
    )


@app.command()
def checkout(
    target: Annotated[str, typer.Argument(help="Branch, or a revision to detach at.")],
    start: Annotated[str | None, typer.Argument(help="Start revision with -b.")] = None,
    create: Annotated[bool, typer.Option("-b", help="Create the branch first.")] = False,
) -> None:
    """Switch the current env branch, or detach HEAD at a commit."""
    from pienv.ops.history import checkout as do_checkout

    r = do_checkout(_ctx(), target, create, start)
    if r.branch is None:
        ui.out(f"HEAD is now at {r.commit[:12]} (detached).")
        ui.warn("runs will advance a detached HEAD; `pienv checkout -b NAME` keeps them")
    elif r.created:
        ui.out(f"Switched to a new branch '{r.branch}' at {r.commit[:12]}.")
    else:
        ui.out(f"Switched to branch '{r.branch}' at {r.commit[:12]}.")


@app.command()
def reset(
    rev: Annotated[str | None, typer.Argument(help="Move the current branch here.")] = None,
    system: Annotated[
        bool, typer.Option("--system", help="Fresh base, keeping the agent's home.")
    ] = False,
    all_: Annotated[bool, typer.Option("--all", help="Back to the bare base.")] = False,
) -> None:
    """Move the current branch to REV (environment rollback); the old head stays in the reflog."""
    ctx = _ctx()
    if system or all_:
        from pienv.ops import maint

        r = maint.reset_base(ctx, keep_home=system, on_bytes=None)
        ui.out(f"{r.branch or 'HEAD'} is now at {r.new[:12]} ({r.what}).")
        ui.note(f"the previous head {str(r.old)[:12]} stays in the reflog")
        return
    if not rev:
        raise UsageError("usage: pienv reset REV (or --system / --all)")
    from pienv.ops.history import reset as do_reset

    res = do_reset(ctx, rev)
    ui.out(f"{res.branch or 'HEAD'} is now at {res.new[:12]} (was {str(res.old)[:12]}).")


@app.command()
def tag(
    name: Annotated[str | None, typer.Argument(help="Tag to create.")] = None,
    rev: Annotated[str | None, typer.Argument(help="Revision (default HEAD).")] = None,
    delete: Annotated[str | None, typer.Option("-d", "--delete", help="Delete NAME.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Named snapshots that prune never removes."""
    from pienv.ops import history

    ctx = _ctx()
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
        ui.emit_json([{"name": k, "commit": v} for k, v in sorted(tags.items())])
        return
    for k, v in sorted(tags.items()):
        ui.out(f"{k:<20} {v[:12]}")


@app.command()
def reflog(
    ref: Annotated[str | None, typer.Argument(help="Branch (default current).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every move of a ref; undo one with `pienv reset BRANCH@{N}`."""
    from pienv.ops.history import reflog as get_reflog

    rows = get_reflog(_ctx(), ref)
    if as_json:
        ui.emit_json([{"selector": r.selector, **r.entry.to_json()} for r in rows])
        return
    for r in rows:
        e = r.entry
        ui.out(f"{str(e.new)[:12]} {r.selector}: {e.what}  ({e.who}, {ui.age(e.time)})")


# -- worktrees --------------------------------------------------------------------------------


@worktree_app.command("add")
def worktree_add(
    path: Annotated[Path, typer.Argument(help="Where the new git worktree goes.")],
    branch: Annotated[
        str | None, typer.Argument(help="Git + env branch name (default: PATH's name).")
    ] = None,
    from_rev: Annotated[
        str | None, typer.Option("--from", help="Env start (default HEAD).")
    ] = None,
) -> None:
    """A git worktree on a new git branch, and an env branch bound to it."""
    from pienv.ops import worktree

    r = worktree.add(_ctx(), Path.cwd(), path, branch, from_rev)
    ui.out(
        f"Worktree {r.path} on git branch '{r.branch}', "
        f"env branch '{r.branch}' at {r.env_head[:12] or '(first run)'}."
    )
    ui.note(f"cd {r.path} && pienv run   # runs there use env branch {r.branch!r}")


@worktree_app.command("list")
def worktree_list(as_json: JsonOpt = False) -> None:
    """Worktrees bound to env branches."""
    from pienv.ops import worktree

    rows = worktree.list_(_ctx())
    if as_json:
        ui.emit_json([r.to_json() for r in rows])
        return
    ui.table(
        ["path", "git branch", "env branch", "env head", "running", "exists"],
        [
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


@worktree_app.command("remove")
def worktree_remove(
    path: Annotated[Path, typer.Argument(help="The worktree to remove.")],
    force: Annotated[bool, typer.Option("--force", help="Even with uncommitted changes.")] = False,
) -> None:
    """Remove a git worktree and its binding; the env branch stays (it is history)."""
    from pienv.ops import worktree

    r = worktree.remove(_ctx(), path, force)
    ui.out(f"Removed worktree {r.path}; env branch '{r.env_branch}' is kept.")


# -- recovery ---------------------------------------------------------------------------------


@app.command()
def orphans(as_json: JsonOpt = False) -> None:
    """Run containers whose run never got committed."""
    from pienv.ops import recovery

    rows = recovery.orphans(_ctx())
    if as_json:
        ui.emit_json([o.to_json() for o in rows])
        return
    if not rows:
        ui.out("no orphans")
        return
    ui.table(
        ["container", "branch", "parent", "age", "state", "changes", "holder"],
        [
            (
                o.container[:12],
                o.branch or "HEAD",
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
    container: Annotated[str | None, typer.Argument(help="Orphan container id or name.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every recoverable orphan.")] = False,
) -> None:
    """Commit an orphan onto its branch (or onto recovered/<id> if the branch moved)."""
    from pienv.ops import recovery

    if not container and not all_:
        raise UsageError("usage: pienv recover CONTAINER (or --all)")
    done = recovery.recover(_ctx(), None if all_ else container)
    if not done:
        ui.out("nothing to recover")
    for r in done:
        ui.out(r.note)


@app.command("clean-orphans")
def clean_orphans(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list them.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove orphan containers (their uncommitted changes are lost)."""
    from pienv.ops import recovery

    ctx = _ctx()
    listed = recovery.clean(ctx, dry_run=True)
    if not listed:
        ui.out("no orphans to remove")
        return
    for o in listed:
        ui.out(
            f"{'would remove' if dry_run else 'remove'} {o.container[:12]} ({o.branch or 'HEAD'}, "
            f"{ui.size(o.size)} of changes)"
        )
    if dry_run:
        return
    if not yes and not typer.confirm("Remove these containers and lose their changes?"):
        raise typer.Exit(1)
    gone = recovery.clean(ctx, dry_run=False)
    ui.out(f"removed {len(gone)} orphan container(s)")


@app.command()
def unlock(
    branch_name: Annotated[str, typer.Argument(metavar="BRANCH")],
    force: Annotated[bool, typer.Option("--force", help="Even if the holder is alive.")] = False,
) -> None:
    """Clear a branch lock whose holder is gone."""
    from pienv.ops import recovery

    r = recovery.unlock(_ctx(), branch_name, force)
    ui.out(f"unlocked {r.branch}" + ("" if r.was_locked else " (it was not held)"))


# -- maintenance ------------------------------------------------------------------------------


@app.command()
def prune(
    keep: Annotated[int | None, typer.Option("--keep", help="Keep N commits per branch.")] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Expire reflog entries older (7d, 12h).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove commits no branch, tag or unexpired reflog entry reaches."""
    from pienv.ops import maint

    r = maint.prune(_ctx(), keep, older_than, dry_run)
    if as_json:
        ui.emit_json(r.to_json())
        return
    for cid in r.removed:
        ui.out(f"{'would remove' if dry_run else 'removed'} {cid[:12]}")
    for cid, why in r.kept_in_use:
        ui.out(f"kept {cid[:12]}: {why}")
    verb = "would free" if dry_run else "freed"
    ui.out(f"{len(r.removed)} commit(s), {verb} {ui.size(r.bytes_freed)}")


@app.command()
def flatten(
    branch_name: Annotated[str | None, typer.Argument(metavar="[BRANCH]")] = None,
) -> None:
    """Rewrite a branch head as one layer (keeps its config and history)."""
    from pienv.ops import maint

    ctx = _ctx()
    with ui.progress("flattening", None) as bar:
        task = bar.add_task("flatten", total=None)
        r = maint.flatten(ctx, branch_name, lambda n: bar.advance(task, n))
    ui.out(f"{r.branch}: {r.old[:12]} ({r.old_depth} layers) -> {r.new[:12]} (1 layer)")


@base_app.command("build")
def base_build(
    directory: Annotated[
        Path | None, typer.Argument(help="Build context (default built-in).")
    ] = None,
) -> None:
    """Rebuild the base image (new roots, reset --system/--all use it)."""
    from pienv.ops import baseimage as base

    with ui.progress("building base", None) as bar:
        task = bar.add_task("build", total=None)
        r = base.build(_ctx(), directory, lambda line: bar.update(task, description=line[:60]))
    ui.out(f"built {base.BASE_TAG} ({r.image[:12]}) from {r.source}")
    ui.note(
        "existing branches keep their environment; they start from the new base only after "
        "`pienv reset --system` / `--all`, and new stores start from it"
    )


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Check engine, disk, depth, base, store, locks and orphans; say how to fix each."""
    from pienv.ops import maint

    checks = maint.doctor(_ctx())
    if as_json:
        ui.emit_json([c.__dict__ for c in checks])
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
        bool, typer.Option("--repair", help="Rebuild index and refs from labels.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check every ref, tag and reflog entry against the engine and the index."""
    from pienv.ops import maint

    r = maint.fsck(_ctx(), repair)
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


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version.")] = False,
) -> None:
    if version:
        from pienv import __version__

        ui.out(f"pienv {__version__}")
        raise typer.Exit(0)


# -- entry point ------------------------------------------------------------------------------


def _click_exceptions() -> Any:
    """Click's exception classes: typer >= 0.26 vendors click as typer._click (no `click`
    package is installed then); older typer depends on click itself."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def invoke(args: list[str]) -> int:
    """Run the typer app on ``args``; its exit code. PienvError is left to the caller."""
    try:
        rc = app(args=args, standalone_mode=False, prog_name="pienv")
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        return 130
    except Exception as exc:
        click = _click_exceptions()
        if isinstance(exc, click.ClickException):
            with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr closed
                exc.show()
            return 2 if isinstance(exc, click.UsageError) else 1
        raise
    return rc if isinstance(rc, int) else 0
