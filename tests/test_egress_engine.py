"""The egress boundary fails closed on every engine (Docker and Podman tiers), on the busybox
base: an agent on the store's internal network gets nowhere but the proxy, and the proxy
refuses what its run's policy does not allow. (Allowed traffic, DNS and key injection against
the real registries: test_egress.py, on the realistic base.)"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import pytest

from pienv import egress, egressnet
from pienv.engine import Engine

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def proxy(engine_available: None) -> Iterator[tuple[Engine, egressnet.Proxy]]:
    engine = Engine()
    store_id = secrets.token_hex(16)
    try:
        yield engine, egressnet.ensure_proxy(engine, store_id)
    finally:
        assert egressnet.remove(engine, store_id)


def test_nothing_gets_out_around_the_proxy(
    proxy: tuple[Engine, egressnet.Proxy], base_image: str
) -> None:
    import base64

    import docker

    engine, px = proxy
    net = egressnet.register(engine, px, egress.DEFAULT.allowing(["example.org"]), "main")
    target = egress.registry_hosts().get("npm", ("localhost",))[0]
    ip = socket.gethostbyname(target)
    auth = base64.b64encode(f"pienv:{net.token}".encode()).decode()
    # observe (open, recorded): a private address written as a number, not a dotted quad, is
    # still an address (getaddrinfo takes it), and a private one needs an exact allow rule
    seen = egressnet.register(engine, px, egress.Policy("open", (), ()), "main")
    oauth = base64.b64encode(f"pienv:{seen.token}".encode()).decode()
    numeric = f"CONNECT 184549375:443 HTTP/1.1\\r\\nProxy-Authorization: Basic {oauth}\\r\\n\\r\\n"
    connect = f"CONNECT {target}:443 HTTP/1.1\\r\\nProxy-Authorization: Basic {auth}\\r\\n\\r\\n"
    script = f"""
echo "== direct"; nc -w 3 {ip} 443 </dev/null; echo "rc=$?"
echo "== denied"; printf '{connect}' | nc -w 5 {px.address} 3128
echo "== numeric"; printf '{numeric}' | nc -w 5 {px.address} 3128
echo "== noauth"; printf 'CONNECT example.org:443 HTTP/1.1\\r\\n\\r\\n' | nc -w 5 {px.address} 3128
echo "== end"
"""
    client = docker.from_env()
    c = client.containers.create(
        base_image,
        ["sh", "-c", script],
        network=net.network,
        dns=list(net.dns),
        cap_drop=list(egressnet_caps()),
        environment=net.env,
    )
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
    if not (engine.dialect.name == "Podman" and not engine.rootless):
        # Where agent and proxy can talk (not rootful Podman beside Docker: test_egress.py)
        assert "403" in s["denied"] and f"pienv egress allow {target}" in s["denied"], out
        assert "407" in s["noauth"], out
        assert "403" in s["numeric"] and "direct IP" in s["numeric"], out


def egressnet_caps() -> tuple[str, ...]:
    from pienv.runloop.egressrun import CAP_DROP

    return CAP_DROP


@pytest.mark.xfail(
    strict=True,
    reason="the runs of a store share one internal network: an agent reaches another run's "
    "container directly (docs/network.md: enable_icc=false cuts the proxy off too; per-run "
    "networks would close it at ~0.3 s a run)",
)
def test_an_agent_cannot_reach_another_runs_container(
    proxy: tuple[Engine, egressnet.Proxy], base_image: str
) -> None:
    import docker

    _, px = proxy
    client = docker.from_env()
    common: dict[str, object] = {"network": px.network, "cap_drop": list(egressnet_caps())}
    peer = client.containers.run(
        base_image, ["sh", "-c", "echo peer-secret | nc -l -p 8080"], detach=True, **common
    )
    try:
        peer.reload()
        ip = peer.attrs["NetworkSettings"]["Networks"][px.network]["IPAddress"]
        out = client.containers.run(
            base_image, ["sh", "-c", f"nc -w 5 {ip} 8080 </dev/null"], remove=True, **common
        )
    finally:
        peer.remove(force=True)
    assert b"peer-secret" not in out, out
