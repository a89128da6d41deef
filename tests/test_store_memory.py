"""Refs, transactions and revisions on the in-memory twin of the store (no disk, no engine).

``MemoryStore()`` runs the same Store code as the disk store (files.Disk and memory.Memory
share one interface), so these tests exercise compare-and-swap, the reflog and revision
resolution as pienv runs them, in microseconds.
"""

from __future__ import annotations

import pytest

from pienv.context import Context
from pienv.errors import ConcurrentUpdate, UsageError
from pienv.model import Commit
from pienv.store import Store
from pienv.store.memory import Memory, MemoryStore

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def commit(cid: str, *parents: str, branch: str = "main") -> Commit:
    return Commit(id=cid, parents=parents, branch=branch, message=cid[:1], created="t")


@pytest.fixture
def store() -> Store:
    s = MemoryStore()
    s.init()
    return s


def history(store: Store) -> None:
    """main: A <- B <- C (C a merge of B and D); tag v1 at A."""
    with store.transaction("run") as txn:
        txn.add_commit(commit(A))
        txn.move_branch("main", None, A)
    with store.transaction("run") as txn:
        txn.add_commit(commit(B, A))
        txn.move_branch("main", A, B)
    with store.transaction("run") as txn:
        txn.add_commit(commit(D, A, branch="side"))
        txn.add_commit(commit(C, B, D))
        txn.move_branch("main", B, C)
        txn.set_tag("v1", A)


def test_the_twin_keeps_its_files_in_memory(store: Store) -> None:
    assert isinstance(store.files, Memory)
    assert set(store.files.files) == {store.refs_path}
    assert not store.home.exists()


def test_cas_moves_and_refusals_write_nothing(store: Store) -> None:
    with store.transaction("first") as txn:
        txn.move_branch("main", None, A)
    before = store.files.read(store.refs_path)
    with pytest.raises(ConcurrentUpdate, match="moved from"), store.transaction("y") as txn:
        txn.move_branch("main", C, B)
    assert store.files.read(store.refs_path) == before
    with pytest.raises(UsageError, match="already exists"), store.transaction("z") as txn:
        txn.move_branch("main", None, B)
    assert [(e.old, e.new) for e in store.reflog("main")] == [(None, A)]


def test_rename_moves_head_and_reflog(store: Store) -> None:
    history(store)
    with store.transaction("rename") as txn:
        txn.rename_branch("main", "trunk")
    refs = store.load_refs()
    assert refs.head_branch == "trunk" and refs.branches == {"trunk": C}
    assert {e.ref for e in store.reflog()} == {"trunk", "tags/v1"}


def test_a_rename_killed_before_refs_json_is_completed_by_the_next_write(store: Store) -> None:
    history(store)
    refs_before = store.files.read(store.refs_path)
    with store.transaction("rename") as txn:
        txn.rename_branch("main", "trunk")
    store.files.write(store.refs_path, refs_before)  # the reflog renamed, refs.json not
    assert store.pending_rename() == ("main", "trunk")
    with store.transaction("next"):
        pass
    assert store.load_refs().branches == {"trunk": C}


def test_torn_lines_are_skipped_and_the_next_append_starts_a_fresh_line(store: Store) -> None:
    history(store)
    store.files.append(store.index_path, b'{"torn')
    assert store.fresh_commits().keys() == {A, B, C, D}
    store.add_commit(commit("e" * 64, C))
    assert "e" * 64 in store.fresh_commits()
    assert store.torn_lines() == [(store.index_path, 5)]


@pytest.mark.parametrize(
    ("rev", "want"),
    [
        ("HEAD", C),
        ("main", C),
        ("HEAD~1", B),
        ("main~2", A),
        ("HEAD^2", D),
        ("HEAD^2~1", A),
        ("v1", A),
        ("cccc", C),
        ("main@{1}", B),
        ("@{2}", A),
        ("v1@{0}", A),
    ],
)
def test_revisions_resolve_on_the_twin(store: Store, rev: str, want: str) -> None:
    history(store)
    assert Context(store=store).resolve(rev) == want


@pytest.mark.parametrize(
    ("rev", "message"),
    [
        ("HEAD~3", "goes back only 2 commits"),
        ("HEAD^3", "has no parent #3"),
        ("main@{9}", "has only 3 entries"),
        ("nope", "not a branch, tag or commit"),
        ("HEAD~x", "cannot parse"),
    ],
)
def test_bad_revisions_say_why(store: Store, rev: str, message: str) -> None:
    history(store)
    with pytest.raises(UsageError, match=message):
        Context(store=store).resolve(rev)
