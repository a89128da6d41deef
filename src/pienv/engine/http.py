"""HTTP/1.1 on a local unix socket: the transport `Engine` uses for JSON calls and the attach
stream there. Imports nothing of docker-py (tests/test_imports.py holds it to that).

Importing docker-py and requests costs about 60 ms per command, a quarter of a no-op
`docker run`, so on a unix socket pienv speaks HTTP itself. Hand-written rather than
`http.client` on purpose: `http.client` accepts a truncated header block as a complete answer,
this reader refuses it (tests/test_engine_http.py holds both the framings Docker's Go server
uses and the failures a real engine shows). Errors are one-line EngineErrors.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

from pienv.errors import EngineError

NO_TIMEOUT = -1.0  # for calls that last as long as the container or the commit does


class HTTPError(EngineError):
    """The engine answered with an error status (404: no such object, 409: conflict)."""

    def __init__(
        self,
        status: int,
        message: str,
        engine: str = "Docker",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{engine}: {message[:300]}")
        self.status = status
        self.headers = dict(headers or {})  # lower-case names


class Response:
    """An HTTP/1.1 response read off a socket: status line, headers, then the body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        line = self._line()
        try:
            self.status = int(line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise EngineError(f"Docker answered {bytes(line[:80])!r}, not HTTP") from None
        self.headers: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                break
            key, _, value = line.decode("latin-1").partition(":")
            self.headers[key.strip().lower()] = value.strip()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise EngineError("Docker closed the connection mid-answer")
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer only at end of stream."""
        while len(self.buf) < n and self._fill():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def body(self) -> bytes:
        if self.status in (204, 304):
            return b""
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while size := int(self._line().split(b";")[0] or b"0", 16):
                    parts.append(self._exactly(size))
                    self._line()
                return b"".join(parts)
            if "content-length" in self.headers:
                return self._exactly(int(self.headers["content-length"]))
        except ValueError:
            raise EngineError("Docker sent a malformed answer") from None
        while self._fill():
            pass
        return self.read(len(self.buf))

    def _exactly(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) < n:
            raise EngineError("Docker closed the connection mid-answer")
        return data


def request_head(
    method: str,
    target: str,
    data: bytes | None,
    upgrade: bool = False,
    content_type: str = "application/json",
) -> bytes:
    # Unversioned paths: the engine answers with its own API version, so pienv neither pays a
    # version round-trip nor breaks when an engine drops an old version (Podman's compat API
    # serves the unversioned paths too).
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: pienv"]
    if data is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(data)}"]
    elif method == "POST":
        lines.append("Content-Length: 0")
    lines += ["Connection: Upgrade", "Upgrade: tcp"] if upgrade else ["Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class UnixTransport:
    """One connection per call to the engine's unix socket at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(None if timeout == NO_TIMEOUT else timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(
        self,
        method: str,
        target: str,
        data: bytes | None,
        timeout: float,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request; ``target``: the path with its query string;
        header names in lower case."""
        with self.connect(timeout) as sock:
            head = request_head(method, target, data, content_type=content_type)
            sock.sendall(head + (data or b""))
            resp = Response(sock)
            # A HEAD answer may announce a Content-Length but never sends the body.
            return resp.status, resp.headers, b"" if method == "HEAD" else resp.body()

    def upgrade(self, target: str) -> tuple[socket.socket, Response]:
        """A POST asking to hijack the connection (attach): the socket and the read answer.
        The caller closes the socket."""
        sock = self.connect(NO_TIMEOUT)
        try:
            sock.sendall(request_head("POST", target, None, upgrade=True))
            resp = Response(sock)
        except BaseException:
            sock.close()
            raise
        if resp.status not in (101, 200):
            try:
                raise HTTPError(resp.status, resp.body().decode(errors="replace").strip())
            finally:
                sock.close()
        return sock, resp


def frames(resp: Response) -> tuple[int, bytes] | None:
    """The next frame of a multiplexed (non-TTY) attach stream: (stream, data), None at end.
    Each frame has an 8-byte header: stream (1 out, 2 err), 0, 0, 0, big-endian size."""
    header = resp.read(8)
    if len(header) < 8:
        return None
    return header[0], resp.read(int.from_bytes(header[4:], "big"))


def pump(fd: int, sock: socket.socket) -> None:
    """Copy ``fd`` into an attach socket; at its end half-close, so the engine closes the
    container's stdin (StdinOnce) while the output keeps streaming back."""
    with contextlib.suppress(OSError):
        while data := os.read(fd, 65536):
            sock.sendall(data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
