"""`pienv remote add|list|remove`: names for the registry repositories env branches go to."""

from __future__ import annotations

from typing import Annotated

import typer

from pienv import ui
from pienv.cli.common import JsonOpt, complete_remote, context, family

app = family("Registries to push env branches to.", group=True)


@app.command("add")
def remote_add(
    name: Annotated[str, typer.Argument(help="The remote's name, e.g. origin.")],
    url: Annotated[
        str,
        typer.Argument(metavar="REGISTRY/REPOSITORY", help="Where, e.g. ghcr.io/me/env."),
    ],
) -> None:
    """Name a registry repository.

    E.g. `pienv remote add origin ghcr.io/me/env`.
    """
    from pienv.ops import remote

    row = remote.add(context(), name, url)
    ui.out(f"Added remote {row.name}: {row.url}")


@app.command("list")
def remote_list(as_json: JsonOpt = False) -> None:
    """The remotes and their branches at the last fetch or push."""
    from pienv.ops import remote

    rows = remote.listing(context())
    if as_json:
        ui.emit_json([r.to_json() for r in rows])
        return
    for r in rows:
        ui.out(f"{r.name:<12} {r.url}  ({ui.plural(len(r.branches), 'branch')})")


@app.command("remove")
def remote_remove(
    name: Annotated[str, typer.Argument(help="The remote.", autocompletion=complete_remote)],
) -> None:
    """Forget a remote and its remote-tracking refs.

    Nothing on the registry changes.
    """
    from pienv.ops import remote

    row = remote.remove(context(), name)
    ui.out(f"Removed remote {row.name} ({row.url}).")
