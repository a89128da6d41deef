"""The ref store: atomic writes, compare-and-swap, reflog, locks, version refusal (no engine)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pienv import locks
from pienv.errors import BranchBusy, ConcurrentUpdate, StoreError, UsageError
from pienv.model import Commit
from pienv.store import Store

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.init()
    return s


def test_init_writes_versioned_refs(store: Store) -> None:
    data = json.loads(store.refs_path.read_text())
    assert data["schema"] == 1
    assert data["head"] == {"branch": "main"}
    assert len(data["store_id"]) == 12


def test_cas_move_and_reflog(store: Store) -> None:
    with store.transaction("first") as txn:
        txn.move_branch("main", None, A)
    with store.transaction("second") as txn:
        txn.move_branch("main", A, B)
    assert store.load_refs().branches == {"main": B}
    log = store.reflog("main")
    assert [(e.old, e.new, e.what) for e in log] == [(None, A, "first"), (A, B, "second")]


def test_cas_refuses_stale_expectation_and_writes_nothing(store: Store) -> None:
    with store.transaction("x") as txn:
        txn.move_branch("main", None, A)
    before = store.refs_path.read_bytes()
    with (
        pytest.raises(ConcurrentUpdate, match="moved from cccccccccccc to aaaaaaaaaaaa meanwhile"),
        store.transaction("y") as txn,
    ):
        txn.move_branch("main", C, B)  # we believed it was at C
    assert store.refs_path.read_bytes() == before
    assert len(store.reflog("main")) == 1


def test_move_head_moves_the_branch_or_the_detached_head_by_cas(store: Store) -> None:
    with store.transaction("root") as txn:
        txn.move_head("main", None, A)
    with store.transaction("detach") as txn:
        txn.checkout(None, A)
    with store.transaction("run") as txn:
        txn.move_head(None, A, B)  # None: the detached HEAD
    refs = store.load_refs()
    assert refs.branches == {"main": A} and refs.head_detached == B
    assert [(e.ref, e.old, e.new) for e in store.reflog()][-1] == ("HEAD", A, B)
    for branch in ("main", None):
        with pytest.raises(ConcurrentUpdate), store.transaction("stale") as txn:
            txn.move_head(branch, C, B)
    assert store.load_refs().head_detached == B


def test_create_existing_branch_refused(store: Store) -> None:
    with store.transaction("x") as txn:
        txn.move_branch("main", None, A)
    with pytest.raises(UsageError, match="already exists"), store.transaction("y") as txn:
        txn.move_branch("main", None, B)


def _racer(home: str, n: int) -> None:
    s = Store(Path(home))
    done = 0
    while done < n:
        refs = s.load_refs()
        cur = refs.branches["main"]
        try:
            with s.transaction("race") as txn:
                txn.move_branch("main", cur, f"{int(cur, 16) + 1:064x}")
            done += 1
        except ConcurrentUpdate:
            continue


def test_concurrent_writers_never_lose_a_move(store: Store) -> None:
    with store.transaction("x") as txn:
        txn.move_branch("main", None, "0" * 64)
    procs = [multiprocessing.Process(target=_racer, args=(str(store.home), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert int(store.load_refs().branches["main"], 16) == 100
    assert len(store.reflog("main")) == 101


def test_newer_store_refused_untouched(store: Store) -> None:
    data = json.loads(store.refs_path.read_text())
    data["schema"] = 99
    store.refs_path.write_text(json.dumps(data))
    before = store.refs_path.read_bytes()
    with pytest.raises(StoreError, match="newer than this pienv"):
        store.load_refs()
    with pytest.raises(StoreError), store.transaction("x"):
        pass
    assert store.refs_path.read_bytes() == before


@pytest.mark.parametrize("content", ["{not json", "[]", '{"schema": 1}', ""])
def test_corrupt_store_refused(store: Store, content: str) -> None:
    store.refs_path.write_text(content)
    with pytest.raises(StoreError, match="corrupt"):
        store.load_refs()


def test_atomic_write_leaves_no_temp_and_old_content_on_failure(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.refs_path.read_bytes()

    def boom(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="disk full"), store.transaction("x") as txn:
        txn.move_branch("main", None, A)
    assert store.refs_path.read_bytes() == before
    assert [p.name for p in store.home.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_refs_with_commits_refuses_fresh_init(store: Store) -> None:
    store.add_commit(Commit(id=A, parents=(), branch="main", message="m", created="t"))
    store.refs_path.unlink()
    with pytest.raises(StoreError, match="fsck --repair"):
        store.init()


def test_index_skips_torn_last_line(store: Store) -> None:
    store.add_commit(Commit(id=A, parents=(), branch="main", message="m", created="t"))
    with open(store.index_path, "a") as fh:
        fh.write('{"id": "bbb')  # crash mid-append
    assert list(Store(store.home).commits()) == [A]


def test_branch_lock_is_exclusive_and_names_holder(store: Store) -> None:
    lock, stale = locks.acquire(store.locks_dir, "main", "/w")
    assert stale is None
    with pytest.raises(BranchBusy, match=rf"pid {os.getpid()} .*workspace /w"):
        locks.acquire(store.locks_dir, "main", "/other")
    other, _ = locks.acquire(store.locks_dir, "feature", "/w2")  # other branches are free
    other.release()
    lock.release()
    again, _ = locks.acquire(store.locks_dir, "main", "/w")
    again.release()


def test_lock_of_dead_holder_is_taken_over(store: Store) -> None:
    code = (
        "import sys, os; from pathlib import Path; from pienv import locks;"
        "locks.acquire(Path(sys.argv[1]), 'main', '/dead'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(store.locks_dir)], check=True)
    assert not locks.is_locked(store.locks_dir, "main")
    lock, stale = locks.acquire(store.locks_dir, "main", "/w")
    assert stale is not None and stale.workspace == "/dead" and not stale.alive()
    lock.release()


def test_wait_for_lock_times_out(store: Store) -> None:
    lock, _ = locks.acquire(store.locks_dir, "main", "/w")
    with pytest.raises(BranchBusy):
        locks.acquire(store.locks_dir, "main", "/w", wait=0.3)
    lock.release()


def test_rename_moves_head_bindings_and_reflog(store: Store) -> None:
    with store.transaction("x") as txn:
        txn.move_branch("main", None, A)
        txn.refs.worktrees["/w"] = "main"
    with store.transaction("rename") as txn:
        txn.rename_branch("main", "trunk")
    refs = store.load_refs()
    assert refs.branches == {"trunk": A} and refs.head_branch == "trunk"
    assert refs.worktrees == {"/w": "trunk"}
    assert store.reflog("main") == []
    assert [e.what for e in store.reflog("trunk")] == ["x", "branch: renamed main to trunk"]


def test_a_lock_path_that_is_odd_is_never_a_traceback_nor_taken_for_free(tmp_path: Path) -> None:
    """A directory in place of a lock file is probed like a file (flock works on it); a
    lock that cannot be opened at all (here a symlink loop) counts as held: prune then
    leaves the slots alone instead of failing, and no caller takes the lock for free."""
    from pienv import egressnet

    slots = tmp_path / "egress-slots"
    slots.mkdir()
    (slots / "0.lock").mkdir()
    assert not locks.held(slots / "0.lock") and not egressnet.claimed(slots)
    (slots / "1.lock").symlink_to("1.lock")
    assert locks.held(slots / "1.lock") and egressnet.claimed(slots)
    os.mkfifo(tmp_path / "fifo.lock")  # opened without blocking: nobody holds it
    assert not locks.held(tmp_path / "fifo.lock")


def test_a_slot_lock_held_by_another_process_is_seen_until_it_exits(tmp_path: Path) -> None:
    """egressnet.claimed (prune's check that no run is about to use a slot) and
    locks.is_locked share one flock probe: held while a process holds it, free after."""
    from pienv import egressnet

    slots = tmp_path / "egress-slots"
    assert not egressnet.claimed(slots)  # no directory yet
    slots.mkdir()
    (slots / "0.lock").touch()
    assert not egressnet.claimed(slots) and not locks.held(slots / "1.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(slots / "0.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert egressnet.claimed(slots) and locks.held(slots / "0.lock")
        assert egressnet.claimed(slots)  # a probe does not take or drop the holder's lock
    finally:
        holder.communicate("")
    assert not egressnet.claimed(slots)
