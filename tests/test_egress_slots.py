"""Egress slots through `pienv run`, on every engine (busybox base): runs of one store that
go through the proxy at the same time are each in a slot of their own (their own network
namespace), a loop of runs reuses one slot instead of making one a run, a published port is
refused with one line, and `pienv prune` takes the slots with the proxy (docs/network.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pienv
from test_agent import INSTALL_OK, config, remove_volumes

from pienv import egressnet
from pienv.engine import Engine

pytestmark = pytest.mark.engine


@pytest.fixture
def observed(pienv: Pienv) -> Iterator[Pienv]:
    yield pienv
    egressnet.remove(Engine(), pienv.refs()["store_id"])


def _store_rows(store_id: str) -> tuple[list[str], list[str]]:
    """(holder names, volume names) of the store's egress boundary on the engine."""
    engine = Engine()
    holders = [
        r.name
        for r in engine.containers([egressnet.SLOT_LABEL, f"dev.pienv.store={store_id}"])
        if r.labels.get(egressnet.LABEL) == "holder"
    ]
    return sorted(holders), engine.volumes(egressnet.names(store_id))


def _wait_running(store_id: str, timeout: float = 60) -> None:
    engine = Engine()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = engine.containers([f"dev.pienv.store={store_id}", "dev.pienv.role=run"])
        if any(r.state == "running" for r in rows):
            return
        time.sleep(0.1)
    raise AssertionError("the first run's container never ran")


def test_runs_at_once_get_their_own_slots_and_a_loop_reuses_one(observed: Pienv) -> None:
    p = observed
    netns = ("readlink", "/proc/self/ns/net")  # the namespace a run is in
    first = p("run", "--egress", "observe", "--", *netns).out
    store_id = p.refs()["store_id"]
    assert _store_rows(store_id)[0] == [egressnet.names(store_id) + ".0"]
    p("branch", "other")
    # A run that stays while another starts: the second gets another slot, its own resolver.
    script = "readlink /proc/self/ns/net; sleep 8"
    held = p.popen("run", "--egress", "observe", "--", "sh", "-c", script)
    try:
        _wait_running(store_id)
        second = p("run", "-b", "other", "--egress", "observe", "--", *netns)
    finally:
        out, err = held.communicate(timeout=120)
    assert held.returncode == 0, err
    assert out.split() == first.split(), (out, first)  # slot 0 again, after the first run
    assert second.out.startswith("net:[") and second.out != out, (second.out, out)
    holders, _ = _store_rows(store_id)
    assert len(holders) == 2, holders
    # Back to back, each run's slot is free again as its container exits: no slot a run.
    for _ in range(3):
        assert p("run", "--egress", "observe", "--", *netns).out == first
    assert _store_rows(store_id)[0] == holders


def test_a_port_with_a_policy_is_one_line_and_prune_takes_the_slots(observed: Pienv) -> None:
    p = observed
    p("run", "--egress", "observe", "--", "true")
    store_id = p.refs()["store_id"]
    before = p.head()
    r = p("run", "--egress", "observe", "-p", "3000", "--", "touch", "/x", check=False)
    assert r.code == 1 and r.err.startswith("pienv: error: --port needs an open network"), r.err
    assert "Traceback" not in r.err and p.head() == before
    holders, volumes = _store_rows(store_id)
    assert holders and volumes
    p("prune")
    assert _store_rows(store_id) == ([], [])
    assert Engine().inspect_container(egressnet.names(store_id)) is None


def test_a_policy_run_shares_no_volume_with_runs_that_reach_more(observed: Pienv) -> None:
    """The agent's caches and state are volumes: an open run could serve a relay there (a
    unix socket in ~/.npm) to a run whose allow-list is narrower. A branch with an
    allow-list mounts its policy's own volumes; an observe run (which reaches what an open
    run does) the store's."""
    p = observed
    plant = "mkdir -p ~/.npm && echo planted > ~/.npm/relay && echo ok"
    assert p("run", "--", "sh", "-c", plant).out.strip() == "ok"
    look = ("sh", "-c", "cat ~/.npm/relay 2>/dev/null || echo absent")
    assert p("run", "--egress", "observe", "--", *look).out.strip() == "planted"
    p("egress", "allow", "--no-agent", "example.org")
    assert p("run", "--", *look).out.strip() == "absent"
    p("run", "--", "sh", "-c", "echo mine > ~/.npm/relay")
    assert p("run", "--", *look).out.strip() == "mine"  # the policy's own, kept
    assert p("run", "--egress", "open", "--", *look).out.strip() == "planted"


def test_an_install_and_a_prepare_under_a_policy_keep_it_on_reset(
    observed: Pienv, tmp_path: Path
) -> None:
    """The commits a policy session makes before its run (the agent's install, the mount
    points of a configured mount) ran under the policy and say so: `pienv reset` to one of
    them keeps the branch's allow-list (a commit without one means "made open")."""
    p = observed
    data = tmp_path / "data"
    data.mkdir()
    agent = f'[agent]\ncommand = ["myagent"]\ninstall = "{INSTALL_OK}"\n'
    config(p, agent)
    try:
        p("run", "--", "true")  # the root, made open
        p("egress", "allow", "--no-agent", "example.org")
        config(p, agent + f'[run]\nmounts = ["{data}:/srv/data:ro"]\n')
        policy = json.loads(p("egress", "show", "--json").out)
        assert "hello from myagent" in p("run").out  # install, prepare; the run adds nothing
        made = {c["kind"]: c for c in json.loads(p("log", "--json").out)}
        assert made["install"]["egress"] == policy["hash"], made["install"]
        assert made["install"]["egress_audit"], made["install"]
        assert made["prepare"]["egress"] == policy["hash"], made["prepare"]
        assert made["root"]["egress"] == "" and "run" not in made
        p("run", "--", "touch", "/x")
        for kind in ("prepare", "install"):
            p("reset", made[kind]["id"])
            now = json.loads(p("egress", "show", "--json").out)
            assert (now["mode"], now["allow"]) == ("allow-list", ["example.org"]), (kind, now)
    finally:
        remove_volumes(p)


def test_a_root_a_flatten_and_a_reset_system_of_a_policy_branch_keep_it(observed: Pienv) -> None:
    """Commits pienv makes for a branch outside its runs carry the branch's policy: the root
    (an allow-list set before the first run), a flatten (a copy of its parent), a `reset
    --system` root. `pienv reset` to one keeps the allow-list; a commit without one would
    open the branch."""
    p = observed
    p("egress", "allow", "--no-agent", "example.org")  # before any commit
    config(p, "[run]\nflatten_at = 2\n")
    p("run", "--", "touch", "/a")  # the root, then the run
    p("run", "--", "touch", "/b")  # past flatten_at: a flatten first
    made = {c["kind"]: c for c in json.loads(p("log", "--json").out)}
    p("reset", "--system")
    made["reset-system"] = json.loads(p("log", "--json", "-n", "1").out)[0]
    policy = json.loads(p("egress", "show", "--json").out)
    p("run", "--", "touch", "/c")
    for kind in ("root", "flatten", "reset-system"):
        assert made[kind]["egress"] == policy["hash"], (kind, made[kind])
        p("reset", made[kind]["id"])
        now = json.loads(p("egress", "show", "--json").out)
        assert (now["mode"], now["allow"]) == ("allow-list", ["example.org"]), (kind, now)


def test_a_rebase_of_a_policy_branch_replays_under_it_and_says_so(observed: Pienv) -> None:
    """`pienv rebase` replays a branch's runs under the branch's policy: the new root and
    each replayed commit carry it, as the runs they replay did."""
    p = observed
    p("egress", "allow", "--no-agent", "example.org")
    p("run", "--", "touch", "/a")
    policy = json.loads(p("egress", "show", "--json").out)
    p("rebase", "--onto", p.refs()["base"])
    rebased = json.loads(p("log", "--json").out)
    assert [c["kind"] for c in rebased] == ["run", "root"], rebased
    assert rebased[0]["replays"], rebased[0]
    assert [c["egress"] for c in rebased] == [policy["hash"]] * 2, rebased
    assert rebased[0]["egress_audit"], rebased[0]
