"""Store writes under crashes, short writes and concurrent writers (no engine)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pienv.errors import StoreError
from pienv.model import Commit
from pienv.store import Store

A, B, C = "a" * 64, "b" * 64, "c" * 64


def commit(cid: str, parents: tuple[str, ...] = ()) -> Commit:
    return Commit(id=cid, parents=parents, branch="main", message="m", created="t")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.init()
    return s


def test_append_after_a_torn_index_line_keeps_the_new_line(store: Store) -> None:
    store.add_commit(commit(A))
    with open(store.index_path, "a") as fh:
        fh.write('{"id": "bbb')  # a crash mid-append left half a line
    store.add_commit(commit(C, (A,)))
    assert sorted(Store(store.home).commits()) == [A, C]
    assert store.torn_lines() == [(store.index_path, 2)]


def test_append_after_a_torn_reflog_line_keeps_the_move(store: Store) -> None:
    with store.transaction("first") as txn:
        txn.move_branch("main", None, A)
    with open(store.reflog_path, "a") as fh:
        fh.write('{"ref": "main", "old": "aaa')
    with store.transaction("second") as txn:
        txn.move_branch("main", A, B)
    assert [(e.old, e.new) for e in store.reflog("main")] == [(None, A), (A, B)]
    assert store.torn_lines() == [(store.reflog_path, 2)]


def test_short_writes_are_continued(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write

    def short(fd: int, data: bytes) -> int:
        return real(fd, bytes(data[:7]))  # the kernel may write less than asked

    monkeypatch.setattr(os, "write", short)
    store.add_commit(commit(A))
    with store.transaction("x") as txn:
        txn.move_branch("main", None, A)
    monkeypatch.undo()
    assert list(Store(store.home).commits()) == [A]
    assert [e.new for e in store.reflog()] == [A]
    assert store.torn_lines() == []


def test_a_failed_append_leaves_no_partial_line(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_commit(commit(A))
    before = store.index_path.read_bytes()
    real = os.write
    calls = []

    def full(fd: int, data: bytes) -> int:
        calls.append(1)
        if len(calls) == 1:
            return real(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StoreError, match="disk full"):
        store.add_commit(commit(B, (A,)))
    monkeypatch.undo()
    assert store.index_path.read_bytes() == before  # whole lines or nothing
    store.add_commit(commit(C, (A,)))
    assert sorted(Store(store.home).commits()) == [A, C]


ADD_LATE = (
    "import sys; from pathlib import Path; from pienv.store import Store; "
    "from pienv.model import Commit; "
    "Store(Path(sys.argv[1])).add_commit(Commit(id='c' * 64, parents=('a' * 64,), "
    "branch='main', message='m', created='t'))"
)


def test_index_rewrite_never_drops_a_commit_added_meanwhile(store: Store) -> None:
    """prune/fsck rewrite the index from what they read; a finishing run adds a commit."""
    store.add_commit(commit(A))
    store.add_commit(commit(B, (A,)))
    with store.locked():
        snapshot = [c for c in Store(store.home).commits().values() if c.id != B]
        proc = subprocess.Popen([sys.executable, "-c", ADD_LATE, str(store.home)])
        time.sleep(1.5)  # the run's append happens while prune works
        store.rewrite_index(snapshot)
    assert proc.wait(30) == 0
    assert sorted(Store(store.home).commits()) == [A, C]


def test_store_lock_is_reentrant_in_one_process(store: Store) -> None:
    with store.locked(), store.locked(), store.transaction("x") as txn:
        txn.move_branch("main", None, A)
    assert store.load_refs().branches == {"main": A}


def test_rename_killed_before_refs_is_completed_by_the_next_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`branch -m` rewrites the reflog, then refs.json. Killed between the two, the reflog
    named the branch `trunk` while refs.json still said `main`: `fsck` said "store ok", the
    branch's history (`main@{1}`, undo of a reset) was gone, and a later `fsck --repair` would
    restore it under the other name. The next write completes the rename instead."""
    import pienv.store.files as storemod

    with store.transaction("x") as txn:
        txn.move_branch("main", None, A)
        txn.refs.worktrees["/w"] = "main"
    real = storemod.write_atomic

    def killed(path: Path, data: bytes) -> None:
        if path == store.refs_path:
            raise SystemExit(137)  # what a SIGKILL leaves: the reflog written, refs.json not
        real(path, data)

    monkeypatch.setattr(storemod, "write_atomic", killed)
    with pytest.raises(SystemExit), store.transaction("rename") as txn:
        txn.rename_branch("main", "trunk")
    monkeypatch.setattr(storemod, "write_atomic", real)
    fresh = Store(store.home)
    assert fresh.pending_rename() is not None  # fsck reports it
    with fresh.transaction("next") as txn:
        txn.set_tag("t", A)
    refs = fresh.load_refs()
    assert refs.branches == {"trunk": A} and refs.head_branch == "trunk"
    assert refs.worktrees == {"/w": "trunk"}
    assert [e.what for e in fresh.reflog("trunk")] == ["x", "branch: renamed main to trunk"]
    assert fresh.pending_rename() is None
