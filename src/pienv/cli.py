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
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pienv import ui
from pienv.errors import UsageError

if TYPE_CHECKING:  # free at run time: ops modules load inside the commands that need them
    from pienv.locks import Holder
    from pienv.ops.context import Context
    from pienv.ops.workspace import Selection

app = typer.Typer(
    help="A git-like versioned environment in Docker for coding agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
worktree_app = typer.Typer(
    help="Git worktrees bound to env branches (one per agent).", no_args_is_help=True
)
base_app = typer.Typer(help="The base image new roots start from.", no_args_is_help=True)
app.add_typer(worktree_app, name="worktree")
app.add_typer(base_app, name="base")
agent_app = typer.Typer(
    help="Agent presets: what `pienv run` installs and starts.", no_args_is_help=True
)
app.add_typer(agent_app, name="agent")

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of text (keys in docs/json.md).")
]


BRANCH_HELP = "The env branch (default: PIENV_PROFILE, the worktree's, or HEAD's)."
WORKDIR_HELP = "Mount DIR as the workspace (default: the git repo around you)."
NO_COMMIT_HELP = "Discard the run's environment changes."


# -- completion (ops/names.py reads the store's files directly) -------------------------------


def _names(kinds: tuple[str, ...], incomplete: str) -> list[str]:
    from pienv.ops.names import ref_names

    return [n for n in ref_names(kinds) if n.startswith(incomplete)]


def complete_branch(incomplete: str) -> list[str]:
    return _names(("branches",), incomplete)


def complete_tag(incomplete: str) -> list[str]:
    return _names(("tags",), incomplete)


def complete_ref(incomplete: str) -> list[str]:
    return _names(("branches", "tags"), incomplete)


def complete_rev(incomplete: str) -> list[str]:
    """Revisions: HEAD, branches, tags, and commit ids once 4+ hex digits are typed."""
    found = _names(("head", "branches", "tags"), incomplete)
    if len(incomplete) >= 4 and set(incomplete) <= set("0123456789abcdef"):
        from pienv.ops.names import commit_ids

        found += [c for c in commit_ids(incomplete) if c not in found]
    return found


def _ctx() -> Context:
    from pienv.ops.context import Context

    return Context()


def _selection(explicit: str | None = None) -> tuple[Context, Selection]:
    """A Context whose HEAD is the branch the selection rule picks here (rule 11, docs/rules.md):
    --branch (``explicit``) > PIENV_PROFILE > worktree binding > HEAD, and that Selection.
    Says which rule chose it when that is not the obvious one."""
    from pienv.ops.workspace import select

    ctx = _ctx()
    sel = select(ctx, Path.cwd(), os.environ, explicit)
    if not sel.by_default:
        ui.note(f"branch {sel.branch} (chosen by {sel.rule})")
    return ctx, sel


def _selected(explicit: str | None = None) -> Context:
    return _selection(explicit)[0]


# -- run / shell ------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="CMD", help="The command to run instead of the agent (after --)."),
    ] = None,
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch", "-b", metavar="BRANCH", help=BRANCH_HELP, autocompletion=complete_branch
        ),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", "-w", metavar="DIR", help=WORKDIR_HELP)
    ] = None,
    message: Annotated[
        str | None, typer.Option("--message", "-m", metavar="MSG", help="The env commit's message.")
    ] = None,
    no_commit: Annotated[bool, typer.Option("--no-commit", help=NO_COMMIT_HELP)] = False,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait", metavar="SECONDS", help="Wait up to SECONDS for a busy branch (0: forever)."
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", metavar="NAME", help="Also pass the host variable NAME (repeatable)."
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Run this agent preset instead of the configured one (`pienv agent list`).",
        ),
    ] = None,
) -> None:
    """Run the agent (or CMD) in the env branch's container.

    The git repo around the current directory is mounted at /workspace and the command starts
    in the same subdirectory; when it exits, what it changed in the environment becomes a
    commit on the branch. The exit code is the command's.
    """
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
        agent=agent,
    )


@app.command()
def shell(
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch", "-b", metavar="BRANCH", help=BRANCH_HELP, autocompletion=complete_branch
        ),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", "-w", metavar="DIR", help=WORKDIR_HELP)
    ] = None,
    no_commit: Annotated[bool, typer.Option("--no-commit", help=NO_COMMIT_HELP)] = False,
) -> None:
    """An interactive login shell in the env.

    Committed on exit like `run`, with the message `shell`.
    """
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
    """Where you are: branch (and why), head, base, size, locks.

    Also the store, the engine, the layer depth and the orphan runs.
    """
    from pienv.ops.status import status as get_status

    s = get_status(_ctx(), Path.cwd(), os.environ)
    if as_json:
        ui.emit_json(s.to_json())
        return
    head = f"{s.head.short} {s.head.message}" if s.head else "(no commit yet)"
    rows = [
        ("store", f"{s.store} ({s.store_id})"),
        ("engine", s.engine),
        ("workspace", s.workspace),
        ("branch", f"{s.branch or '(detached HEAD)'}  [chosen by {s.branch_rule}]"),
        ("head", head),
        ("base", s.base or "(none yet)"),
        ("size", ui.size(s.size)),
        ("depth", f"{s.depth} layers (flatten at {s.flatten_at})"),
        ("locks", ", ".join(_holder(h) for h in s.locks) or "none"),
        ("orphans", "unknown (engine unreachable)" if s.orphans is None else str(s.orphans)),
    ]
    for key, value in rows:
        ui.out(f"{key:<10} {value}")
    for w in s.warnings:
        ui.warn(w)


def _holder(h: Holder) -> str:
    if h.phase == "committing":
        return f"{h.branch} by pid {h.pid} (committing the last run, since {h.since[11:19]})"
    return f"{h.branch} by pid {h.pid}"


@app.command()
def log(
    rev: Annotated[
        str | None,
        typer.Argument(
            metavar="REV",
            help="The revision to start from (default: HEAD).",
            autocompletion=complete_rev,
        ),
    ] = None,
    graph: Annotated[bool, typer.Option("--graph", help="Draw the commit graph.")] = False,
    all_refs: Annotated[
        bool, typer.Option("--all", help="Start from every branch and tag.")
    ] = False,
    n: Annotated[
        int | None, typer.Option("-n", "--max-count", metavar="N", help="Show at most N commits.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Env commits, newest first."""
    from pienv.ops.history import log as get_log

    result = get_log(_selected(), rev, all_refs, n, graph, ui.note)
    for h in result.pending:
        ui.note(
            f"a run on {h.branch!r} is still being committed (pid {h.pid}, since "
            f"{h.since[11:19]}): its commit is not listed yet"
        )
    if as_json:
        ui.emit_json([e.to_json() for e in result.entries])
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
    import re

    def paint(line: str) -> str:
        if graph:
            line = re.sub(r"^[|*/\\_ ]+", lambda m: ui.paint_out(m.group(0), "35"), line)
        line = re.sub(r"\b[0-9a-f]{12}\b", lambda m: ui.paint_out(m.group(0), "33"), line)
        return re.sub(r"\([^()]*\)(?= )", lambda m: ui.paint_out(m.group(0), "36"), line)

    styled = ui.paint_out("", "0") != ""
    for line in lines:
        ui.out(paint(line) if styled else line)


@app.command()
def show(
    rev: Annotated[
        str,
        typer.Argument(
            metavar="REV", help="The commit to show (default: HEAD).", autocompletion=complete_rev
        ),
    ] = "HEAD",
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="List at most N paths.")] = 20,
) -> None:
    """One commit: its metadata and the paths it changed."""
    from pienv.ops.history import show as get_show

    r = get_show(_selected(), rev)
    c = r.commit
    if as_json:
        ui.emit_json(r.to_json())
        return
    ui.out(f"commit {c.id}{ui.decorate(r.refs)}")
    # (Docker says 0 B for such a layer; Podman counts its tar headers.)
    metadata_only = bool(r.changes) and all(k == "M" for k, _ in r.changes or ())
    fields = [
        ("parents", " ".join(p[:12] for p in c.parents) or "(root)"),
        ("branch", c.branch or "(detached)"),
        ("kind", c.kind),
        ("created", c.created),
        ("command", " ".join(c.command) or "-"),
        ("exit code", "-" if c.exit_code is None else str(c.exit_code)),
        ("workspace", c.workspace or "-"),
        ("git HEAD", c.git_head or "-"),
        # Say why a commit that shows paths added no bytes (a directory's time, as apt
        # leaves /tmp): nothing else in it changed.
        ("size added", ui.size(c.size) + (" (metadata only)" if metadata_only else "")),
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
        ui.out("paths: not recorded (a commit without a parent in the index)")
        return
    counts = {k: sum(1 for kk, _ in r.changes if kk == k) for k in "ACDM"}
    ui.out(
        f"{ui.plural(len(r.changes), 'path')} changed: {counts['A']} added, {counts['C']} changed, "
        f"{counts['D']} deleted" + (f", {counts['M']} metadata only" if counts["M"] else "")
    )
    for kind, path in r.changes[:limit]:
        ui.out(f"{kind} {path}")
    if len(r.changes) > limit:
        ui.out(f"... and {len(r.changes) - limit} more (--limit N, or --json for all)")


@app.command()
def diff(
    rev_a: Annotated[
        str, typer.Argument(metavar="OLD", help="The old commit.", autocompletion=complete_rev)
    ],
    rev_b: Annotated[
        str | None,
        typer.Argument(
            metavar="NEW", help="The new commit (default: HEAD).", autocompletion=complete_rev
        ),
    ] = None,
    packages: Annotated[
        bool,
        typer.Option(
            "--packages",
            help="List Debian, pip and global npm package changes instead of paths (reads "
            "only the package databases).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="List at most N paths of each kind.")
    ] = 50,
) -> None:
    """Paths added, changed and deleted between two env commits."""
    from pienv.ops.history import diff as get_diff

    with ui.activity("diff") as act:
        r = get_diff(_selected(), rev_a, rev_b, packages, act.update)
    if as_json:
        ui.emit_json(r.to_json())
        return
    if r.added is not None and r.changed is not None and r.deleted is not None:
        meta = r.metadata or []
        ui.out(
            f"{r.old[:12]}..{r.new[:12]}: {len(r.added)} added, {len(r.changed)} changed, "
            f"{len(r.deleted)} deleted" + (f", {len(meta)} metadata only" if meta else "")
        )
        for kind, paths in (("A", r.added), ("C", r.changed), ("D", r.deleted), ("M", meta)):
            for p in paths[:limit]:
                ui.out(f"{kind} {p}")
            if len(paths) > limit:
                ui.out(f"{kind} ... and {len(paths) - limit} more")
    if r.packages is not None:
        ui.out(f"{r.old[:12]}..{r.new[:12]}: packages (dpkg, pip, npm -g)")
        for mgr, groups in r.packages.items():
            for what, items in groups.items():
                for item in items:
                    ui.out(f"{mgr:<5} {what:<9} {item}")
        if not any(items for g in r.packages.values() for items in g.values()):
            ui.out("no package changes")


# -- refs -------------------------------------------------------------------------------------


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
        cid = history.delete_branch(_ctx(), target, force=bool(force_delete))
        ui.out(f"Deleted branch {target} (was {cid[:12]}).")
        return
    if rename:
        if not name or not start:
            raise UsageError("usage: pienv branch -m OLD NEW")
        history.rename_branch(_ctx(), name, start)
        ui.out(f"Renamed branch {name} to {start}.")
        return
    ctx = _selected()
    if name:
        cid = history.create_branch(ctx, name, start)
        ui.out(f"Created branch {name} at {cid[:12]}.")
        return
    infos = history.branches(ctx)
    if as_json:
        ui.emit_json([b.to_json() for b in infos])
        return
    ui.table(
        ["", "branch", "head", "age", "commits", "size", "lock", "worktree"],
        keep=("branch", "head", "worktree"),
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
) -> None:
    """Switch the current env branch, or detach HEAD at a commit."""
    from pienv.ops.history import checkout as do_checkout

    ctx, sel = _selection()
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
) -> None:
    """Move the current branch to REV (environment rollback).

    The old head stays in the reflog: `pienv reset BRANCH@{1}` undoes it. `--system` starts
    the branch from a fresh base keeping the agent's home; `--all` from the bare base.
    """
    from pienv.locks import name_of

    ctx = _selected(branch_name)
    if system or all_:
        from pienv.ops import maint

        r = maint.reset_base(ctx, keep_home=system, on_bytes=None)
        ui.out(f"{name_of(r.branch)} is now at {r.new[:12]} ({r.what}).")
        ui.note(f"the previous head {str(r.old)[:12]} stays in the reflog")
        return
    if not rev:
        raise UsageError("usage: pienv reset REV (or --system / --all)")
    from pienv.ops.history import reset as do_reset

    res = do_reset(ctx, rev)
    ui.out(f"{name_of(res.branch)} is now at {res.new[:12]} (was {str(res.old)[:12]}).")


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

    ctx = _selected()
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

    rows = get_reflog(_selected(), ref)
    if as_json:
        ui.emit_json([r.to_json() for r in rows])
        return
    for r in rows:
        e = r.entry
        ui.out(f"{str(e.new)[:12]} {r.selector}: {e.what}  ({e.who}, {ui.age(e.time)})")


# -- worktrees --------------------------------------------------------------------------------


@worktree_app.command("add")
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
) -> None:
    """A git worktree and an env branch bound to it.

    The branch is created (git and env) from HEAD unless it exists: an existing env branch
    gets a worktree again.
    """
    from pienv.ops import worktree

    r = worktree.add(_ctx(), Path.cwd(), path, branch, from_rev)
    kept = "existing " if r.existing else ""
    ui.out(
        f"Worktree {r.path} on git branch '{r.branch}', "
        f"{kept}env branch '{r.branch}' at {r.env_head[:12] or '(first run)'}."
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
        keep=("path", "git branch", "env branch", "env head"),
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


@worktree_app.command("remove")
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

    r = worktree.remove(_ctx(), path, force)
    ui.out(f"Removed worktree {r.path}; env branch '{r.env_branch}' is kept.")


# -- recovery ---------------------------------------------------------------------------------


@app.command()
def orphans(as_json: JsonOpt = False) -> None:
    """Run containers whose changes never got committed."""
    from pienv.locks import name_of
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
        keep=("container", "branch", "parent"),
        rows=[
            (
                o.container[:12],
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
    done = recovery.recover(_ctx(), None if all_ else container)
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

    ctx = _ctx()
    listed = recovery.clean(ctx, dry_run=True)
    if not listed:
        ui.out("no orphans to remove")
        return
    for o in listed:
        ui.out(
            f"{'would remove' if dry_run else 'remove'} {o.container[:12]} ({name_of(o.branch)}, "
            f"{ui.size(o.size)} of changes)"
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

    r = recovery.unlock(_ctx(), branch_name, force)
    if r.holder is not None:
        ui.out(f"unlocked {r.branch} (cleared the record of pid {r.holder.pid}, which is gone)")
    else:
        ui.out(f"unlocked {r.branch}" + ("" if r.was_locked else " (it was not held)"))


# -- maintenance ------------------------------------------------------------------------------


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

        pruned = agent_ops.prune_caches(_ctx())
        for name in pruned.removed:
            ui.out(f"emptied {name}")
        for name in pruned.busy:
            ui.out(f"kept {name}: a run is using it")
        if not pruned.removed and not pruned.busy:
            ui.out("no caches to empty")
        return

    with ui.activity("prune") as act:
        r = maint.prune(
            _ctx(), keep, older_than, dry_run, lambda n, total: act.update(f"{n}/{total} commits")
        )
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

    ctx = _selected(branch_name)
    with ui.progress("flattening", None) as bar:
        task = bar.add_task("flatten", total=None)
        r = maint.flatten(
            ctx, branch_name, lambda done, total: bar.update(task, completed=done, total=total)
        )
    ui.out(f"{r.branch}: {r.old[:12]} ({r.old_depth} layers) -> {r.new[:12]} (1 layer)")


@agent_app.command("list")
def agent_list() -> None:
    """The agent presets: command, pinned install, variables passed, where the login lives.

    `[agent] preset` picks one (`pienv run --agent NAME` for one run); `[agent] version`
    moves its pin. The configured agent is marked with `*`.
    """
    from pienv.ops import agent as agent_ops
    from pienv.ops.context import Context

    rows = agent_ops.list_agents(Context().config)
    ui.table(
        ["", "agent", "version", "passes", "state (a volume, never committed)", "install"],
        keep=("agent", "version", "install"),
        rows=[
            (
                "*" if r.configured else "",
                r.name,
                r.version or "-",
                r.env or "-",
                r.state or "-",
                r.install or "-",
            )
            for r in rows
        ],
    )


@base_app.command("build")
def base_build(
    directory: Annotated[
        Path | None,
        typer.Argument(
            metavar="DIR", help="A directory with a Dockerfile (default: the built-in one)."
        ),
    ] = None,
) -> None:
    """Rebuild the base image.

    New stores start from it, and `pienv reset --system` / `--all` move a branch onto it.
    """
    from pienv.ops import baseimage as base

    def show(line: str) -> None:
        # Docker's "Step 2/7 : RUN ..." lines stay; the output under them only passes by.
        if line.startswith("Step "):
            act.print(line)
        elif line.strip():
            act.update(line.strip())

    with ui.activity("building base") as act:
        r = base.build(_ctx(), directory, show)
    ui.out(f"built {base.BASE_TAG} ({r.image[:12]}) from {r.source}")
    ui.note(
        "existing branches keep their environment; they start from the new base only after "
        "`pienv reset --system` / `--all`, and new stores start from it"
    )


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Check engine, store, images and locks; say how to fix each.

    Also the free disk, each branch's layer depth, the base and orphan runs.
    """
    from pienv.ops import maint

    checks = maint.doctor(_ctx())
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

    r = maint.fsck(_ctx(), repair, allow_loss)
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


def _version(value: bool) -> None:
    if value:
        from pienv import __version__

        ui.out(f"pienv {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,  # answered before click asks for a command
            help="Print pienv's version and exit.",
        ),
    ] = False,
) -> None:
    pass


# -- entry point ------------------------------------------------------------------------------


def _click_exceptions() -> Any:
    """Click's exception classes: typer >= 0.26 vendors click as typer._click (no `click`
    package is installed then); older typer depends on click itself."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _usage_line(exc: Any, click: Any) -> str:
    message = str(exc.format_message()).rstrip(".")
    if not isinstance(exc, click.UsageError):
        return message
    path = exc.ctx.command_path if exc.ctx is not None else "pienv"
    return f"{message[:1].lower()}{message[1:]} (see `{path} --help`)"


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
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `pienv` (or `pienv base`)
            with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout closed
                ui.out(getattr(exc, "ctx").get_help())  # noqa: B009 (typed as Exception)
            return 0
        if isinstance(exc, click.ClickException):
            # Usage errors exit 2 (click's and argparse's code; git's 129 is its own), every
            # other error 1; both as the one line every pienv error is (docs/commands.md).
            ui.error(_usage_line(exc, click))
            return 2 if isinstance(exc, click.UsageError) else 1
        raise
    return rc if isinstance(rc, int) else 0
