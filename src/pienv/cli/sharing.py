"""`pienv push`, `fetch`, `pull`, `clone`: env branches through an OCI registry
(ops/push.py, ops/remote.py; docs/sharing.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pienv import ui
from pienv.cli.common import JsonOpt, complete_ref, complete_remote, context, family, selected

app = family()

RemoteArg = Annotated[
    str | None,
    typer.Argument(
        metavar="[REMOTE]",
        help="The remote (default: origin, or the only one).",
        autocompletion=complete_remote,
    ),
]


class _Transfer:
    """The progress line of a push or pull on stderr: commits, bytes, rate."""

    def __init__(self, what: str) -> None:
        import time

        self.activity = ui.activity(what)
        self.start = time.monotonic()

    def __enter__(self) -> _Transfer:
        self.activity.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.activity.__exit__(*exc)

    def __call__(self, p: Any) -> None:
        import time

        if p.phase == "scan":
            self.activity.update(f"scanning {ui.plural(p.total, 'commit')} for credentials")
            return
        rate = p.bytes / max(time.monotonic() - self.start, 0.001)
        text = f"{p.phase} {p.done}/{p.total} commits, {ui.size(p.bytes)} ({ui.size(int(rate))}/s)"
        self.activity.update(f"{text} {p.detail}".strip())


@app.command()
def push(
    remote_name: RemoteArg = None,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[BRANCH|TAG...]",
            help="What to push (default: the current branch).",
            autocompletion=complete_ref,
        ),
    ] = None,
    all_refs: Annotated[bool, typer.Option("--all", help="Every branch and tag.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Overwrite a remote head that is not an ancestor; send commits made before "
            "logins moved out of images.",
        ),
    ] = False,
    squash: Annotated[
        bool,
        typer.Option(
            "--squash", help="Send each head as one flattened commit, without its history."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send branches and tags with all their commits.

    Only what the remote lacks travels. Refuses a remote head that is not an ancestor of
    yours, and any layer in the pushed history that holds a credential file
    (docs/sharing.md).
    """
    from pienv.ops.push import push as do_push

    ctx = selected()
    with _Transfer("pushing") as bar:
        r = do_push(ctx, remote_name, names or [], all_refs, force, bar, squash)
    if as_json:
        ui.emit_json(r.to_json())
        return
    for ref in r.refs:
        old = ref.old[:12] if ref.old else "(new)"
        ui.out(f"{r.remote}/{ref.name}: {old} -> {ref.new[:12]} ({ref.outcome})")
    ui.note(f"{ui.plural(r.commits, 'commit')} sent, {ui.size(r.bytes)} uploaded to {r.url}")
    _warn_lost(r.lost)


def _warn_lost(lost: list[Any]) -> None:
    for x in lost:
        ui.warn(
            f"lost update on the remote: a push of {x.head} to {x.branch} by {x.by or '?'} "
            f"({x.pushed}) is not on the branch; its commits are still on the remote"
        )


@app.command()
def fetch(remote_name: RemoteArg = None, as_json: JsonOpt = False) -> None:
    """Bring a remote's branches, tags and commits.

    Branches arrive as REMOTE/BRANCH; tags become local tags.
    """
    from pienv.ops import remote

    with _Transfer("fetching") as bar:
        r = remote.fetch(context(), remote_name, bar)
    if as_json:
        ui.emit_json(r.to_json())
        return
    _print_fetch(r)


def _print_fetch(r: Any) -> None:
    for u in r.branches:
        old, new = (u.old or "")[:12] or "(new)", (u.new or "")[:12] or "(gone)"
        ui.out(f"{r.remote}/{u.name}: {old} -> {new}")
    for u in r.tags:
        ui.out(f"tag {u.name}: {(u.new or '')[:12] or '(gone)'}")
    for t in r.tag_conflicts:
        ui.warn(f"tag {t} on {r.remote} names another commit than the local tag; kept the local")
    ui.note(f"{ui.plural(r.commits, 'commit')} fetched from {r.url}")
    _warn_lost(r.lost)


@app.command()
def pull(
    remote_name: RemoteArg = None,
    branch_name: Annotated[
        str | None,
        typer.Argument(metavar="[BRANCH]", help="The branch (default: the current one)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch, then fast-forward the branch.

    Never a merge: diverged heads are refused, both named.
    """
    from pienv.ops import remote

    ctx = selected(branch_name)
    with _Transfer("pulling") as bar:
        r = remote.pull(ctx, remote_name, branch_name, bar)
    if as_json:
        ui.emit_json(r.to_json())
        return
    old = r.old[:12] if r.old else "(new)"
    ui.out(f"{r.branch}: {old} -> {r.new[:12]} ({r.outcome}, from {r.remote}/{r.branch})")


@app.command()
def clone(
    url: Annotated[
        str,
        typer.Argument(metavar="REGISTRY/REPOSITORY", help="The remote to clone (as origin)."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Make a new store from a remote.

    The store is PIENV_HOME; every branch, tag and commit arrives.
    """
    from pienv.ops import remote

    with _Transfer("cloning") as bar:
        r = remote.clone(context(), url, bar)
    if as_json:
        ui.emit_json(r.to_json())
        return
    _print_fetch(r.fetch)
    head = f" at {r.head[:12]}" if r.head else ""
    ui.out(f"Cloned {r.url} into {r.home}; on branch {r.branch or '(none)'}{head}")
