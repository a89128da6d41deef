"""Data you can trust next to Docker: fsck never races a run, what Docker deletes or untags is
seen at once and put back where the image still exists (shared engine, this store's images
only; the prune tests that need a private engine are in test_trust_prune.py)."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from conftest import Pienv


def _plant_gone_reflog_entry(p: Pienv) -> None:
    """A problem fsck --repair sees every time (a reflog entry whose image was pruned), so
    every loop below repairs, as the user's did."""
    entry = {
        "ref": "gone",
        "old": None,
        "new": "f" * 64,
        "time": "2020-01-01T00:00:00Z",
        "who": "t",
        "what": "test",
    }
    with open(p.home / "reflog.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def test_fsck_repair_next_to_runs_never_rolls_a_branch_back(pienv: Pienv) -> None:
    """fsck listed the engine's images before taking the store lock: a run that committed in
    between looked gone, and the repair dropped it from the index and moved its branch back
    (`/m54` and `/m55` lost). Six runs against fsck --repair and plain fsck in a loop."""
    _fsck_against_runs(pienv, runs=6)


@pytest.mark.stress
def test_fsck_repair_next_to_runs_for_minutes(pienv: Pienv) -> None:
    """The race above for minutes (the issue's bar): 150 runs (6 min 17 s on a loaded
    2-core machine) against fsck --repair and fsck in a loop, nothing lost, nothing false."""
    _fsck_against_runs(pienv, runs=150)


def _fsck_against_runs(pienv: Pienv, runs: int) -> None:
    pienv("run", "--", "true")
    _plant_gone_reflog_entry(pienv)
    done = threading.Event()
    outputs: list[str] = []

    def fsck_loop() -> None:
        while not done.is_set():
            for args in (("fsck", "--repair"), ("fsck",)):
                r = pienv(*args, check=False)
                outputs.append(r.out + r.err)

    t = threading.Thread(target=fsck_loop)
    t.start()
    try:
        for n in range(runs):
            pienv("run", "--wait", "30", "--", "sh", "-c", f"echo {n} > /m{n}")
    finally:
        done.set()
        t.join()
    listing = pienv("run", "--", "sh", "-c", "ls /").out.split()
    assert {f"m{n}" for n in range(runs)} <= set(listing)
    joined = "\n".join(outputs)
    assert "image gone" not in joined and "its last commit still there" not in joined
    assert "has no image" not in joined and "missing from the commit index" not in joined
    assert not [b for b in pienv.refs()["branches"] if b.startswith("recovered/")]


def _tag(p: Pienv, cid: str) -> str:
    return f"pienv/{p.refs()['store_id']}:{cid[:12]}"


def test_a_commit_whose_tag_was_removed_is_retagged_never_dropped(pienv: Pienv) -> None:
    """`docker rmi pienv/S:MIDDLE` removes only the tag (a child still needs the image);
    fsck said nothing, and fsck --repair dropped the existing commit from the index."""
    pienv("run", "--", "touch", "/a")
    middle = pienv.head()
    pienv("run", "--", "touch", "/b")
    subprocess.run(["docker", "rmi", _tag(pienv, middle)], check=True, capture_output=True)
    r = pienv("fsck", check=False)
    if _podman():
        # Podman keeps no parent images: the commit itself is gone, and fsck says so.
        assert r.code == 1 and f"indexed commit {middle[:12]} has no image" in r.out
        return
    assert r.code == 1 and f"{middle[:12]} lost its tag" in r.out + r.err
    pienv("fsck", "--repair")
    assert middle[:12] in pienv("log").out
    tags = subprocess.run(
        ["docker", "image", "inspect", middle], capture_output=True, text=True, check=True
    ).stdout
    assert _tag(pienv, middle) in tags
    assert pienv("fsck").code == 0


def test_a_tag_moved_by_hand_is_seen_and_put_back(pienv: Pienv, base_image: str) -> None:
    """`docker tag OTHER pienv/S:HEAD` left the head untagged (plain `docker image prune`
    then deletes it) while fsck said "store ok"."""
    pienv("run", "--", "touch", "/a")
    head = pienv.head()
    subprocess.run(["docker", "tag", base_image, _tag(pienv, head)], check=True)
    r = pienv("fsck", check=False)
    assert r.code == 1 and f"{head[:12]} lost its tag" in r.out + r.err
    status = pienv("status", check=False)
    assert "1 commit(s) of branch main lost their tag" in status.err
    pienv("fsck", "--repair")
    tags = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.RepoTags}}", head],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert _tag(pienv, head) in tags
    assert pienv("fsck").code == 0


def test_fsck_reads_the_engine_under_the_store_lock(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cause of the rollbacks above, checked without a race: every engine read of fsck and
    fsck --repair happens while the store lock is held (a run's ref move waits for it)."""
    import fcntl
    import os

    from pienv.context import Context
    from pienv.engine import Engine
    from pienv.ops import fsck
    from pienv.store import Store

    pienv("run", "--", "touch", "/a")
    _plant_gone_reflog_entry(pienv)
    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)
    unlocked: list[str] = []

    def spy(name: str):  # type: ignore[no-untyped-def]
        real = getattr(Engine, name)

        def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            fd = os.open(pienv.home / "refs.lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                unlocked.append(name)  # nobody held it
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
            return real(self, *args, **kwargs)

        return call

    for name in ("images", "containers", "inspect_image"):
        monkeypatch.setattr(Engine, name, spy(name))
    for repair in (False, True):
        fsck.fsck(Context(store=Store(pienv.home)), repair=repair)
    assert unlocked == []


def test_a_deleted_head_is_said_at_once_and_never_moved_onto(pienv: Pienv) -> None:
    """`docker rmi` of the head (as `docker image prune -a` does to every commit): `log` and
    `status` stayed silent, and `reset`/`checkout` onto the missing image were accepted."""
    pienv("run", "--", "touch", "/a")
    pienv("run", "--", "touch", "/b")
    head = pienv.head()
    subprocess.run(["docker", "rmi", "-f", _tag(pienv, head)], check=True, capture_output=True)
    gone = "1 of the 3 commits of"
    assert gone in pienv("log").err
    assert gone in pienv("status").err
    pienv("reset", "HEAD~1")
    for args in (("reset", head), ("checkout", head), ("branch", "x", head), ("tag", "t", head)):
        r = pienv(*args, check=False)
        assert r.code == 1 and "image is gone from the engine" in r.err, args
    assert pienv("log").err == ""


def test_prune_expires_the_reflog_of_what_it_removed(pienv: Pienv) -> None:
    """`reset HEAD~1; prune --keep 2; reset main@{1}` moved the branch onto a pruned image
    with exit 0, and fsck counted what prune removed as a problem from then on."""
    for n in range(3):
        pienv("run", "--", "touch", f"/f{n}")
    removed = pienv.head()
    pienv("reset", "HEAD~1")
    assert removed[:12] in pienv("prune", "--keep", "2").out
    pienv("reset", "main@{1}")  # the entry of the removed commit expired with it
    image = subprocess.run(["docker", "image", "inspect", pienv.head()], capture_output=True)
    assert image.returncode == 0
    assert all(e["new"] != removed for e in _reflog(pienv))
    assert pienv("fsck").code == 0
    assert "no commit yet" not in pienv("status").out


def _reflog(p: Pienv) -> list[dict[str, str]]:
    return [json.loads(line) for line in (p.home / "reflog.jsonl").read_text().splitlines()]


def test_the_store_rebuilds_from_the_reflog_and_labels_when_refs_and_index_are_gone(
    pienv: Pienv,
) -> None:
    """With refs.json and commits.jsonl both gone, fsck --repair said it could not tell which
    store it was, though the reflog and every image's labels were intact."""
    pienv("run", "--", "touch", "/a")
    pienv("branch", "side")
    pienv("tag", "first")
    pienv("run", "--", "touch", "/b")
    before = pienv.refs()
    log = _no_ages(pienv("log", "--all").out)
    (pienv.home / "refs.json").unlink()
    (pienv.home / "commits.jsonl").unlink()
    assert pienv("log", check=False).code == 1
    pienv("fsck", "--repair")
    after = pienv.refs()
    for key in ("store_id", "branches", "tags", "head"):
        assert after[key] == before[key], key
    assert _no_ages(pienv("log", "--all").out) == log
    assert pienv("fsck").code == 0


@pytest.mark.sampled
@pytest.mark.parametrize("bad", [{"branches": []}, {"branches": {"main": 12345}}])
def test_a_refs_json_of_the_wrong_types_is_repaired(pienv: Pienv, bad: dict[str, object]) -> None:
    pienv("run", "--", "touch", "/a")
    before = pienv.refs()
    data = dict(before)
    data.update(bad)
    (pienv.home / "refs.json").write_text(json.dumps(data))
    r = pienv("status", check=False)
    assert r.code == 1 and "refs.json is corrupt" in r.err
    pienv("fsck", "--repair")
    assert pienv.refs()["branches"] == before["branches"]


def _no_ages(log: str) -> list[str]:
    return [line.rsplit("  (", 1)[0] for line in log.splitlines()]


def _podman() -> bool:
    from pienv.engine import Engine

    return Engine().dialect.name == "Podman"


def test_a_run_with_stdin_closed_leaves_no_lock_record(pienv: Pienv) -> None:
    """`pienv run <&-`: the lock file opened as fd 0, which the finalizer's /dev/null over
    its stdio replaced, so the lock's release cleared nothing and the next run said it
    "took over the lock from dead pid"."""
    cmd = " ".join([*pienv.command, "run", "--", "touch", "/s"])
    subprocess.run(
        ["sh", "-c", f"exec {cmd} <&-"], cwd=pienv.repo, env=pienv.env, check=True, timeout=120
    )
    r = pienv("run", "--", "true")
    assert "took over" not in r.err
    assert not any(p.read_text().strip() for p in (pienv.home / "locks").glob("*.lock"))


def test_a_killed_flatten_leaves_a_container_orphans_lists_and_clean_removes(
    pienv: Pienv,
) -> None:
    """A kill -9 of pienv during a flatten left its Created copy container, which nothing
    reported: `orphans` lists it with its kind, `clean-orphans` removes it."""
    pienv("run", "--", "touch", "/a")
    r = pienv("flatten", env={"PIENV_TEST_CRASH_AT": "flattening"}, check=False)
    assert r.code == -9, r.err
    rows = json.loads(pienv("orphans", "--json").out)
    assert [(o["kind"], o["state"], o["holder_alive"]) for o in rows] == [
        ("flatten", "created", False)
    ]
    assert "flatten" in pienv("orphans").out
    assert "left by a killed flatten" in pienv("clean-orphans", "--yes").out
    assert json.loads(pienv("orphans", "--json").out) == []
    store = pienv.refs()["store_id"]
    labels = ["--filter", f"label=dev.pienv.store={store}", "--filter", "label=dev.pienv.role"]
    ps = subprocess.run(
        ["docker", "ps", "-a", "--format", '{{.Label "dev.pienv.role"}}', *labels],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "flatten" not in ps
    pienv("flatten")  # and the flatten itself works again


def test_show_diff_and_branch_say_when_their_commits_are_gone(pienv: Pienv) -> None:
    """`docker rmi` of a head: `log` and `status` said so, `show`, `diff` and `branch` did
    not."""
    pienv("run", "--", "touch", "/a")
    pienv("run", "--", "touch", "/b")
    head = pienv.head()
    subprocess.run(["docker", "rmi", "-f", _tag(pienv, head)], check=True, capture_output=True)
    for args in (("show", "HEAD~1"), ("diff", "HEAD~1", "HEAD"), ("branch",)):
        r = pienv(*args, check=False)
        assert r.code != 3, (args, r.log)
        if args[0] == "show":
            assert "gone" not in r.err, args  # what it shows is there
        else:
            assert "1 of the" in r.err and "gone from the engine" in r.err, (args, r.err)
    assert "gone from the engine" in pienv("show", "HEAD", check=False).err


@pytest.mark.sampled
@pytest.mark.parametrize(
    ("kind", "command"),
    [("diff", ("diff", "--packages", "HEAD~1")), ("export", ("export", "--dockerfile"))],
)
def test_a_killed_read_leaves_a_labelled_helper_orphans_lists_and_clean_removes(
    pienv: Pienv, kind: str, command: tuple[str, ...]
) -> None:
    """The never-started containers `diff --packages` and `export` read files from were
    unlabelled: a kill -9 of pienv mid-read left a Created container nothing named. Now each
    carries its store and kind, and `orphans` lists it once its pienv is dead."""
    pienv("run", "--", "touch", "/a")
    r = pienv(*command, env={"PIENV_TEST_CRASH_AT": f"created-{kind}"}, check=False)
    assert r.code == -9, (r.out, r.err)
    rows = json.loads(pienv("orphans", "--json").out)
    # (diff reads its two commits at once: one helper each)
    assert {(o["kind"], o["state"], o["holder_alive"]) for o in rows} == {(kind, "created", False)}
    assert f"left by a killed {kind}" in pienv("clean-orphans", "--yes").out
    assert json.loads(pienv("orphans", "--json").out) == []
    assert pienv(*command).code == 0  # and the command itself works again


@pytest.mark.parametrize("step", ["installing", "installed"])
def test_a_killed_install_loses_nothing_and_the_next_run_installs(pienv: Pienv, step: str) -> None:
    """A kill -9 of pienv during an agent's install (its container made; its image committed
    but not yet a commit): the branch is where it was, fsck finds no problem, `orphans` names
    the install's container, and the next run installs again and runs the agent."""
    from test_agent import INSTALL_OK, config, remove_volumes

    config(pienv, f'[agent]\ncommand = ["myagent"]\ninstall = "{INSTALL_OK}"\n')
    try:
        pienv("run", "--", "true")  # the root commit
        root = pienv.head()
        r = pienv("run", env={"PIENV_TEST_CRASH_AT": step}, check=False)
        assert r.code == -9, (r.out, r.err)
        assert pienv.head() == root
        fsck = pienv("fsck", check=False)
        assert fsck.code == 0, (fsck.out, fsck.err)
        rows = json.loads(pienv("orphans", "--json").out)
        assert [(o["kind"], o["holder_alive"]) for o in rows] == [("install", False)]
        r = pienv("run")
        assert "hello from myagent" in r.out and "installing myagent" in r.err
        assert pienv("log").out.count("install myagent") == 1
        assert "left by a killed install" in pienv("clean-orphans", "--yes").out
        assert json.loads(pienv("orphans", "--json").out) == []
        fsck = pienv("fsck", check=False)
        assert fsck.code == 0, (fsck.out, fsck.err)
        store = pienv.refs()["store_id"]
        stray = subprocess.run(
            ["docker", "images", "-q", "--filter", f"label=dev.pienv.store={store}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(stray) == len(json.loads(pienv("log", "--json").out))  # no unused image
    finally:
        remove_volumes(pienv)


def test_doctor_names_a_ref_without_its_keeper_and_fsck_repair_makes_it(pienv: Pienv) -> None:
    """`docker system prune` removes stopped containers, keepers included, and nothing said
    so: `doctor` now names the refs left unkept in one line with the fix."""
    pienv("run", "--", "true")
    pienv("tag", "v1")
    checks = {c["name"]: c for c in json.loads(pienv("doctor", "--json").out)}
    assert checks["keepers"]["level"] == "ok", checks["keepers"]
    store = pienv.refs()["store_id"]
    keepers = [
        "--filter",
        f"label=dev.pienv.store={store}",
        "--filter",
        "label=dev.pienv.role=keeper",
    ]
    ids = subprocess.run(
        ["docker", "ps", "-aq", *keepers], capture_output=True, text=True, check=True
    ).stdout.split()
    assert ids
    subprocess.run(["docker", "rm", *ids], capture_output=True, check=True)
    checks = {c["name"]: c for c in json.loads(pienv("doctor", "--json").out)}
    k = checks["keepers"]
    assert k["level"] == "warn" and "main" in k["detail"] and "v1" in k["detail"], k
    assert k["fix"] == "`pienv fsck --repair` makes them again"
    assert pienv("fsck", "--repair").code == 0
    checks = {c["name"]: c for c in json.loads(pienv("doctor", "--json").out)}
    assert checks["keepers"]["level"] == "ok", checks["keepers"]
