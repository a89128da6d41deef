"""fsck --repair from the reflog, torn lines in the store's files, strays that prune removes."""

from __future__ import annotations

import json

import docker
import pytest
from conftest import Pienv

pytestmark = pytest.mark.engine


def test_fsck_repair_restores_refs_from_the_reflog(pienv: Pienv) -> None:
    """tags, a renamed branch, a reset branch and a worktree binding survive the
    loss of refs.json."""
    pienv("run", "--", "touch", "/a")
    pienv("tag", "v1")
    pienv("run", "--", "touch", "/b")
    pienv("branch", "-m", "main", "trunk")
    pienv("reset", "HEAD~1")  # trunk back to /a: its newest labelled commit is /b
    pienv("branch", "side")  # a branch without commits of its own
    wt = pienv.repo.parent / "wt"
    pienv("worktree", "add", str(wt), "feature")
    pienv("run", "--", "touch", "/c", cwd=wt)
    pienv("checkout", "side")
    before = pienv.refs()
    (pienv.home / "refs.json").unlink()
    out = pienv("fsck", "--repair").out
    assert "wrote" in out and "saved the old files" in out
    after = pienv.refs()
    for key in ("store_id", "head", "branches", "tags", "worktrees", "base"):
        assert after[key] == before[key], key
    assert "store ok" in pienv("fsck").out
    assert pienv("run", "--", "ls", "/c", cwd=wt).code == 0


def test_fsck_repair_never_drops_a_branch_without_allow_loss(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    refs = pienv.refs()
    refs["branches"]["ghost"] = "f" * 64  # its image never existed
    (pienv.home / "refs.json").write_text(json.dumps(refs))
    out = pienv("fsck", "--repair").out
    assert "could not restore: branch ghost" in out and "--allow-loss" in out
    assert "ghost" in pienv.refs()["branches"]
    assert any(p.name.startswith("refs.json.before-fsck-") for p in pienv.home.iterdir())
    pienv("fsck", "--repair", "--allow-loss")
    assert "ghost" not in pienv.refs()["branches"]
    assert "store ok" in pienv("fsck").out


@pytest.mark.sampled
@pytest.mark.parametrize("name", ["commits.jsonl", "reflog.jsonl"])
def test_torn_last_line_loses_nothing_after_it(pienv: Pienv, name: str) -> None:
    """a half-written last line must not swallow the next append."""
    pienv("run", "--", "touch", "/a")
    with open(pienv.home / name, "a") as fh:
        fh.write('{"id": "0123')  # a crash (or a full disk) mid-append
    pienv("run", "--", "touch", "/b")
    head = pienv.head()
    log = json.loads(pienv("log", "--json").out)
    assert log[0]["id"] == head and len(log) == 3
    status = json.loads(pienv("status", "--json").out)
    assert status["head"]["id"] == head
    reflog = [json.loads(x) for x in (pienv.home / "reflog.jsonl").read_text().splitlines()[-1:]]
    assert reflog[0]["new"] == head
    r = pienv("fsck", check=False)
    assert r.code == 1 and f"{name} line" in r.out and "torn" in r.out
    pienv("fsck", "--repair")
    assert "store ok" in pienv("fsck").out
    pienv("prune", "--older-than", "0s")
    pienv("reset", "HEAD~1")  # the head's ancestors survived prune
    assert pienv("run", "--", "ls", "/a").code == 0


def test_prune_removes_a_stray_commit_image(pienv: Pienv) -> None:
    """an image the engine committed after pienv lost the connection (labelled,
    never indexed, its container gone) is removed by prune; fsck reports it until then."""
    from pienv.engine import Engine
    from pienv.model import Commit

    pienv("run", "--", "touch", "/a")
    head = pienv.head()
    sid = pienv.refs()["store_id"]
    engine = Engine()
    cid = engine.create_stopped(head)
    draft = Commit.draft("main", "lost answer", "run", parents=(head,), container=cid)
    stray = engine.commit(cid, engine.inspect_image(head), draft.labels(sid))
    engine.remove_container(cid, force=True)
    assert "missing from the commit index" in pienv("fsck", check=False).out
    r = json.loads(pienv("prune", "--json").out)
    assert r["removed"] == [stray]
    assert docker.from_env().api.images(filters={"label": f"dev.pienv.container={cid}"}) == []
    assert "store ok" in pienv("fsck").out


def test_fsck_repair_keeps_a_move_made_between_its_check_and_its_write(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsck --repair wrote back the refs it read before checking the engine: a run that
    finished meanwhile had its branch moved back (its change off the branch)."""
    from pienv.context import Context
    from pienv.ops import maint
    from pienv.store import Store

    pienv("run", "--", "touch", "/a")
    first = pienv.head()
    pienv("run", "--", "touch", "/b")
    second = pienv.head()
    with Store(pienv.home).transaction("back") as txn:  # main at /a, the run below moves it
        txn.move_branch("main", second, first)
    (pienv.home / "commits.jsonl").open("a").write('{"torn')  # something to repair
    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)
    store = Store(pienv.home)
    real = store.locked

    def run_finishes_first():  # type: ignore[no-untyped-def]
        with store.transaction("run: finished meanwhile") as txn:
            txn.move_branch("main", first, second)
        return real()

    monkeypatch.setattr(store, "locked", run_finishes_first)
    maint.fsck(Context(store=store), repair=True)
    assert pienv.head() == second
