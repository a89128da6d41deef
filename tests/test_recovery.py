"""Never lose state, never dead-end: signals, orphans, recover, locks, flatten at depth,
prune, reset --system/--all, fsck --repair, doctor, failed commits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import docker
import pytest
from conftest import Pienv, content_layers, on_podman

pytestmark = pytest.mark.engine


def wait_for(pred, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def run_containers(p: Pienv) -> list[dict]:  # type: ignore[type-arg]
    sid = p.refs()["store_id"]
    return docker.from_env().api.containers(
        all=True, filters={"label": [f"dev.pienv.store={sid}", "dev.pienv.role=run"]}
    )


def orphan_a_run(p: Pienv, script: str) -> str:
    """Start a run, then SIGKILL pienv *and* its forked finalizer, so nothing is left to commit
    the container; wait for the container to finish and return its id."""
    # The run waits for the test's go-ahead in the workspace: a fixed sleep let a loaded
    # machine's run finish (and be committed) before the test had found its container.
    go = p.repo / ".pienv-test-go"
    wait = f"while [ ! -e /workspace/{go.name} ]; do sleep 0.1; done"
    proc = p.popen("run", "--", "sh", "-c", f"{script}; echo up; {wait}")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    cid = str(run_containers(p)[0]["Id"])
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    for pid in [*map(int, children.stdout.split()), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    go.touch()
    docker.from_env().api.wait(cid)
    go.unlink()
    return cid


@pytest.mark.sampled
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL])
def test_pienv_dying_mid_run_loses_nothing(pienv: Pienv, sig: int) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    proc = pienv.popen("run", "--", "sh", "-c", "echo x > /made-before-death; echo up; sleep 3")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    os.kill(proc.pid, sig)
    proc.wait(30)
    wait_for(lambda: pienv.head() != before and not run_containers(pienv))
    assert pienv("run", "--", "cat", "/made-before-death").out == "x\n"
    status = json.loads(pienv("status", "--json").out)
    assert status["locks"] == [] and status["orphans"] == 0
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig


def test_orphan_recovered_onto_new_branch_when_branch_moved(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/base")
    cid = orphan_a_run(pienv, "touch /orphaned-work")
    rows = json.loads(pienv("orphans", "--json").out)
    assert [r["container"] for r in rows] == [cid]
    assert rows[0]["holder_alive"] is False and rows[0]["state"] == "exited"
    # meanwhile the branch moves on
    pienv("run", "-b", "other", "--", "true")
    pienv("checkout", "main")
    pienv("reset", "HEAD~1")  # main no longer at the orphan's parent
    out = pienv("recover", cid[:12]).out
    assert "on new branch 'recovered/" in out and "had moved past its parent" in out
    name = next(b for b in pienv.refs()["branches"] if b.startswith("recovered/"))
    assert pienv("run", "-b", name, "--", "ls", "/orphaned-work").code == 0
    assert json.loads(pienv("orphans", "--json").out) == []


def test_next_run_commits_a_finished_orphan(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    cid = orphan_a_run(pienv, "touch /late")
    r = pienv("run", "--", "ls", "/late")
    assert f"orphan {cid[:12]} committed as" in r.err and r.out == "/late\n"


def test_clean_orphans_and_unlock(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    orphan_a_run(pienv, "touch /x")
    assert "would remove" in pienv("clean-orphans", "--dry-run").out
    pienv("clean-orphans", "--yes")
    assert run_containers(pienv) == []
    # unlock: refuses a live holder, clears a dead one
    holder = pienv.popen("run", "--", "sh", "-c", "echo up; sleep 3")
    assert holder.stdout is not None and holder.stdout.readline() == "up\n"
    r = pienv("unlock", "main", check=False)
    assert r.code == 1 and f"live pid {holder.pid}" in r.err
    holder.wait(30)
    assert pienv("unlock", "main").out.strip() == "unlocked main (it was not held)"


def test_failed_commit_keeps_container_and_branch(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pienv.context import Context
    from pienv.engine import Engine
    from pienv.errors import EngineError
    from pienv.ops import run as runmod
    from pienv.store import Store

    pienv("run", "--", "true")
    head = pienv.head()
    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)

    def full_disk(self: Engine, cid: str, like: object, labels: object) -> str:
        raise EngineError("Docker ran out of disk space: no space left on device")

    monkeypatch.setattr(Engine, "commit", full_disk)
    with pytest.raises(EngineError, match=r"container .* is kept and the branch did not move"):
        runmod.run(
            Context(store=Store(pienv.home)),
            runmod.RunRequest(command=("touch", "/precious")),
            pienv.repo,
            pienv.env,
            lambda b: None,
            lambda b: None,
        )
    monkeypatch.undo()
    assert pienv.head() == head
    cid = run_containers(pienv)[0]["Id"]
    assert "committed as" in pienv("recover", cid[:12]).out
    assert pienv("run", "--", "ls", "/precious").code == 0


def test_orphan_already_committed_is_removed_not_committed_again(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pienv died after its commit but before removing the container."""
    from pienv.context import Context
    from pienv.engine import Engine
    from pienv.ops import run as runmod
    from pienv.store import Store

    pienv("run", "--", "true")
    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)

    def dies(self: Engine, cid: str, force: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "remove_container", dies)
    with pytest.raises(KeyboardInterrupt):
        runmod.run(
            Context(store=Store(pienv.home)),
            runmod.RunRequest(command=("touch", "/once")),
            pienv.repo,
            pienv.env,
            lambda b: None,
            lambda b: None,
        )
    monkeypatch.undo()
    head = pienv.head()
    # This store's images only: other tests on the same engine make and remove theirs meanwhile.
    mine = {"label": f"dev.pienv.store={pienv.refs()['store_id']}"}
    images = len(docker.from_env().api.images(filters=mine))
    [orphan] = run_containers(pienv)
    out = pienv("recover", orphan["Id"][:12]).out
    assert f"committed as {head[:12]} on 'main'" in out
    assert pienv.head() == head and run_containers(pienv) == []
    assert len(docker.from_env().api.images(filters=mine)) == images


def test_fsck_repair_after_refs_json_deleted(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    pienv("run", "-b", "side", "--", "touch", "/b")
    heads = dict(pienv.refs()["branches"])
    (pienv.home / "refs.json").unlink()
    r = pienv("log", check=False)
    assert r.code == 1 and "fsck --repair" in r.err
    assert pienv("fsck", check=False).code == 1
    out = pienv("fsck", "--repair").out
    assert "branch main ->" in out and "wrote" in out
    assert pienv.refs()["branches"] == heads
    assert "store ok" in pienv("fsck").out


def test_fsck_repair_rebuilds_lost_index(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    (pienv.home / "commits.jsonl").unlink()
    assert "missing from the commit index" in pienv("fsck", check=False).out
    pienv("fsck", "--repair")
    assert len(json.loads(pienv("log", "--json").out)) == 2


def test_prune_removes_unreachable_keeps_tags_reports_bytes(pienv: Pienv) -> None:
    pienv("run", "--", "sh", "-c", "head -c 300000 /dev/urandom > /big")
    pienv("tag", "keepme")
    pienv("run", "--", "sh", "-c", "head -c 200000 /dev/urandom > /big2")
    doomed = pienv.head()
    pienv("reset", "HEAD~1")
    dry = json.loads(pienv("prune", "--dry-run", "--json").out)
    assert dry["removed"] == []  # the reflog still reaches it
    r = json.loads(pienv("prune", "--older-than", "0s", "--json").out)
    assert r["removed"] == [doomed] and r["bytes_freed"] >= 200000
    assert docker.from_env().api.images(filters={"reference": f"*/*:{doomed[:12]}"}) == []
    assert pienv("show", "keepme").code == 0
    assert pienv("run", "--", "ls", "/big").code == 0


def test_reset_system_keeps_home_reset_all_is_bare(pienv: Pienv) -> None:
    pienv("run", "--", "sh", "-c", "echo token > /home/agent/login; touch /usr/system-pkg")
    old = pienv.head()
    out = pienv("reset", "--system").out
    assert "reset --system" in out
    assert pienv("run", "--", "cat", "/home/agent/login").out == "token\n"
    assert pienv("run", "--", "ls", "/usr/system-pkg", check=False).code != 0
    pienv("reset", "--all")
    assert pienv("run", "--", "ls", "/home/agent/login", check=False).code != 0
    pienv("reset", "main@{2}")  # and the reflog undoes it all: main@{2} is before both
    assert pienv.head() == old
    assert pienv("run", "--", "cat", "/home/agent/login").out == "token\n"
    assert pienv("run", "--", "ls", "/usr/system-pkg").out == "/usr/system-pkg\n"


def test_flatten_keeps_config_and_content(pienv: Pienv) -> None:
    for i in range(3):
        pienv("run", "--", "touch", f"/f{i}")
    before = docker.from_env().api.inspect_image(pienv.head())
    out = pienv("flatten").out
    after = docker.from_env().api.inspect_image(pienv.head())
    assert len(content_layers(after)) == 1 and "-> " in out
    for key in ("Env", "Cmd", "WorkingDir", "User", "ExposedPorts"):
        assert after["Config"].get(key) == before["Config"].get(key)
    assert after["Config"]["Labels"]["org.example.base"] == "busybox"
    assert after["Config"]["Labels"]["dev.pienv.flattened-from"] == before["Id"].split(":")[1]
    assert pienv("run", "--", "ls", "/f0", "/f2").code == 0


def test_runs_past_flatten_at_are_flattened_and_go_on(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 2 in seconds: a low `flatten_at` makes the automatic flatten happen within a few
    runs (the stress test below goes past Docker's real limit)."""
    from pienv.context import Context
    from pienv.ops import run as runmod
    from pienv.store import Store

    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)
    pienv.home.mkdir(parents=True, exist_ok=True)
    (pienv.home / "config.toml").write_text("[run]\nflatten_at = 12\n")
    ctx = Context(store=Store(pienv.home))
    for i in range(8):
        req = runmod.RunRequest(command=("sh", "-c", f"echo {i} >> /counter"))
        result = runmod.run(ctx, req, pienv.repo, pienv.env, lambda b: None, lambda b: None)
        assert result.exit_code == 0 and result.commit is not None, i
    head = docker.from_env().api.inspect_image(pienv.head())
    assert len(head["RootFS"]["Layers"]) <= 12
    assert pienv("run", "--", "sh", "-c", "wc -l < /counter").out.strip() == "8"
    kinds = [c["kind"] for c in json.loads(pienv("log", "--json").out)]
    assert "flatten" in kinds


@pytest.mark.stress
def test_150_runs_on_one_branch_never_dead_end(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pienv.context import Context
    from pienv.ops import run as runmod
    from pienv.store import Store

    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)
    ctx = Context(store=Store(pienv.home))
    for i in range(150):
        req = runmod.RunRequest(command=("sh", "-c", f"echo {i} >> /counter"))
        result = runmod.run(ctx, req, pienv.repo, pienv.env, lambda b: None, lambda b: None)
        assert result.exit_code == 0 and result.commit is not None, i
    head = docker.from_env().api.inspect_image(pienv.head())
    assert len(head["RootFS"]["Layers"]) < 100
    out = pienv("run", "--", "sh", "-c", "wc -l < /counter").out
    assert out.strip() == "150"
    kinds = [c["kind"] for c in json.loads(pienv("log", "--json").out)]
    assert "flatten" in kinds


def test_doctor_reports_each_check(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    checks = {c["name"]: c for c in json.loads(pienv("doctor", "--json").out)}
    assert checks["engine"]["level"] == "ok"
    assert checks["branch main"]["level"] == "ok"
    assert checks["orphans"]["level"] == "ok" and checks["locks"]["level"] == "ok"
    assert {"store", "storage driver", "free disk", "base"} <= set(checks)
    # What pienv needs of the engine, tried for real; the engine named truthfully.
    for name in ("init binary", "commit labels", "archive API"):
        assert checks[name]["level"] == "ok", checks[name]
    product = "Podman" if on_podman() else "Docker Engine"
    assert checks["engine"]["detail"].startswith(f"{product} ")
    assert "(API 1." in checks["engine"]["detail"] and "rootful" in checks["engine"]["detail"]
    assert product in pienv("status").out
    # The probe leaves no container and no image behind.
    import docker

    client = docker.from_env()
    assert not client.api.containers(all=True, filters={"label": "dev.pienv.probe"})
    assert not client.api.images(filters={"label": "dev.pienv.probe"})
