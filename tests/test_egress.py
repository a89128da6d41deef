# ruff: noqa: E501  (the agent scripts are shell, one attempt a line)
"""The network boundary on a real engine (issue 23): the store's proxy, an agent container on
the internal network only, and the outside world = the package registries this machine
reaches (their hosts read at run time from npm's and pip's own configuration).

Each test runs one container with a script of attempts, as a hostile agent would: as a
non-root user, with NET_RAW dropped, trying the allowed registry, a denied one, direct IPs,
DNS, IPv6 and the services of the host it runs on.
"""

from __future__ import annotations

import contextlib
import http.server
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import package_registries

from pienv import egress, egressaudit, egressnet
from pienv.engine import Engine

pytestmark = [pytest.mark.engine, pytest.mark.realistic]


@pytest.fixture(scope="module")
def registries() -> dict[str, tuple[str, ...]]:
    return package_registries()


class Px(NamedTuple):
    engine: Engine
    proxy: egressnet.Proxy
    slot: egressnet.Slot
    store_id: str
    locks: Path


@pytest.fixture(scope="module")
def engine_proxy(engine_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Px]:
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


@pytest.fixture(scope="module")
def proxy(engine_proxy: Px) -> Px:
    """The proxy and a slot of it (every engine alike: the relay is on loopback)."""
    return engine_proxy


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A server on every address of this machine: the agent must not reach it."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def run_agent(
    image: str, net: egressnet.RunNetwork, script: str, slot: egressnet.Slot
) -> tuple[int, str]:
    """The script as a run's agent in ``slot``: the holder's namespace, the slot's read-only
    resolver and hosts, a non-root user, NET_RAW and NET_ADMIN dropped."""
    import docker

    client = docker.from_env()
    c = client.containers.create(
        image,
        ["sh", "-c", script],
        user="4321:4321",
        environment={
            **net.env,
            "HOME": "/tmp",
            "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
        },
        network_mode=net.network,
        volumes={src: {"bind": dst, "mode": "ro"} for dst, src in slot.files.items()},
        cap_drop=["NET_RAW", "NET_ADMIN"],
        security_opt=["no-new-privileges"],
        working_dir="/tmp",
    )
    try:
        c.start()
        rc = int(c.wait(timeout=180)["StatusCode"])
        return rc, c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)


def host_addresses() -> list[str]:
    """This machine's addresses a container could try: its route source and docker0's."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return sorted(
        {w.split("/")[0] for line in out.splitlines() for w in line.split()[3:4]} - {"127.0.0.1"}
    )


def test_allowed_denied_direct_ip_dns_ipv6_host_and_audit(
    proxy: Px,
    registries: dict[str, tuple[str, ...]],
    realistic_image: str,
    host_service: int,
) -> None:
    engine, px, slot = proxy.engine, proxy.proxy, proxy.slot
    npm_host, pip_host = registries["npm"][0], registries["pip"][0]
    npm_ip = socket.gethostbyname(npm_host)
    policy = egress.DEFAULT.allowing([npm_host])
    net = egressnet.register(engine, px, slot, policy, "main")
    hosts = " ".join(host_addresses())
    script = f"""
echo "== allowed"; npm view is-number name 2>&1 | tail -1
echo "== denied"; python3 -c 'import urllib.request as u; u.urlopen("https://{pip_host}/simple/six/", timeout=20)' 2>&1 | tail -1
echo "== noproxy"; env -u HTTPS_PROXY -u https_proxy curl -sS -m 5 https://{npm_host}/ 2>&1; echo "rc=$?"
echo "== directip"; curl -sS -m 5 --noproxy '*' -k https://{npm_ip}/ 2>&1; echo "rc=$?"
echo "== proxyip"; curl -sS -m 10 -k https://{npm_ip}/ 2>&1; echo "rc=$?"
echo "== dns"; getent hosts {pip_host} {npm_host} example.com; echo "rc=$?"
node -e 'require("dns").resolve4("{npm_host}",(e,a)=>console.log("resolve4", e && e.code, a))'
echo "== ipv6"; grep -v ' 20 ' /proc/net/if_inet6 | grep -v '^0*1 ' | sed 's/^/inet6 /'; curl -sS -m 5 --noproxy '*' -g 'https://[64:ff9b::{npm_ip}]/' 2>&1; echo "rc=$?"
echo "== host"; for a in {hosts} $(python3 -c 'import socket,struct; print(" ".join(socket.inet_ntoa(struct.pack("<L", int(l.split()[2], 16))) for l in open("/proc/net/route").readlines()[1:] if l.split()[1] == "00000000"))'); do
  curl -sS -m 3 --noproxy '*' http://$a:{host_service}/ >/dev/null 2>&1 && echo "REACHED $a"; done
echo "== raw"; python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' 2>&1 | tail -1
echo "== end"
"""
    _, out = run_agent(realistic_image, net, script, slot)
    audit = egressaudit.parse(egressnet.collect(engine, px, net.token).splitlines())
    sections = dict(s.split("\n", 1) for s in out.split("== ")[1:])
    assert sections["allowed"].strip() == "is-number", out
    # The refusal names the host and the command that allows it, inside the container.
    assert f"pienv egress allow {pip_host}" in sections["denied"], out
    assert "rc=0" not in sections["noproxy"] and "rc=0" not in sections["directip"], out
    assert "403" in sections["proxyip"], out
    # No name resolves, allowed or not: the proxy is the only resolver and answers REFUSED.
    assert "rc=2" in sections["dns"] and "resolve4 EREFUSED" in sections["dns"], out
    assert "inet6" not in sections["ipv6"] and "rc=0" not in sections["ipv6"], out
    # No interface but loopback: the host's services are out of reach on every engine.
    assert "REACHED" not in sections["host"], out
    assert "Operation not permitted" in sections["raw"], out
    by_host = {(a.host, a.allowed) for a in audit}
    assert (npm_host, True) in by_host and (pip_host, False) in by_host, audit
    assert any(a.host == npm_ip and "direct IP" in a.why for a in audit), audit
    npm = next(a for a in audit if a.host == npm_host)
    assert npm.received and npm.received > 1000 and npm.sent and npm.port == 443
    assert egressaudit.learn(audit) == sorted([npm_host, pip_host, npm_ip])


def test_injected_key_reaches_only_its_host(
    proxy: Px,
    registries: dict[str, tuple[str, ...]],
    realistic_image: str,
) -> None:
    engine, px, slot = proxy.engine, proxy.proxy, proxy.slot
    npm_host, pip_host = registries["npm"][0], registries["pip"][0]
    key = "pienv-planted-" + secrets.token_hex(12)
    # A provider route whose upstream is the npm registry: the real outside world here.
    fake = egress.Provider(
        "fake", "FAKE_API_KEY", f"https://{npm_host}", "x-fake-key", base_env=("FAKE_BASE_URL",)
    )
    other = egress.Provider("other", "OTHER_API_KEY", f"https://{pip_host}", "x-other-key")
    policy = egress.DEFAULT.allowing([npm_host])
    net = egressnet.register(
        engine,
        px,
        slot,
        policy,
        "main",
        {"fake": key, "other": key},
        {"fake": fake, "other": other},
    )
    assert key not in repr(net.env)
    script = f"""
echo "== route"; curl -sS -m 30 "$FAKE_BASE_URL/is-number" | head -c 200; echo
echo "== viaproxy"; curl -sS -m 30 -x "$HTTP_PROXY" "$FAKE_BASE_URL/is-number" | head -c 200; echo
echo "== other"; curl -sS -m 10 {slot.route_url(net.token, "other")}/simple/six/; echo
echo "== env"; env | grep -c {key}
echo "== files"; grep -rl {key} / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | head; echo
echo "== key"; echo "$FAKE_API_KEY"
"""
    _, out = run_agent(realistic_image, net, script, slot)
    egressnet.collect(engine, px, net.token)
    sections = dict(s.split("\n", 1) for s in out.split("== ")[1:])
    assert '"name":"is-number"' in sections["route"].replace(" ", ""), out
    assert '"name":"is-number"' in sections["viaproxy"].replace(" ", ""), out
    # A route to a host the policy does not allow is refused: its key goes nowhere.
    assert f"pienv egress allow {pip_host}" in sections["other"], out
    assert sections["env"].strip() == "0" and not sections["files"].strip(), out
    assert sections["key"].strip() == "pienv-placeholder-fake"
    assert key not in out


def test_fails_closed_on_every_engine(
    engine_proxy: Px,
    registries: dict[str, tuple[str, ...]],
    realistic_image: str,
) -> None:
    """Whatever the engine's firewall does to the internal network, nothing gets out around
    the proxy: no DNS answer, no direct connection, no route."""
    engine, px, slot = engine_proxy.engine, engine_proxy.proxy, engine_proxy.slot
    npm_host = registries["npm"][0]
    npm_ip = socket.gethostbyname(npm_host)
    net = egressnet.register(engine, px, slot, egress.DEFAULT.allowing(["example.org"]), "main")
    script = f"""
echo "== dns"; getent hosts {npm_host} example.com; echo "rc=$?"
echo "== direct"; curl -sS -m 5 --noproxy '*' -k https://{npm_ip}/ 2>&1; echo "rc=$?"
echo "== denied"; curl -sS -m 10 https://{npm_host}/ 2>&1; echo "rc=$?"
echo "== route"; awk 'NR>1 && $2=="00000000"' /proc/net/route | wc -l
"""
    _, out = run_agent(realistic_image, net, script, slot)
    egressnet.collect(engine, px, net.token)
    sections = dict(s.split("\n", 1) for s in out.split("== ")[1:])
    assert "rc=2" in sections["dns"], out
    assert "rc=0" not in sections["direct"] and "rc=0" not in sections["denied"], out
    assert sections["route"].strip() == "0", out  # loopback only: no route at all


# Last in this file: it replaces the module's proxy.
def test_proxy_is_shared_and_restarted_when_gone(proxy: Px, base_image: str) -> None:
    """The store's proxy is found again and replaced when gone; a slot made for the old one
    keeps working with the new one (its relay finds the proxy's socket by path)."""
    engine, px, slot = proxy.engine, proxy.proxy, proxy.slot
    # ensure_proxy takes the store id; the names only keep its first 12 hex
    again = egressnet.ensure_proxy(engine, proxy.store_id[:12] + "0" * 20)
    assert again.container == px.container
    with contextlib.suppress(Exception):
        engine._call("DELETE", f"/containers/{px.container}", {"force": "1"})
    fresh = egressnet.ensure_proxy(engine, proxy.store_id)
    assert fresh.container != px.container and fresh.name == px.name
    slot.release()
    kept = egressnet.claim(engine, fresh, proxy.store_id, proxy.locks)
    try:
        assert (kept.name, kept.holder) == (slot.name, slot.holder)
        # an unregistered client (no token) is refused: by the new proxy, through the relay
        _, out = run_agent(
            base_image,
            egressnet.RunNetwork("x" * 32, kept.mode, (), {}),
            "cat /etc/resolv.conf; "
            f"printf 'CONNECT a.example:443 HTTP/1.1\\r\\n\\r\\n' | nc -w 5 {kept.address} 3128",
            kept,
        )
    finally:
        kept.release()
    assert "nameserver 127.0.0.1" in out and "407" in out, out
