"""`pienv status`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pienv import ui
from pienv.cli.common import (
    JsonOpt,
    context,
    family,
)

if TYPE_CHECKING:
    from pienv.locks import Holder

app = family()


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Where you are: branch (and why), head, base, size, locks.

    Also the store, the engine, the layer depth and the orphan runs.
    """
    from pienv.ops.status import status as get_status

    s = get_status(context(), Path.cwd(), os.environ)
    if as_json:
        ui.emit_json(s.to_json())
        return
    head = f"{s.head.short} {ui.printable(s.head.message)}" if s.head else "(no commit yet)"
    rows = [
        ("store", f"{s.store} ({s.store_id})"),
        ("engine", s.engine),
        ("workspace", s.workspace),
        ("branch", f"{s.branch or '(detached HEAD)'}  [chosen by {s.branch_rule}]"),
        ("head", head),
        ("base", _base(s.base)),
        ("size", ui.size(s.size)),
        ("depth", f"{s.depth} layers (flatten at {s.flatten_at})"),
        ("locks", ", ".join(_holder(h) for h in s.locks) or "none"),
        ("orphans", "unknown (engine unreachable)" if s.orphans is None else str(s.orphans)),
    ]
    rows.extend(("port", port) for port in s.ports)  # while the run that publishes it lasts
    for t in s.remotes:  # as git: "ahead of 'origin/main' by 2 commits"
        where = f"{t.remote}/{s.branch}"
        if not t.ahead and not t.behind:
            rows.append(("remote", f"{where}: up to date"))
        else:
            rows.append(("remote", f"{where}: {t.ahead} ahead, {t.behind} behind"))
    for key, value in rows:
        ui.out(f"{key:<10} {value}")
    for w in s.warnings:
        ui.warn(w)


def _base(base: str | None) -> str:
    """The base new roots start from; PIENV_BASE_IMAGE, when set, is what the next root
    (the first run, `reset --system`/`--all`) starts from."""
    env = os.environ.get("PIENV_BASE_IMAGE")
    if base is None:
        start = f"{env} (PIENV_BASE_IMAGE)" if env else "pienv's base image"
        return f"none yet: the first run starts from {start}"
    if env and env != base:
        return f"{base} (new roots start from {env}, PIENV_BASE_IMAGE)"
    return base


def _holder(h: Holder) -> str:
    if h.phase == "committing":
        return f"{h.branch} by pid {h.pid} (committing the last run, since {h.since[11:19]})"
    return f"{h.branch} by pid {h.pid}"
