"""Log order and graph lanes (no engine)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pienv import dag
from pienv.model import Commit


def mk(cid: str, parents: tuple[str, ...], t: int) -> Commit:
    return Commit(
        id=cid,
        parents=parents,
        branch="b",
        message=cid,
        created=f"2026-01-01T00:00:{t:02d}.000000Z",
    )


def graph(order: list[str], parents: dict[str, list[str]]) -> list[str]:
    return [f"{r.graph} {r.commit}" if r.commit else r.graph for r in dag.lanes(order, parents)]


def test_linear() -> None:
    assert graph(["c", "b", "a"], {"c": ["b"], "b": ["a"], "a": []}) == ["* c", "* b", "* a"]


def test_fork_like_git() -> None:
    assert graph(["x", "y", "a"], {"x": ["a"], "y": ["a"], "a": []}) == [
        "* x",
        "| * y",
        "|/",
        "* a",
    ]


def test_three_way_fork_collapses_adjacent_lanes() -> None:
    order = ["e", "d", "c", "b", "a"]
    parents = {"e": ["a"], "d": ["b"], "c": ["a"], "b": ["a"], "a": []}
    assert graph(order, parents) == ["* e", "| * d", "| | * c", "| * | b", "| |/", "|/", "* a"]


def test_merge_draws_backslash() -> None:
    assert graph(["m", "x", "y", "a"], {"m": ["x", "y"], "x": ["a"], "y": ["a"], "a": []}) == [
        "* m",
        "|\\",
        "* | x",
        "| * y",
        "|/",
        "* a",
    ]


def test_log_order_children_first_newest_first() -> None:
    commits = {
        c.id: c
        for c in [mk("a", (), 1), mk("b", ("a",), 2), mk("c", ("a",), 3), mk("d", ("b",), 4)]
    }
    assert dag.log_order(commits, ["d", "c"]) == ["d", "c", "b", "a"]


@st.composite
def forests(draw: st.DrawFn) -> dict[str, Commit]:
    n = draw(st.integers(1, 40))
    commits: dict[str, Commit] = {}
    for i in range(n):
        ids = list(commits)
        parents: tuple[str, ...] = ()
        if (ids and draw(st.booleans())) or (ids and i > 0 and draw(st.integers(0, 9)) > 0):
            parents = (draw(st.sampled_from(ids)),)
        cid = f"c{i:03d}"
        commits[cid] = mk(cid, parents, i % 60)
    return commits


@given(forests())
def test_every_commit_drawn_once_with_children_first(commits: dict[str, Commit]) -> None:
    order = dag.log_order(commits, list(commits))
    assert sorted(order) == sorted(commits)
    pos = {c: i for i, c in enumerate(order)}
    for c in commits.values():
        for p in c.parents:
            assert pos[c.id] < pos[p]
    rows = dag.lanes(order, {c: commits[c].parents for c in order})
    assert [r.commit for r in rows if r.commit] == order
    for r in rows:
        assert set(r.graph) <= set("*|/\\_ ")
        if r.commit:
            assert r.graph.count("*") == 1


def test_reachability_and_ancestry() -> None:
    commits = {c.id: c for c in [mk("a", (), 1), mk("b", ("a",), 2), mk("c", ("a",), 3)]}
    g = dag.build(commits)
    assert dag.ancestors(g, "b") == {"a", "b"}
    assert dag.reachable(g, ["b", "c"]) == {"a", "b", "c"}
    assert dag.is_ancestor(g, "a", "c") and not dag.is_ancestor(g, "b", "c")


@given(forests())
def test_plain_ancestor_walk_matches_networkx(commits: dict[str, Commit]) -> None:
    g = dag.build(commits)
    sets = dag.ancestor_sets(commits, list(commits))
    for cid in commits:
        assert sets[cid] == dag.ancestors(g, cid)
