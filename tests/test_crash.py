"""Crash consistency of a run's finish: kill pienv at each step of the protocol
(PIENV_TEST_CRASH_AT, see store.crashpoint) and check that the next pienv command ends with
the change on its branch, nothing duplicated and fsck clean. Plus prune racing a finish."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time

import docker
import pytest
from conftest import Pienv

pytestmark = pytest.mark.engine

STEPS = ["committed", "indexed", "reflogged", "moved"]


def wait_for(pred, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def store_images(p: Pienv, *labels: str) -> list[dict]:  # type: ignore[type-arg]
    sid = p.refs()["store_id"]
    # One label filter to the engine (Podman 4.3 answers nothing for two), the rest here.
    rows = docker.from_env().api.images(filters={"label": f"dev.pienv.store={sid}"})
    want = dict(label.split("=", 1) for label in ("dev.pienv.role=commit", *labels))
    return [r for r in rows if all((r.get("Labels") or {}).get(k) == v for k, v in want.items())]


def run_containers(p: Pienv) -> list[dict]:  # type: ignore[type-arg]
    sid = p.refs()["store_id"]
    return docker.from_env().api.containers(
        all=True, filters={"label": [f"dev.pienv.store={sid}", "dev.pienv.role=run"]}
    )


def assert_consistent(p: Pienv, commits: int) -> None:
    """One image per commit, each indexed once, no reflog move recorded twice, fsck clean."""
    ids = [json.loads(line)["id"] for line in (p.home / "commits.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == commits
    assert sorted(i["Id"].split(":")[1] for i in store_images(p)) == sorted(ids)
    moves = [
        (e["ref"], e["old"], e["new"])
        for e in map(json.loads, (p.home / "reflog.jsonl").read_text().splitlines())
        if e["old"] != e["new"]
    ]
    assert len(moves) == len(set(moves)), moves
    r = p("fsck", check=False)
    assert r.code == 0 and "store ok" in r.out, r.out + r.err


def foreground(p: Pienv) -> None:
    """Commit before `pienv run` returns, so that a crash point kills pienv itself (the
    background commit's crashes: tests/test_background.py)."""
    (p.home / "config.toml").write_text('[run]\ncommit = "foreground"\n')


@pytest.mark.sampled
@pytest.mark.parametrize("mode", ["finalizer", "all"])
@pytest.mark.parametrize("step", STEPS)
def test_killed_at_each_step_of_finish_loses_nothing(pienv: Pienv, step: str, mode: str) -> None:
    pienv("run", "--", "true")  # the store and its root commit exist
    foreground(pienv)
    before = pienv.head()
    crash = step if mode == "finalizer" else f"{step}+all"
    r = pienv(
        "run",
        "--",
        "sh",
        "-c",
        "echo kept > /survivor",
        env={"PIENV_TEST_CRASH_AT": crash},
        check=False,
    )
    assert r.code == -signal.SIGKILL and (pienv.home / f"crashed-at-{step}").exists()
    if mode == "finalizer":
        # pienv's forked finalizer outlives it and completes the half-done finish.
        wait_for(lambda: not run_containers(pienv) and pienv.head() != before)
    else:
        # pienv and its finalizer died: the container is an orphan, and the next run on the
        # branch completes what the dead one left half done.
        assert [c["Id"] for c in run_containers(pienv)]
    out = pienv("run", "--", "cat", "/survivor")
    assert out.out == "kept\n"
    assert run_containers(pienv) == []
    head = pienv.head()
    assert head != before and [b for b in pienv.refs()["branches"] if b != "main"] == []
    log = json.loads(pienv("log", "--json").out)
    assert [c["id"] for c in log][:2] == [head, before]
    assert_consistent(pienv, commits=2)


def test_killed_while_finish_waits_for_the_store_lock(pienv: Pienv) -> None:
    """pienv indexed its commit, then died waiting for the store lock; the
    finalizer must move the branch, not trust "already in the index"."""
    pienv("run", "--", "true")
    foreground(pienv)
    before = pienv.head()
    proc = pienv.popen("run", "--", "sh", "-c", "touch /made; echo up")
    fd = os.open(pienv.home / "refs.lock", os.O_RDWR)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        fcntl.flock(fd, fcntl.LOCK_EX)
        wait_for(lambda: len(store_images(pienv)) == 2)  # committed; now it waits for us
        time.sleep(1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        time.sleep(2)  # what the finalizer does without the store lock, it has done now
    finally:
        os.close(fd)
    wait_for(lambda: not run_containers(pienv))
    assert pienv.head() != before
    assert pienv("run", "--", "ls", "/made").out == "/made\n"
    assert_consistent(pienv, commits=2)


def test_prune_during_a_finish_keeps_the_new_commit(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prune runs between the commit and its branch move."""
    from pienv.context import Context
    from pienv.ops import run as runmod
    from pienv.store import Store

    pienv("run", "--", "true")
    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)
    real = Store.transaction
    pruned = []

    def prune_first(self: Store, what: str):  # type: ignore[no-untyped-def]
        if what.startswith("run:") and not pruned:
            pruned.append(pienv("prune", "--older-than", "0s", "--json").out)
        return real(self, what)

    monkeypatch.setattr(Store, "transaction", prune_first)
    result = runmod.run(
        Context(store=Store(pienv.home)),
        runmod.RunRequest(command=("touch", "/precious")),
        pienv.repo,
        pienv.env,
        lambda b: None,
        lambda b: None,
    )
    monkeypatch.undo()
    assert pruned and result.commit is not None
    assert json.loads(pruned[0])["removed"] == []
    assert pienv.head() == result.commit.id
    assert pienv("run", "--", "ls", "/precious").out == "/precious\n"
    assert_consistent(pienv, commits=2)


@pytest.mark.sampled
@pytest.mark.parametrize("commit", ["foreground", "background"])
def test_noop_run_killed_before_its_empty_image_is_dropped_adds_no_commit(
    pienv: Pienv, commit: str
) -> None:
    """A no-op run's commit image (labelled with its container) is removed once it shows no
    new layer; killed before that, recovery took the labelled image for the run's commit and
    put an empty commit on the branch (rule 3: a no-op run adds no image). In the background
    the crash point kills the finalizer that commits: pienv itself has returned."""
    pienv("run", "--", "true")
    before = pienv.head()
    (pienv.home / "config.toml").write_text(f'[run]\ncommit = "{commit}"\n')
    r = pienv("run", "--", "true", env={"PIENV_TEST_CRASH_AT": "imaged+all"}, check=False)
    assert (pienv.home / "crashed-at-imaged").exists()
    assert r.code == (-signal.SIGKILL if commit == "foreground" else 0)
    assert run_containers(pienv)  # the orphan
    pienv("run", "--", "true")  # recovers the orphan first
    assert run_containers(pienv) == []
    assert pienv.head() == before
    assert_consistent(pienv, commits=1)
