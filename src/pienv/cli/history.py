"""Reading history: `pienv log`, `show`, `diff`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pienv import ui
from pienv.cli.common import (
    JsonOpt,
    complete_rev,
    family,
    reporting,
    selected,
)

if TYPE_CHECKING:
    from pienv.model import Commit

app = family()


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
    code: Annotated[
        bool, typer.Option("--code", help="Name the workspace code recorded with each commit.")
    ] = False,
    as_json: JsonOpt = False,
    all_kinds: Annotated[
        bool,
        typer.Option(
            "--all-kinds",
            help="Also list the commits pienv makes for itself (prepare: a worktree's mount "
            "points).",
        ),
    ] = False,
    secrets: Annotated[
        bool,
        typer.Option(
            "--secrets",
            help="List only commits whose layers hold credential-looking files (a later "
            "deletion does not remove them), with those paths.",
        ),
    ] = False,
) -> None:
    """Env commits, newest first."""
    if secrets:
        _log_secrets(rev, all_refs, as_json)
        return
    from pienv.ops.history import log as get_log

    result = get_log(selected(), rev, all_refs, n, graph, all_kinds)
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
        said = f" {_code_note(c)}" if code else ""
        if c.egress:  # the run went through an egress policy (`pienv egress log` shows it)
            said += f" [egress {c.egress[:8]}]"
        lines.append(
            f"{prefix}{c.short}{ui.decorate(e.refs)} {ui.printable(c.message)}  "
            f"({ui.age(c.created)}){said}"
        )
        lines.extend(result.connectors.get(i, []))
    _print_log(lines, graph)


def _log_secrets(rev: str | None, all_refs: bool, as_json: bool) -> None:
    from pienv.ops.history import secret_files

    ctx = selected()
    with ui.activity("log --secrets") as act:
        reporting(ctx, lambda what, done, _total: act.update(f"{what}: {done} commits"))
        hits = secret_files(ctx, rev, all_refs)
    if as_json:
        ui.emit_json([{"commit": h.commit.id, "paths": h.paths} for h in hits])
        return
    for h in hits:
        c = h.commit
        ui.out(f"{c.short} {ui.printable(c.message)}  ({ui.age(c.created)})")
        for p in h.paths:
            ui.out(f"    {p}")
    if hits:
        ui.warn(
            "these files stay in their commits' layers even if a later run deleted them; "
            "to remove them from history see docs/agents.md (Secrets in history)"
        )
    else:
        ui.note("no credential-looking files in these commits' layers")


def _code_note(c: Commit) -> str:
    """A log line's code: the git commit (HEAD, or HEAD + uncommitted state) it recorded."""
    if not c.git_head:
        return "[code -]"
    if c.code and c.code != c.git_head:
        return f"[code {c.code[:10]} = {c.git_head[:10]} + uncommitted]"
    return f"[code {c.git_head[:10]}]"


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


def _code_field(c: Commit) -> str:
    if c.code and c.code != c.git_head:
        return f"{c.code} (git HEAD + uncommitted changes; refs/pienv/code/)"
    return "the git HEAD (clean tree)" if c.code else "-"


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

    r = get_show(selected(), rev)
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
        ("code", _code_field(c)),
        # Say why a commit that shows paths added no bytes (a directory's time, as apt
        # leaves /tmp): nothing else in it changed.
        ("size added", ui.size(c.size) + (" (metadata only)" if metadata_only else "")),
        ("layers", str(c.layers)),
    ]
    if c.flattened_from:
        fields.append(("flattened", c.flattened_from[:12]))
    if c.replays:
        fields.append(("replays", c.replays[:12]))
    if c.egress:
        audit = f", audit: pienv egress log {c.short}" if c.egress_audit else ""
        fields.append(("egress", f"policy {c.egress[:12]}{audit}"))
    for key, value in fields:
        ui.out(f"{key + ':':<11} {value}")
    ui.out("")
    ui.out(f"    {ui.printable(c.message)}")
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
    from pienv.secrets import credential_paths

    if found := credential_paths(r.changes):
        ui.warn(
            f"this commit's layer holds credential-looking files: {', '.join(found)} "
            "(see docs/agents.md, Secrets in history)"
        )
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

    ctx = selected()
    with ui.activity("diff") as act:
        reporting(ctx, lambda what, _done, _total: act.update(what))
        r = get_diff(ctx, rev_a, rev_b, packages)
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
