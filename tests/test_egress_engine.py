# ruff: noqa: E501  (the agent scripts are shell, one attempt a line)
"""The egress boundary fails closed on every engine (Docker and Podman tiers), on the busybox
base: an agent in its egress slot gets nowhere but the proxy, the proxy refuses what its run's
policy does not allow, and the runs of a store cannot reach each other. (Allowed traffic, DNS
and key injection against the real registries: test_egress.py, on the realistic base.)"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pienv import egress, egressnet
from pienv.engine import Engine

pytestmark = pytest.mark.engine


class Px(NamedTuple):
    engine: Engine
    proxy: egressnet.Proxy
    slot: egressnet.Slot
    store_id: str
    locks: Path


@pytest.fixture(scope="module")
def proxy(engine_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Px]:
    engine = Engine()
    store_id = secrets.token_hex(16)
    locks = tmp_path_factory.mktemp("slots")
    try:
        px = egressnet.ensure_proxy(engine, store_id)
        slot = egressnet.claim(engine, px, store_id, locks)
        yield Px(engine, px, slot, store_id, locks)
        slot.release()
    finally:
        assert egressnet.remove(engine, store_id)


def agent_container(image: str, slot: egressnet.Slot, script: str, **kw: object) -> object:
    """An agent's container in ``slot`` as a run's is: the holder's namespace, the slot's
    read-only resolver and hosts, NET_RAW and NET_ADMIN dropped."""
    import docker

    return docker.from_env().containers.create(
        image,
        ["sh", "-c", script],
        network_mode=slot.mode,
        cap_drop=list(egressnet_caps()),
        volumes={src: {"bind": dst, "mode": "ro"} for dst, src in slot.files.items()},
        labels={egressnet.SLOT_LABEL: slot.name},
        **kw,
    )


def test_nothing_gets_out_around_the_proxy(proxy: Px, base_image: str) -> None:
    import base64

    engine, px, slot = proxy.engine, proxy.proxy, proxy.slot
    net = egressnet.register(engine, px, slot, egress.DEFAULT.allowing(["example.org"]), "main")
    target = egress.registry_hosts().get("npm", ("localhost",))[0]
    ip = socket.gethostbyname(target)
    auth = base64.b64encode(f"pienv:{net.token}".encode()).decode()
    # observe (open, recorded): a private address written as a number, not a dotted quad, is
    # still an address (getaddrinfo takes it), and a private one needs an exact allow rule
    seen = egressnet.register(engine, px, slot, egress.Policy("open", (), ()), "main")
    oauth = base64.b64encode(f"pienv:{seen.token}".encode()).decode()
    numeric = f"CONNECT 184549375:443 HTTP/1.1\\r\\nProxy-Authorization: Basic {oauth}\\r\\n\\r\\n"
    connect = f"CONNECT {target}:443 HTTP/1.1\\r\\nProxy-Authorization: Basic {auth}\\r\\n\\r\\n"
    script = f"""
echo "== direct"; nc -w 3 {ip} 443 </dev/null; echo "rc=$?"
echo "== denied"; printf '{connect}' | nc -w 5 {slot.address} 3128
echo "== numeric"; printf '{numeric}' | nc -w 5 {slot.address} 3128
echo "== noauth"; printf 'CONNECT example.org:443 HTTP/1.1\\r\\n\\r\\n' | nc -w 5 {slot.address} 3128
echo "== end"
"""
    c: Any = agent_container(base_image, slot, script, environment=net.env)
    try:
        c.start()
        c.wait(timeout=120)
        out = c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)
    egressnet.collect(engine, px, net.token)
    s = dict(part.split("\n", 1) for part in out.split("== ")[1:])
    assert "rc=0" not in s["direct"], out
    assert " 200 " not in s["denied"] and " 200 " not in s["noauth"], out
    assert " 200 " not in s["numeric"], out
    # On every engine alike: the relay is on loopback, no bridge or firewall in between.
    assert "403" in s["denied"] and f"pienv egress allow {target}" in s["denied"], out
    assert "407" in s["noauth"], out
    assert "403" in s["numeric"] and "direct IP" in s["numeric"], out


def egressnet_caps() -> tuple[str, ...]:
    from pienv.runloop.egressrun import CAP_DROP

    return CAP_DROP


def test_an_agent_cannot_reach_another_runs_container(proxy: Px, base_image: str) -> None:
    """Two runs of one store at once are in two slots, each a namespace with loopback only:
    neither reaches the other's listening port, directly or through the proxy with an allow
    rule naming loopback; no interface but `lo`, no route."""
    import base64

    engine, px = proxy.engine, proxy.proxy
    other = egressnet.claim(engine, px, proxy.store_id, proxy.locks)
    try:
        assert other.name != proxy.slot.name and other.holder != proxy.slot.holder
        peer: Any = agent_container(
            base_image, proxy.slot, "echo peer-secret | nc -l -p 8080", detach=True
        )
        peer.start()
        try:
            net = egressnet.register(
                engine,
                px,
                other,
                egress.DEFAULT.allowing(["127.0.0.1", "127.0.0.1:8080", "localhost:8080"]),
                "main",
            )
            auth = base64.b64encode(f"pienv:{net.token}".encode()).decode()
            connect = f"CONNECT 127.0.0.1:8080 HTTP/1.1\\r\\nProxy-Authorization: Basic {auth}\\r\\n\\r\\n"
            script = f"""
echo "== direct"; nc -w 5 127.0.0.1 8080 </dev/null; echo "rc=$?"
echo "== proxy"; printf '{connect}' | nc -w 5 127.0.0.1 3128
echo "== links"; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '
echo "== routes"; tail -n +2 /proc/net/route | wc -l
echo "== end"
"""
            c: Any = agent_container(base_image, other, script, environment=net.env)
            try:
                c.start()
                c.wait(timeout=120)
                out = c.logs().decode(errors="replace")
            finally:
                c.remove(force=True)
            egressnet.collect(engine, px, net.token)
        finally:
            peer.remove(force=True)
    finally:
        other.release()
    assert "peer-secret" not in out, out
    s = dict(part.split("\n", 1) for part in out.split("== ")[1:])
    assert "rc=0" not in s["direct"], out
    assert "403" in s["proxy"], out  # the proxy never connects to loopback
    assert s["links"].split() == ["lo"] and s["routes"].strip() == "0", out


def test_a_slot_is_claimed_once_and_passed_over_while_a_killed_runs_container_runs(
    proxy: Px, base_image: str
) -> None:
    """The claim is a lock: a second claim gets another slot. A slot whose lock is free but
    which a run container still uses (its pienv and finalizer killed) is passed over."""
    engine, px = proxy.engine, proxy.proxy
    second = egressnet.claim(engine, px, proxy.store_id, proxy.locks)
    name = second.name
    orphan: Any = agent_container(base_image, second, "sleep 60", detach=True)
    try:
        second.release()  # as a kill -9 of pienv and its finalizer would
        # Killed right after its start request: the container is still "created" for a
        # moment, then runs in the slot. Either way the slot is passed over.
        for start in (False, True):
            if start:
                orphan.start()
            third = egressnet.claim(engine, px, proxy.store_id, proxy.locks)
            try:
                assert third.name not in (name, proxy.slot.name), (start, third)
            finally:
                third.release()
    finally:
        orphan.remove(force=True)
    again = egressnet.claim(engine, px, proxy.store_id, proxy.locks)
    try:
        assert again.name == name  # free again once its container is gone
    finally:
        again.release()
