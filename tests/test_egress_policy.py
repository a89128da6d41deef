"""Egress policy, audit and proxy rules: pure logic, no engine."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from pienv import egress, egressaudit
from pienv.errors import UsageError
from pienv.netproxy import proxy


def test_rules_are_checked_and_canonical() -> None:
    assert egress.check_rule(" Example.ORG. ") == "example.org"
    assert egress.check_rule("*.example.org") == "*.example.org"
    assert egress.check_rule("example.org:8443") == "example.org:8443"
    assert egress.check_rule("10.1.2.3") == "10.1.2.3"
    for bad in ("*", "exa mple.org", "http://example.org", "example.org:0", "a..b", "*.", ""):
        with pytest.raises(UsageError):
            egress.check_rule(bad)


@pytest.mark.parametrize(
    ("rule", "host", "port", "hit"),
    [
        ("example.org", "example.org", 443, True),
        ("example.org", "EXAMPLE.org.", 80, True),
        ("example.org", "www.example.org", 443, False),
        ("example.org", "example.org", 22, False),  # only 80/443 without a port
        ("example.org:22", "example.org", 22, True),
        ("example.org:22", "example.org", 443, False),
        ("*.example.org", "a.b.example.org", 443, True),
        ("*.example.org", "example.org", 443, False),  # subdomains only
        ("*.example.org", "badexample.org", 443, False),
    ],
)
def test_rule_matching_agrees_with_the_proxy(rule: str, host: str, port: int, hit: bool) -> None:
    assert egress.rule_matches(rule, host, port) is hit
    assert proxy.rule_matches(rule, host.lower().rstrip("."), port) is hit


def test_policy_edits_and_verdicts() -> None:
    p = egress.DEFAULT
    assert p.mode == "open" and p.verdict("anything.example", 443) is None
    p = p.allowing(["b.example", "a.example"])
    assert p.mode == "allow-list" and p.allow == ("a.example", "b.example")
    assert p.verdict("a.example", 443) is None
    assert p.verdict("c.example", 443) == "not on the allow-list"
    p = p.denying(["a.example"])
    assert p.allow == ("b.example",) and p.verdict("a.example", 443) == "on the deny list"
    # the proxy decides the same way from the JSON pienv registers
    for host in ("a.example", "b.example", "c.example"):
        assert (proxy.allowed(p.to_json(), host, 443) is None) == (p.verdict(host, 443) is None)
    assert egress.Policy("none").verdict("b.example", 443) == "mode none"


def test_hash_is_content_and_order_independent() -> None:
    a = egress.DEFAULT.allowing(["x.example", "y.example"])
    b = egress.DEFAULT.allowing(["y.example"]).allowing(["x.example"])
    assert a.hash == b.hash and a.hash != egress.DEFAULT.hash
    assert egress.Policy.from_json(json.loads(a.canonical())) == a


def test_store_follows_commits(tmp_path: Path) -> None:
    store = egress.PolicyStore(tmp_path)
    assert store.of_branch("main") == egress.DEFAULT
    strict = egress.DEFAULT.allowing(["x.example"])
    digest = store.set_branch("main", strict)
    assert store.of_branch("main") == strict and store.load(digest) == strict
    # a branch with no policy of its own takes its head commit's
    assert store.of_branch("other", {egress.LABEL: digest}) == strict
    # checkout/reset to a commit made before the allow-list: back to open
    assert store.follow_commit("main", {}) == egress.DEFAULT
    assert store.of_branch("main") == egress.DEFAULT
    assert store.follow_commit("main", {egress.LABEL: digest}) == strict


def test_corrupt_index_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "egress").mkdir()
    (tmp_path / "egress" / "branches.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable"):
        egress.PolicyStore(tmp_path).of_branch("main")


def test_presets_name_providers_and_registries_by_kind() -> None:
    regs = {"npm": ("npm.registry.test",), "pip": ("pip.index.test", "files.pip.test")}
    claude = egress.preset_rules("claude", regs)
    assert claude == ["api.anthropic.com", "npm.registry.test"]
    assert "files.pip.test" in egress.preset_rules("aider", regs)
    assert set(egress.PRESET_NEEDS) >= {"pi", "claude", "codex", "gemini", "opencode", "aider"}


def test_audit_merges_open_close_and_learns() -> None:
    lines = [
        b'{"id": "1", "event": "open", "host": "a.example", "port": 443, "t": 1.5}',
        b'{"id": "2", "event": "deny", "host": "b.example", "port": 8080, "t": 2, "why": "x"}',
        b'{"id": "1", "event": "close", "host": "a.example", "sent": 10, "received": 99}',
        b'{"id": "3", "event": "open", "host": "c.example", "port": 80, "t": 3}',
        b'{"id": "4", "event": "op',  # torn last line
    ]
    attempts = egressaudit.parse(lines)
    assert [(a.host, a.allowed, a.sent, a.received) for a in attempts] == [
        ("a.example", True, 10, 99),
        ("b.example", False, 0, 0),
        ("c.example", True, None, None),  # still open when the run ended
    ]
    assert attempts[0].time == "1970-01-01T00:00:01.500Z"
    assert egressaudit.learn(attempts) == ["a.example", "b.example:8080", "c.example"]
    assert egressaudit.denied_hosts(attempts) == ["b.example:8080"]


def test_dns_answer_is_refused_with_the_question() -> None:
    query = bytes.fromhex("abcd01000001000000000000") + b"\x04test\x00\x00\x01\x00\x01"
    sent: list[bytes] = []

    class T:
        def sendto(self, data: bytes, addr: object) -> None:
            sent.append(data)

    dns = proxy.Dns()
    dns.connection_made(T())
    dns.datagram_received(query, ("10.0.0.1", 5353))
    answer = sent[0]
    assert answer[:2] == b"\xab\xcd" and answer[3] & 0x0F == 5  # same id, REFUSED
    assert answer[6:12] == b"\0" * 6  # no answers, no authority, no additional
    assert answer[12:] == query[12:]


def test_origin_request_drops_proxy_headers_and_closes() -> None:
    raw = proxy.origin_request(
        "GET",
        "http://a.example/x?y=1",
        "HTTP/1.1",
        [("Host", "a.example"), ("Proxy-Authorization", "Basic eA=="), ("Accept", "*/*")],
        "a.example",
    ).decode()
    assert raw.startswith("GET /x?y=1 HTTP/1.1\r\n")
    assert "Proxy-Authorization" not in raw and "Accept: */*" in raw
    assert raw.endswith("Host: a.example\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("host", ["2886795265", "0xac110001", "172.17.1", "0254.0.0.1", "[::1]"])
def test_every_numeric_address_form_is_an_ip_literal(host: str) -> None:
    # getaddrinfo takes these as addresses (inet_aton): a hostname check would let them
    # through as names in observe mode, straight to the host's addresses
    assert proxy.is_ip(host)
    assert not proxy.is_ip("pypi.org") and not proxy.is_ip("1e100.net")


def test_private_addresses_only_for_hosts_named_exactly() -> None:
    import asyncio

    for host in ("10.1.2.3", "172.31.0.1", "192.168.1.1", "100.64.0.1"):
        with pytest.raises(proxy.Denied):
            asyncio.run(proxy.resolve(host, 80))
        assert asyncio.run(proxy.resolve(host, 80, exact=True))
    assert asyncio.run(proxy.resolve("203.0.113.80", 443))


@pytest.mark.parametrize("addr", ["::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1"])
def test_ipv4_mapped_ipv6_answers_are_checked_as_ipv4(addr: str) -> None:
    # a name with such an AAAA answer would reach the host's loopback, metadata or LAN
    import asyncio

    with pytest.raises(proxy.Denied):
        asyncio.run(proxy.resolve(addr, 80))


def test_plain_http_forwards_one_request_and_its_body_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request pipelined after the first on one plain-HTTP connection never reaches the
    upstream (it would carry a Host the proxy did not check)."""
    import asyncio

    async def scenario() -> bytes:
        got = bytearray()
        done = asyncio.Event()

        async def origin(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            # whatever arrives within half a second (a pipelined request comes at once)
            with contextlib.suppress(TimeoutError):
                while chunk := await asyncio.wait_for(r.read(65536), 0.5):
                    got.extend(chunk)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await w.drain()
            w.close()
            done.set()

        server = await asyncio.start_server(origin, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def upstream(host: str, p: int, tls: bool = False, exact: bool = False) -> Any:
            return await asyncio.open_connection("127.0.0.1", port)

        async def find(token: str) -> proxy.Run:
            return proxy.Run("t" * 20, {"policy": {"mode": "allow-list", "allow": ["ok.example"]}})

        monkeypatch.setattr(proxy, "open_upstream", upstream)
        monkeypatch.setattr(proxy, "find_run", find)
        monkeypatch.setattr(proxy, "AUDIT", str(tmp_path))
        front = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        r, w = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
        w.write(
            b"POST http://ok.example/a HTTP/1.1\r\nProxy-Authorization: Basic cGllbnY6dA==\r\n"
            b"Content-Length: 4\r\n\r\nbody"
            b"GET /b HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        )
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 5)
        await asyncio.wait_for(done.wait(), 5)
        w.close()
        server.close()
        front.close()
        assert answer.endswith(b"ok"), answer
        return bytes(got)

    got = asyncio.run(scenario())
    assert got.startswith(b"POST /a HTTP/1.1\r\n") and got.endswith(b"\r\n\r\nbody"), got
    assert b"evil.example" not in got, got


def test_missing_registries_fail_the_egress_tests_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without npm on PATH the registries cannot be read: CI (PIENV_REQUIRE_ENGINE) fails the
    egress tests instead of skipping the whole boundary; elsewhere they skip."""
    from conftest import package_registries

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="need the package registries in CI"):
        package_registries(require=True)
    with pytest.raises(pytest.skip.Exception, match="not configured here"):
        package_registries(require=False)


def test_the_relay_passes_loopback_to_the_proxys_socket_and_fails_closed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A slot's relay: a connection to it reaches the proxy on its unix socket byte for byte
    (here: a request without credentials gets the proxy's 407); with no proxy behind the
    socket the connection is closed, nothing answered."""
    import asyncio

    sock = tmp_path / "proxy.sock"
    monkeypatch.setattr(proxy, "SOCKET", str(sock))
    request = b"CONNECT a.example:443 HTTP/1.1\r\n\r\n"

    async def through_relay() -> bytes:
        relay = await asyncio.start_server(proxy.relay, "127.0.0.1", 0)
        r, w = await asyncio.open_connection("127.0.0.1", relay.sockets[0].getsockname()[1])
        w.write(request)
        await w.drain()
        try:
            answer = await asyncio.wait_for(r.read(), 5)
        except ConnectionResetError:  # closed with the request unread: nothing answered
            answer = b""
        w.close()
        relay.close()
        await relay.wait_closed()
        return answer

    async def with_proxy() -> bytes:
        server = await asyncio.start_unix_server(proxy.handle, path=str(sock))
        try:
            return await through_relay()
        finally:
            server.close()

    assert asyncio.run(with_proxy()).startswith(b"HTTP/1.1 407 ")
    sock.unlink(missing_ok=True)
    assert asyncio.run(through_relay()) == b""
