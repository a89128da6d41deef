"""pienv's egress proxy: the one way out of an agent container, and the relay in front of it.

This file runs inside the proxy container and the slots' holder containers (an image pienv
assembles FROM scratch out of this machine's own Python, see netproxy/image.py), so it uses
the standard library only and imports nothing of pienv.

The proxy (no argument) serves, on a unix socket in a volume it shares with the holders only
(SOCKET), never on a network:

- an HTTP proxy: CONNECT (TLS passes through untouched, no interception) and plain-HTTP
  requests in absolute form, each checked against the policy of the run that sent it. A run
  is named by the token in its proxy credentials (``http://pienv:TOKEN@127.0.0.1:3128``); no
  token or an unknown one is refused (fail closed).
- key injection: ``http://127.0.0.1:3128/_pienv/TOKEN/ROUTE/...`` (a provider base URL the
  agent is given) is forwarded over TLS to the route's upstream with the real key added
  there; the agent only ever holds a placeholder.

The relay (``relay NAME``, a slot's holder) owns a network namespace with nothing but
loopback, which the run's container joins. It serves there:

- 127.0.0.1:3128/tcp: every connection passed, byte for byte, to the proxy's socket;
- 127.0.0.1:53/udp: a DNS server that answers every query REFUSED: the agent's only resolver
  gives out no addresses, so names cannot leak through DNS and nothing resolves to a way
  around the proxy (there is no route anywhere anyway).

pienv writes a run's registration (policy, routes with keys) to RUNS/TOKEN.json with the
engine's archive API before the run starts and reads AUDIT/TOKEN.jsonl after it ends: one JSON
line per event (``open``/``deny`` when a connection is decided, ``close`` with its bytes).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures.thread  # noqa: F401  (getaddrinfo's executor, imported lazily)
import contextlib
import encodings.ascii
import encodings.idna
import encodings.latin_1
import encodings.utf_8  # noqa: F401
import ipaddress
import itertools
import json
import os
import re
import socket
import ssl
import sys
import time
from typing import Any

ROOT = os.environ.get("PIENV_PROXY_ROOT", "/run/pienv")
RUNS = os.path.join(ROOT, "runs")
AUDIT = os.path.join(ROOT, "audit")
PORT = int(os.environ.get("PIENV_PROXY_PORT", "3128"))
DNS_PORT = int(os.environ.get("PIENV_DNS_PORT", "53"))
# The proxy listens here; the holders' relays connect here (the socket volume).
SOCKET = os.environ.get("PIENV_PROXY_SOCKET", "/run/pienv-socket/proxy.sock")
# Networks the proxy never connects to, whatever a name resolves to: the host's own services
# (through the gateways of the proxy's networks), cloud metadata, loopback.
BLOCKED = [
    ipaddress.ip_network(n)
    for n in [
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::1/128",
        "fe80::/10",
        "::/128",
        "ff00::/8",
        *os.environ.get("PIENV_BLOCK_NETS", "").split(),
    ]
]
# Private networks (the host's other addresses, a LAN, other engines' bridges): reached only
# for a host the allow-list names exactly, never through a wildcard, observe or open mode
# (a public name such as 10-0-0-1.nip.io resolves to any address its owner likes).
PRIVATE = [
    ipaddress.ip_network(n)
    for n in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
]
DEFAULT_PORTS = (80, 443)
# The CA bundle pienv copies in (this machine's); the interpreter's own default paths point
# at its build's OpenSSL directory, which the image does not have.
CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
# Connection ids, unique across proxy restarts (a run's audit may span one).
_ids = (f"{os.getpid()}-{int(time.time())}-{n}" for n in itertools.count(1))
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


class Denied(Exception):
    """A request the policy refuses: ``status`` and the reason the client is told."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_ip(host: str) -> bool:
    """Any form getaddrinfo takes as an address, not a name: inet_aton's too (``2886795265``,
    ``0xac110001``, ``172.17.1``, ``0254.0.0.1``), which ipaddress does not parse."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:
            socket.inet_aton(host)
        except (OSError, ValueError):
            return False
    return True


def rule_matches(rule: str, host: str, port: int) -> bool:
    """``host``, ``*.domain`` (its subdomains, not the domain itself), each with an optional
    ``:port`` (else ports 80 and 443 only)."""
    name, _, rport = rule.partition(":") if not rule.startswith("[") else (rule, "", "")
    if rport and int(rport) != port:
        return False
    if not rport and port not in DEFAULT_PORTS:
        return False
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


def allowed(policy: dict[str, Any], host: str, port: int) -> str | None:
    """None when ``policy`` lets ``host:port`` through, else why not."""
    host = host.lower().rstrip(".")
    mode = policy.get("mode", "allow-list")
    if any(rule_matches(r, host, port) for r in policy.get("deny", ())):
        return "on the deny list"
    if mode in ("open", "observe"):
        return None
    if mode != "allow-list":
        return f"mode {mode}"
    if any(rule_matches(r, host, port) for r in policy.get("allow", ())):
        return None
    return "not on the allow-list"


def allow_hint(host: str, port: int) -> str:
    target = host if port in DEFAULT_PORTS else f"{host}:{port}"
    return f"pienv egress allow {target}"


class Run:
    """One registered run: its policy, key routes and audit file."""

    def __init__(self, token: str, data: dict[str, Any]) -> None:
        self.token = token
        self.policy: dict[str, Any] = data.get("policy") or {}
        self.routes: dict[str, dict[str, str]] = data.get("routes") or {}
        self.branch = str(data.get("branch", ""))
        self.revoked = bool(data.get("revoked"))

    def audit(self, **event: Any) -> None:
        event = {"t": round(time.time(), 3), **event}
        line = (json.dumps(event, sort_keys=True) + "\n").encode()
        fd = os.open(
            os.path.join(AUDIT, self.token + ".jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            os.write(fd, line)  # one write of one line: O_APPEND keeps lines whole
        finally:
            os.close(fd)


def load_run(token: str) -> Run | None:
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", token):
        return None
    try:
        with open(os.path.join(RUNS, token + ".json"), encoding="utf-8") as f:
            run = Run(token, json.load(f))
    except (OSError, ValueError):
        return None
    return None if run.revoked else run


async def find_run(token: str) -> Run | None:
    # pienv registers a run before starting it; the short wait covers a registration that
    # is still being written (the archive API is not atomic for the reader).
    for _ in range(20):
        run = load_run(token)
        if run is not None:
            return run
        await asyncio.sleep(0.05)
    return None


def token_of(headers: dict[str, str]) -> str:
    value = headers.get("proxy-authorization", "")
    scheme, _, cred = value.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(cred.strip()).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return ""


async def read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if len(raw) > 65536:
        raise Denied(431, "request head too large")
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return lines[0], headers


def split_target(target: str, default_port: int) -> tuple[str, int]:
    host, port = target, default_port
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", target)
    if not m:
        raise Denied(400, f"bad target {target[:100]}")
    host = m.group(1) or m.group(3)
    if m.group(2) or m.group(4):
        port = int(m.group(2) or m.group(4))
    return host.lower().rstrip("."), port


async def resolve(host: str, port: int, exact: bool = False) -> list[tuple[Any, ...]]:
    """The addresses to try, never a blocked one, and a private one only when ``exact`` (the
    host is named by an allow rule of its own)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Denied(502, f"cannot resolve {host}: {exc}") from exc
    never = BLOCKED + own_networks() + ([] if exact else PRIVATE)
    good = [i for i in infos if not any(_address(i) in net for net in never if _same(i, net))]
    if not good:
        raise Denied(403, f"{host} resolves only to addresses pienv never connects to")
    return good


def own_networks() -> list[Any]:
    """The networks the proxy is on, read as it connects (pienv adds a slot's network while
    it runs): the engine host's gateways, and the slots of the store's other runs, whose
    containers an allow rule naming an address there must not reach."""
    nets = []
    try:
        with open("/proc/net/route") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    for row in rows:
        cols = row.split()
        if len(cols) < 8 or cols[1] == "00000000":  # the default route
            continue
        try:
            dest = int(cols[1], 16).to_bytes(4, "little")
            mask = int(cols[7], 16).to_bytes(4, "little")
            nets.append(
                ipaddress.ip_network(
                    f"{ipaddress.IPv4Address(dest)}/{ipaddress.IPv4Address(mask)}", strict=False
                )
            )
        except ValueError:
            continue
    return nets


def _address(info: tuple[Any, ...]) -> Any:
    """The address an answer reaches: an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``, which a
    dual-stack socket connects to over IPv4) as the IPv4 address it is."""
    addr = ipaddress.ip_address(info[4][0].partition("%")[0])
    return getattr(addr, "ipv4_mapped", None) or addr


def _same(info: tuple[Any, ...], net: Any) -> bool:
    return bool(_address(info).version == net.version)


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=CA_FILE if os.path.exists(CA_FILE) else None)


async def open_upstream(
    host: str, port: int, tls: bool = False, exact: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    last: Exception | None = None
    for family, _, _, _, addr in await resolve(host, port, exact):
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    addr[0],
                    addr[1],
                    family=family,
                    ssl=tls_context() if tls else None,
                    server_hostname=host if tls else None,
                ),
                30,
            )
        except (TimeoutError, OSError) as exc:
            last = exc
    raise Denied(502, f"cannot connect to {host}:{port}: {last}")


async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: list[int]) -> None:
    try:
        while True:
            data = await src.read(65536)
            if not data:
                break
            count[0] += len(data)
            dst.write(data)
            await dst.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()


async def splice(
    creader: asyncio.StreamReader,
    cwriter: asyncio.StreamWriter,
    ureader: asyncio.StreamReader,
    uwriter: asyncio.StreamWriter,
) -> tuple[int, int]:
    sent, received = [0], [0]
    await asyncio.gather(pipe(creader, uwriter, sent), pipe(ureader, cwriter, received))
    uwriter.close()
    return sent[0], received[0]


def body_length(hmap: dict[str, str]) -> int:
    """A plain-HTTP request's body length: its Content-Length, and no chunked bodies (their end
    is where a pipelined second request, with a Host nobody checked, would begin)."""
    if "transfer-encoding" in hmap:
        raise Denied(411, "pienv forwards plain-HTTP bodies with a Content-Length only (use https)")
    value = hmap.get("content-length", "0")
    if not value.isdigit():
        raise Denied(400, f"bad Content-Length {value[:40]!r}")
    return int(value)


async def forward_one(
    creader: asyncio.StreamReader,
    cwriter: asyncio.StreamWriter,
    ureader: asyncio.StreamReader,
    uwriter: asyncio.StreamWriter,
    length: int,
) -> tuple[int, int]:
    """One plain-HTTP request's body, then only the answer: whatever the agent sends after it
    (a second request on a kept-alive connection) never reaches the upstream."""
    left = length
    while left:
        data = await creader.read(min(left, 65536))
        if not data:
            break
        left -= len(data)
        uwriter.write(data)
        await uwriter.drain()
    received = [0]
    await pipe(ureader, cwriter, received)
    uwriter.close()
    return length - left, received[0]


def refuse(writer: asyncio.StreamWriter, status: int, reason: str, extra: str = "") -> None:
    # The reason phrase carries the message too: clients print it for a refused CONNECT
    # (pip: "Tunnel connection failed: 403 ..."), where they never show a body.
    phrase = re.sub(r"[\r\n]+", " ", reason)[:300]
    body = (reason + "\n").encode()
    writer.write(
        (
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nX-Pienv-Egress: denied\r\n{extra}"
            "Connection: close\r\n\r\n"
        ).encode()
        + body
    )


def deny_reason(run: Run, host: str, port: int, why: str) -> str:
    branch = f"branch {run.branch}" if run.branch else "this branch"
    return (
        f"pienv refused {host}:{port} ({why} of {branch}); allow it with: {allow_hint(host, port)}"
    )


async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
    conn = next(_ids)
    run: Run | None = None
    host, port = "", 0
    try:
        line, headers = await read_head(creader)
        method, target, version = ([*line.split(" "), "", "", ""])[:3]
        hmap = {k.lower(): v for k, v in headers}
        if target.startswith("http://") and "/_pienv/" in target:
            own, _, rest = target[7:].partition("/")
            if is_ip(split_target(own, 80)[0]) and split_target(own, 80)[1] == PORT:
                target = "/" + rest
        if target.startswith("/_pienv/"):
            await inject(conn, method, target, version, headers, creader, cwriter)
            return
        run = await find_run(token_of(hmap))
        if run is None:
            refuse(
                cwriter,
                407,
                "no pienv run credentials: the proxy serves only the runs pienv starts "
                "(HTTP_PROXY/HTTPS_PROXY as pienv set them)",
                'Proxy-Authenticate: Basic realm="pienv"\r\n',
            )
            return
        if method == "CONNECT":
            host, port = split_target(target, 443)
        elif target.startswith("http://"):
            host, port = split_target(target[7:].split("/", 1)[0], 80)
            length = body_length(hmap)
        else:
            raise Denied(400, f"not a proxy request: {method} {target[:100]}")
        why = (
            "a direct IP address is not a host name"
            if is_ip(host)
            and not any(rule_matches(r, host, port) for r in run.policy.get("allow", ()))
            else allowed(run.policy, host, port)
        )
        if why is not None:
            run.audit(id=conn, event="deny", host=host, port=port, why=why)
            refuse(cwriter, 403, deny_reason(run, host, port, why))
            return
        run.audit(id=conn, event="open", host=host, port=port, method=method)
        exact = run.policy.get("mode") == "allow-list" and any(
            not r.startswith("*.") and rule_matches(r, host, port)
            for r in run.policy.get("allow", ())
        )
        ureader, uwriter = await open_upstream(host, port, exact=exact)
        if method == "CONNECT":
            cwriter.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            sent, received = await splice(creader, cwriter, ureader, uwriter)
        else:
            uwriter.write(origin_request(method, target, version, headers, host))
            sent, received = await forward_one(creader, cwriter, ureader, uwriter, length)
        run.audit(id=conn, event="close", host=host, port=port, sent=sent, received=received)
    except Denied as exc:
        if run is not None and host:
            run.audit(id=conn, event="error", host=host, port=port, why=exc.reason)
        refuse(cwriter, exc.status, exc.reason)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        try:
            await cwriter.drain()
            cwriter.close()
        except OSError:
            pass


HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive", "te", "upgrade"}


def origin_request(
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str]],
    host: str,
    *,
    path: str | None = None,
    drop: frozenset[str] = frozenset(),
    add: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The request as the origin server takes it: origin-form path, no proxy headers, and
    ``Connection: close`` (one request per connection, so a second request on a kept-alive
    connection cannot go to a host nobody checked)."""
    if path is None:
        rest = target.split("://", 1)[-1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    out = [f"{method} {path} {version or 'HTTP/1.1'}"]
    for name, value in headers:
        low = name.lower()
        if low in HOP or low in drop or low == "host":
            continue
        out.append(f"{name}: {value}")
    out += [f"Host: {host}"] + [f"{n}: {v}" for n, v in add] + ["Connection: close", "", ""]
    return "\r\n".join(out).encode("latin-1")


async def inject(
    conn: str,
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str]],
    creader: asyncio.StreamReader,
    cwriter: asyncio.StreamWriter,
) -> None:
    """``/_pienv/TOKEN/ROUTE/rest``: forward to the route's upstream over TLS with its key."""
    parts = target.split("/", 4)
    token, route = (parts[2], parts[3]) if len(parts) >= 4 else ("", "")
    run = await find_run(token)
    if run is None or route not in run.routes:
        refuse(cwriter, 404, "no such pienv route")
        return
    spec = run.routes[route]
    upstream = spec["upstream"].rstrip("/")
    host, port = split_target(upstream.split("://", 1)[1].split("/", 1)[0], 443)
    why = allowed(run.policy, host, port)
    if why is not None:
        run.audit(id=conn, event="deny", host=host, port=port, why=why, route=route)
        refuse(cwriter, 403, deny_reason(run, host, port, why))
        return
    base_path = (
        "/" + upstream.split("://", 1)[1].split("/", 1)[1] if upstream.count("/") > 2 else ""
    )
    path = base_path + "/" + (parts[4] if len(parts) > 4 else "")
    key_header = spec["header"]
    value = spec.get("prefix", "") + spec["key"]
    run.audit(id=conn, event="open", host=host, port=port, method=method, route=route)
    ureader, uwriter = await open_upstream(host, port, tls=True)
    uwriter.write(
        origin_request(
            method,
            target,
            version,
            headers,
            host,
            path=path,
            # Whatever credential the agent sent (its placeholder) is replaced, never forwarded.
            drop=frozenset({key_header.lower(), "authorization", "x-api-key", "x-goog-api-key"}),
            add=((key_header, value),),
        )
    )
    sent, received = await splice(creader, cwriter, ureader, uwriter)
    run.audit(id=conn, event="close", host=host, port=port, sent=sent, received=received)


class Dns(asyncio.DatagramProtocol):
    """Answers every query REFUSED: the agent gets no addresses from DNS at all."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        flags = (
            0x8000 | (data[2] << 8 & 0x7800) | 0x0100 | 0x0080 | 5
        )  # QR, opcode, RD, RA, REFUSED
        question = data[12:]
        self.transport.sendto(
            data[:2] + flags.to_bytes(2, "big") + data[4:6] + b"\0\0\0\0\0\0" + question, addr
        )


async def main() -> None:
    os.makedirs(RUNS, exist_ok=True)
    os.makedirs(AUDIT, exist_ok=True)
    # A replaced proxy's socket is still there: bind a fresh one in its place (the relays
    # connect by path, per connection, so they need no restart).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCKET)
    server = await asyncio.start_unix_server(handle, path=SOCKET)
    # pienv waits for this file (read through the engine's archive API) before it starts a
    # run: a container that is running is not yet a proxy that listens. Named by this
    # container's hostname, as the volume outlives a replaced proxy.
    with open(os.path.join(ROOT, f"ready.{socket.gethostname()}"), "w") as f:
        f.write(str(os.getpid()))
    print(f"pienv-proxy: serving on {SOCKET}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


async def relay(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
    """One connection of the agent, passed to the proxy as it is (fail closed: no proxy, no
    connection)."""
    try:
        ureader, uwriter = await asyncio.open_unix_connection(SOCKET)
    except OSError:
        cwriter.close()
        return
    with contextlib.suppress(OSError):
        await splice(creader, cwriter, ureader, uwriter)
    cwriter.close()


async def relay_main(name: str) -> None:
    server = await asyncio.start_server(relay, host="127.0.0.1", port=PORT, reuse_address=True)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Dns, local_addr=("127.0.0.1", DNS_PORT))
    # pienv waits for this before the slot's first run (see main): in the socket's volume,
    # the one place both the holder and the engine's archive API see. NAME is SLOT.NONCE:
    # a replaced holder's file goes.
    where = os.path.dirname(SOCKET)
    slot = name.rsplit(".", 1)[0]
    for old in os.listdir(where):
        if old.startswith(f"ready.{slot}.") and old != f"ready.{name}":
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(where, old))
    with open(os.path.join(where, f"ready.{name}"), "w") as f:
        f.write(str(os.getpid()))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        asyncio.run(relay_main(sys.argv[2]))
    else:
        asyncio.run(main())
