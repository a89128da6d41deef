"""The env commit DAG: ancestry and reachability (networkx), log order and graph lanes.

Edges point from a commit to its parents, as in git. Parents missing from the index (pruned)
are simply absent from the graph.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pienv.model import Commit

if TYPE_CHECKING:
    import networkx as nx


def build(commits: Mapping[str, Commit]) -> nx.DiGraph:
    import networkx as nx

    g = nx.DiGraph()
    for cid in commits:
        g.add_node(cid)
    for c in commits.values():
        for p in c.parents:
            if p in commits:
                g.add_edge(c.id, p)
    return g


def ancestors(g: nx.DiGraph, cid: str) -> set[str]:
    """``cid`` and everything it descends from."""
    import networkx as nx

    if cid not in g:
        return set()
    return {cid, *nx.descendants(g, cid)}


def reachable(g: nx.DiGraph, starts: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for s in starts:
        if s in g and s not in out:
            out |= ancestors(g, s)
    return out


def is_ancestor(g: nx.DiGraph, older: str, newer: str) -> bool:
    import networkx as nx

    return older == newer or (older in g and newer in g and nx.has_path(g, newer, older))


def ancestor_sets(commits: Mapping[str, Commit], heads: Iterable[str]) -> dict[str, set[str]]:
    """``ancestors`` of several heads by a plain walk, for listings (branch, status).

    The same answer as ``ancestors(build(commits), head)``, without importing networkx: that
    import alone costs ~90 ms of the 300 ms a listing may take over 1,000 commits.
    """
    out: dict[str, set[str]] = {}
    for head in heads:
        seen: set[str] = set()
        stack = [head] if head in commits else []
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            stack.extend(p for p in commits[cid].parents if p in commits)
        out[head] = seen
    return out


def log_order(commits: Mapping[str, Commit], starts: Iterable[str]) -> list[str]:
    """Commits reachable from ``starts``, children before parents, newest first otherwise.

    Kahn's algorithm over the reachable set with a newest-first heap: the same order as
    ``git log --date-order``. Pure Python: no graph library needed for a walk this simple.
    """
    seen: set[str] = set()
    stack = [s for s in starts if s in commits]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        stack.extend(p for p in commits[cid].parents if p in commits and p not in seen)
    pending_children: dict[str, int] = dict.fromkeys(seen, 0)
    for cid in seen:
        for p in commits[cid].parents:
            if p in seen:
                pending_children[p] += 1
    heap = [(_key(commits[c]), c) for c, n in pending_children.items() if n == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, cid = heapq.heappop(heap)
        out.append(cid)
        for p in commits[cid].parents:
            if p in seen:
                pending_children[p] -= 1
                if pending_children[p] == 0:
                    heapq.heappush(heap, (_key(commits[p]), p))
    return out


def _key(c: Commit) -> tuple[str, str]:
    # Newest first: invert the RFC 3339 string so the min-heap pops the latest.
    return ("".join(chr(0x10FFFF - ord(ch)) for ch in c.created), c.id)


@dataclass(frozen=True)
class GraphRow:
    """One line of ``log --graph``: the lane drawing and, on commit lines, the commit id."""

    graph: str
    commit: str | None = None


def lanes(order: Sequence[str], parents: Mapping[str, Sequence[str]]) -> list[GraphRow]:
    """Draw lanes like ``git log --graph``: ``*`` commit, ``|`` lane, ``/`` fork, ``\\`` merge.

    ``order`` must list children before parents. Each lane waits for one commit id; when
    several lanes wait for the same commit (a fork point seen from below) they collapse into
    the leftmost one before the commit is drawn.
    """
    rows: list[GraphRow] = []
    active: list[str] = []
    for n, cid in enumerate(order):
        if cid not in active:
            active.append(cid)
        col = active.index(cid)
        # Collapse duplicate lanes waiting for this commit, right to left.
        for k in range(len(active) - 1, col, -1):
            if active[k] != cid:
                continue
            # Bend into the nearest lane on the left waiting for the same commit.
            into = max(j for j in range(col, k) if active[j] == cid)
            rows.append(GraphRow(_collapse(len(active), into, k)))
            del active[k]
        rows.append(GraphRow(_row(len(active), col, "*"), cid))
        ps = [p for p in parents.get(cid, ()) if p]
        if not ps:
            del active[col]
            if col < len(active):
                rows.append(GraphRow(_shift_left(len(active) + 1, col)))
            elif n + 1 < len(order) and order[n + 1] not in active:
                # The next commit starts a new lane in this very column: leave a gap, or it
                # would read as the root's child (an unrelated root from `reset --all`).
                rows.append(GraphRow(" ".join("|" for _ in active)))
            continue
        active[col] = ps[0]
        for extra in ps[1:]:
            if extra in active:
                continue
            active.insert(col + 1, extra)
            rows.append(GraphRow(_row(len(active) - 1, col, "|").rstrip() + "\\"))
    return [GraphRow(r.graph.rstrip(), r.commit) for r in rows]


def _row(width: int, col: int, mark: str) -> str:
    return " ".join(mark if i == col else "|" for i in range(width)) + " "


def _collapse(width: int, into: int, lane: int) -> str:
    # Lanes left of ``lane`` stay; ``lane`` bends into ``into`` ("|/" when adjacent, "|_|/"
    # across others, as git draws); lanes right of it shift one to the left.
    cells = ["|"] * lane
    text = " ".join(cells[: into + 1])
    if lane > into + 1:
        text += "_" + "_".join(cells[into + 1 : lane])
    text += "/"
    text += "".join(" /" for _ in range(lane + 1, width))
    return text


def _shift_left(width: int, gone: int) -> str:
    # A lane ended (root commit) at ``gone``; the lanes right of it move one left.
    return (
        " ".join("|" for _ in range(gone))
        + (" " if gone else "")
        + " ".join("/" for _ in range(gone + 1, width))
    )
