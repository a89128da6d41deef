# ruff: noqa: E501  (the agent scripts are shell, one attempt a line)
"""`pienv run` through the network boundary, end to end, as the real non-root user on the
realistic base (the agent has sudo there): the branch's allow-list, the message inside the
container and after the run, the audit kept with the commit, observe + learn, reset bringing
back a commit's policy, injected keys never in the container."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from conftest import NonrootPienv, package_registries

pytestmark = [pytest.mark.engine, pytest.mark.realistic, pytest.mark.nonroot]


@pytest.fixture(scope="module")
def registries() -> dict[str, tuple[str, ...]]:
    return package_registries()


@pytest.fixture(autouse=True)
def no_proxy_left(nonroot_realistic: NonrootPienv) -> Iterator[None]:
    """The store's proxy, network and volume go with the test (conftest's cleanup removes the
    store's containers, the proxy among them, but not its network and volume)."""
    yield
    refs = nonroot_realistic.home / "refs.json"
    if refs.exists():
        from pienv import egressnet
        from pienv.engine import Engine

        egressnet.remove(Engine(), json.loads(refs.read_text())["store_id"])


def sections(out: str) -> dict[str, str]:
    return dict(s.split("\n", 1) for s in out.split("== ")[1:])


def test_run_with_an_allow_list_as_a_hostile_agent(
    nonroot_realistic: NonrootPienv, registries: dict[str, tuple[str, ...]]
) -> None:
    p = nonroot_realistic
    npm_host, pip_host = registries["npm"][0], registries["pip"][0]
    key = "pienv-planted-" + secrets.token_hex(8)
    config = p.home.parent / "config.toml"
    config.write_text("[agent]\ninject_keys = true\n")
    config.chmod(0o644)
    p.env["PIENV_CONFIG"] = str(config)
    p("egress", "allow", npm_host)  # with Pi's providers: api.anthropic.com among them
    script = f"""
echo "== allowed"; npm view is-number name 2>&1 | tail -1
echo "== denied"; python3 -c 'import urllib.request as u; u.urlopen("https://{pip_host}/simple/six/", timeout=20)' 2>&1 | tail -1
echo "== sudo"; sudo -n true && echo sudo-ok; sudo -n python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' 2>&1 | tail -1
sudo -n sh -c 'echo "nameserver 1.1.1.1" > /etc/resolv.conf' 2>&1; getent hosts {pip_host}; echo "getent=$?"
echo "== key"; echo "$ANTHROPIC_API_KEY $ANTHROPIC_BASE_URL"; env | grep -c {key}; sudo -n grep -rl {key} / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | head -3
echo "== end"; touch ~/changed  # /tmp is a tmpfs: a change must land elsewhere
"""
    r = p("run", "--", "sh", "-c", script, env={"ANTHROPIC_API_KEY": key}, timeout=300)
    s = sections(r.out)
    assert s["allowed"].strip() == "is-number", r.out
    assert f"pienv egress allow {pip_host}" in s["denied"], r.out
    # sudo works, but root in the container has no raw sockets and no way around the proxy
    assert "sudo-ok" in s["sudo"] and "Operation not permitted" in s["sudo"], r.out
    assert "getent=2" in s["sudo"], r.out
    placeholder, base_url = s["key"].split("\n")[0].split()
    assert placeholder == "pienv-placeholder-anthropic" and "/_pienv/" in base_url, r.out
    assert s["key"].split("\n")[1].strip() == "0" and key not in r.out, r.out
    # after the run, pienv says what was refused and how to allow it
    assert f"pienv egress allow {pip_host}" in r.err, r.err
    head = json.loads(p("log", "-n", "1", "--json").out)[0]
    shown = json.loads(p("egress", "show", "--json").out)
    assert head["egress"] == shown["hash"] and head["egress_audit"]
    assert "egress:" in p("show", "HEAD").out
    assert f"[egress {head['egress'][:8]}]" in p("log", "-n", "1").out
    audit = json.loads(p("egress", "log", "--json").out)
    seen = {(a["host"], a["allowed"]) for a in audit["attempts"]}
    assert (npm_host, True) in seen and (pip_host, False) in seen, audit
    assert all(a["time"] and a["port"] == 443 for a in audit["attempts"])

    # observe: open but recorded, then learn turns it into rules to review
    p("egress", "reset")
    p(
        "run",
        "--egress",
        "observe",
        "--",
        "sh",
        "-c",
        f"python3 -c 'import urllib.request as u; u.urlopen(\"https://{pip_host}/simple/six/\", timeout=30)' && touch ~/observed",
        timeout=300,
    )
    learned = json.loads(p("egress", "learn", "--json").out)
    assert pip_host in learned["rules"] and pip_host in learned["new"]
    # reset to the allow-list run's commit brings its policy back
    assert json.loads(p("egress", "show", "--json").out)["mode"] == "open"
    r = p("reset", "HEAD~1")
    assert "allow-list" in r.err
    assert json.loads(p("egress", "show", "--json").out)["hash"] == head["egress"]


def test_mode_none_has_no_network(
    nonroot_realistic: NonrootPienv, registries: dict[str, tuple[str, ...]]
) -> None:
    p = nonroot_realistic
    p("egress", "mode", "none")
    r = p(
        "run",
        "--",
        "sh",
        "-c",
        f"curl -sS -m 5 https://{registries['npm'][0]}/ 2>&1; echo rc=$?; cat /proc/net/route | wc -l",
        timeout=300,
    )
    assert "rc=0" not in r.out and r.out.strip().endswith("1"), r.out  # only the header line


def test_doctor_says_and_prune_removes_the_unused_proxy(
    nonroot_realistic: NonrootPienv, registries: dict[str, tuple[str, ...]]
) -> None:
    p = nonroot_realistic
    p("egress", "allow", "--no-agent", registries["npm"][0])
    p("run", "--", "true", timeout=300)
    store_id = json.loads(p("status", "--json").out)["store_id"]
    name = f"pienv-egress-{store_id[:12]}"
    checks = {c["name"]: c for c in json.loads(p("doctor", "--json", check=False).out)}
    assert (
        name in checks["egress proxy"]["detail"] and "running" in checks["egress proxy"]["detail"]
    )
    p("prune")
    checks = {c["name"]: c for c in json.loads(p("doctor", "--json", check=False).out)}
    assert "not running" in checks["egress proxy"]["detail"]
