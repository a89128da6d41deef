"""`pienv base build`: the base image new roots start from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pienv import ui
from pienv.cli.common import (
    context,
    family,
)

app = family("The base image new roots start from.", group=True)


@app.command("build")
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
    from pienv.runloop import baseimage as base

    def show(line: str) -> None:
        # Docker's "Step 2/7 : RUN ..." lines stay; the output under them only passes by.
        if line.startswith("Step "):
            act.print(line)
        elif line.strip():
            act.update(line.strip())

    with ui.activity("building base") as act:
        r = base.build(context(), directory, show)
    ui.out(f"built {base.BASE_TAG} ({r.image[:12]}) from {r.source}")
    ui.note(
        "existing branches keep their environment; they start from the new base only after "
        "`pienv reset --system` / `--all`, and new stores start from it"
    )
