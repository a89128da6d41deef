"""What Docker did to this store's commits behind pienv's back: one listing, an inspect for
each commit the listing lacks.

`docker image prune -a`, `docker system prune -a` and `docker rmi` of an image delete commits;
`docker rmi TAG` and `docker tag OTHER TAG` remove only a commit's tag (the image stays while a
child or a container needs it, but plain `docker image prune` may delete it next). Commands
that read a branch say so at once; `fsck --repair` re-tags what still exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pienv import dag
from pienv.context import Context
from pienv.errors import PienvError, UsageError
from pienv.model import LABEL, Commit, short

if TYPE_CHECKING:
    from pienv.engine import Engine, ImageRow


def commit_tag(store_id: str, cid: str) -> str:
    """The tag that keeps a commit out of plain `docker image prune`."""
    return f"pienv/{store_id}:{short(cid)}"


@dataclass
class Survey:
    present: dict[str, Commit] = field(default_factory=dict)  # every commit image found
    untagged: set[str] = field(default_factory=set)  # found, without its pienv tag
    gone: set[str] = field(default_factory=set)  # wanted and not on the engine


def survey(engine: Engine, store_id: str, rows: list[ImageRow], wanted: Iterable[str]) -> Survey:
    """``rows``: the store's commit images as listed; ``wanted``: commit ids that should exist
    (an untagged parent is not listed: inspected by id, it is found without its tag)."""
    s = Survey()
    for row in rows:
        s.present[row.id] = Commit.from_labels(row.id, dict(row.labels))
        if commit_tag(store_id, row.id) not in row.tags:
            s.untagged.add(row.id)
    for cid in sorted(set(wanted) - s.present.keys()):
        info = engine.inspect_image(cid)
        if info is None or info.labels.get(f"{LABEL}role") != "commit":
            s.gone.add(cid)
            continue
        s.present[cid] = Commit.from_labels(cid, dict(info.labels))
        if commit_tag(store_id, cid) not in info.tags:
            s.untagged.add(cid)
    return s


def likely_cause(gone: int, total: int) -> str:
    if gone >= total:
        return "`docker image prune -a` or `docker system prune -a`?"
    return "`docker rmi`, `docker image prune -a` or `docker system prune -a`?"


def history_warnings(
    ctx: Context, store_id: str, heads: list[str], what: str, ancestors: bool = True
) -> list[str]:
    """What a command reading ``heads`` (and, with ``ancestors``, their ancestors) should say
    about images deleted or untagged behind pienv's back: one listing of the store's images,
    nothing more when all are there. Engine errors propagate (callers that work without an
    engine catch them)."""
    commits = ctx.store.commits()
    wanted: set[str] = set(heads)
    if ancestors:
        for found in dag.ancestor_sets(commits, [h for h in heads if h in commits]).values():
            wanted |= found
    if not wanted:
        return []
    engine = ctx.engine()
    rows = engine.images([f"{LABEL}store={store_id}", f"{LABEL}role=commit"])
    s = survey(engine, store_id, rows, wanted)
    out = []
    gone = s.gone & wanted
    if gone and len(wanted) == 1:
        out.append(
            f"{what} is gone from the engine (deleted outside pienv: "
            f"{likely_cause(1, 1)}); docs/recovery.md says the way back"
        )
    elif gone:
        out.append(
            f"{len(gone)} of the {len(wanted)} commits of {what} are gone from the engine "
            f"(deleted outside pienv: {likely_cause(len(gone), len(wanted))}); `pienv fsck` "
            "lists them, docs/recovery.md says the way back"
        )
    untagged = s.untagged & wanted
    if untagged:
        out.append(
            f"{len(untagged)} commit(s) of {what} lost their tag (`docker rmi` or `docker tag` "
            "over it?), so `docker image prune` may delete them: `pienv fsck --repair` tags "
            "them again"
        )
    return out


def require_image(ctx: Context, cid: str) -> None:
    """Refuse to point a ref at a commit whose image is gone (a branch there could never run
    again). An unreachable engine cannot tell: the move goes on, as it did without one."""
    try:
        info = ctx.engine().inspect_image(cid)
    except PienvError:
        return
    if info is None:
        raise UsageError(
            f"commit {short(cid)}'s image is gone from the engine (deleted outside pienv: "
            "`docker image prune -a`, `docker system prune -a` or `docker rmi`?); nothing moved",
            hint="`pienv fsck` lists what is gone; `pienv reflog` shows other states",
        )
