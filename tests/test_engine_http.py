"""engine/http.py, the HTTP client the engine uses on a unix socket, against a scripted server
(no engine needed): the framings Docker's Go server uses, and the failures a real engine shows."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from pienv.engine import Engine, HTTPError, ImageInfo
from pienv.errors import EngineError, MaxDepthExceeded


class Server:
    """Answers each connection with the next scripted reply, and keeps what was asked."""

    def __init__(self, path: Path, replies: list[bytes]) -> None:
        self.replies = replies
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for reply in self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by the fixture: a test that asked fewer times
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(h.split(b":")[1])
                        for h in head.split(b"\r\n")
                        if h.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(reply)


Serve = Callable[..., Server]


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    path = tmp_path / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    servers: list[Server] = []

    def start(*replies: bytes) -> Server:
        servers.append(Server(path, list(replies)))
        return servers[-1]

    yield start
    for s in servers:
        s.sock.close()


def reply(status: str, body: bytes, chunked: bool = False) -> bytes:
    if chunked:
        parts = [body[i : i + 7] for i in range(0, len(body), 7)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + framed
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_content_length_chunked_and_eof_bodies(serve: Serve) -> None:
    listing = b'[{"Id": "a", "Labels": {"x": "1"}}, {"Id": "b", "Labels": {"x": "1"}}]'
    server = serve(
        reply("200 OK", listing),
        reply("200 OK", listing, chunked=True),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + listing,
        b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    engine = Engine()
    for _ in range(3):
        assert [c.id for c in engine.containers(["x=1"])] == ["a", "b"]
    engine.remove_container("abc", force=True)
    first = server.requests[0].decode()
    assert first.startswith(
        "GET /containers/json?all=1&filters=%7B%22label%22%3A+%5B%22x%3D1%22%5D%7D "
    )
    assert server.requests[3].startswith(b"DELETE /containers/abc?force=1&v=1 HTTP/1.1\r\n")


def test_request_body_is_json(serve: Serve) -> None:
    # The first call of an engine learns which engine it is (a ping when nothing came yet).
    server = serve(reply("200 OK", b"OK"), reply("201 Created", b'{"Id": "c1"}'))
    cid = Engine().create(
        "img",
        entrypoint=["sh"],
        labels={"k": "v"},
        binds={"/h:x": {"bind": "/c", "mode": "ro"}, "vol": {"bind": "/v", "mode": "rw"}},
    )
    assert cid == "c1"
    assert server.requests[0].startswith(b"GET /_ping HTTP/1.1\r\n")
    body = server.requests[1].partition(b"\r\n\r\n")[2]
    config = json.loads(body)
    assert config["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": "/h:x", "Target": "/c", "ReadOnly": True},
        {"Type": "volume", "Source": "vol", "Target": "/v", "ReadOnly": False},
    ]
    assert config["Cmd"] == []
    assert "UnsetEnvAll" not in config and "Env" not in config


def test_podman_is_told_by_its_headers(serve: Serve) -> None:
    """Podman: the image's Env is passed with UnsetEnvAll (no TERM/container=podman baked into
    commits), a 64-hex id gets "sha256:", and the commit carries its config as `changes`."""
    podman = "HTTP/1.1 {}\r\nLibpod-Api-Version: 4.3.1\r\nServer: Libpod/4.3.1 (linux)\r\n"
    image = json.dumps(
        {"Id": "sha256:" + "a" * 64, "Config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]}}
    ).encode()
    container = json.dumps(
        {"Id": "c1", "Config": {"Env": ["PATH=/bin"], "Entrypoint": ["/w"], "User": "1:1"}}
    ).encode()

    def answer(status: str, body: bytes) -> bytes:
        return podman.format(status).encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body

    server = serve(
        answer("200 OK", b"OK"),
        answer("200 OK", image),
        answer("201 Created", b'{"Id": "c1"}'),
        answer("200 OK", container),
        answer("201 Created", b'{"Id": "sha256:' + b"b" * 64 + b'"}'),
    )
    engine = Engine()
    assert engine.dialect.name == "Podman"
    engine.create("a" * 64, entrypoint=["/w"], user="1:1")
    assert server.requests[1].startswith(b"GET /images/sha256:" + b"a" * 64 + b"/json ")
    config = json.loads(server.requests[2].partition(b"\r\n\r\n")[2])
    assert config["UnsetEnvAll"] is True and config["Env"] == ["PATH=/bin"]
    assert config["Image"] == "sha256:" + "a" * 64
    like = engine_image(image)
    assert engine.commit("c1", like, {"dev.pienv.x": '"$v" \\'}) == "b" * 64
    target = server.requests[4].split(b" ")[1].decode()
    changes = parse_qs(target.split("?")[1])["changes"]
    assert changes == [
        'LABEL dev.pienv.x=""$v" \\"',
        "ENTRYPOINT []",
        'CMD ["sh"]',
    ]


def engine_image(raw: bytes) -> ImageInfo:
    return ImageInfo.from_api(json.loads(raw))


def test_error_statuses(serve: Serve) -> None:
    serve(
        reply("404 Not Found", b'{"message": "No such image: x"}'),
        reply(
            "500 Internal Server Error",
            b'{"message": "write /var/lib/docker/x: no space left on device"}',
        ),
        reply("409 Conflict", b'{"message": "image is being used"}'),
        reply("500 Internal Server Error", b"plain words"),
        reply("500 Internal Server Error", b'{"message": "max depth exceeded"}'),
    )
    engine = Engine()
    assert engine.inspect_image("x") is None
    with pytest.raises(EngineError, match=r"^Docker ran out of disk space: write"):
        engine.commit("c", None, {})
    assert engine.remove_image("x") is False
    with pytest.raises(HTTPError, match=r"^Docker: plain words$") as exc:
        engine.version()
    assert exc.value.status == 500
    with pytest.raises(MaxDepthExceeded, match="refuses a layer past 125"):
        engine.commit("c", None, {})


def test_broken_answers_are_one_line_errors(serve: Serve) -> None:
    serve(
        b"hello there\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    engine = Engine()
    with pytest.raises(EngineError, match="not HTTP"):
        engine.version()
    for _ in range(2):
        with pytest.raises(EngineError, match="closed the connection mid-answer"):
            engine.version()
    with pytest.raises(EngineError, match="malformed"):
        engine.version()


def test_remote_engine_that_cannot_see_the_workspace_says_so(serve: Serve) -> None:
    """A bind source the engine does not have, on a non-local endpoint: the engine runs on
    another machine. One line naming the path, before any container exists."""
    missing = json.dumps(
        {
            "message": 'invalid mount config for type "bind": bind source path does not exist: '
            "/ws/run.env"
        }
    ).encode()
    serve(reply("200 OK", b"OK"), reply("400 Bad Request", missing), reply("200 OK", b"OK"))
    engine = Engine()
    engine.base_url = "tcp://build-box:2376"  # the same transport, named as a remote engine
    binds = {"/ws/run.env": {"bind": "/run/pienv/env", "mode": "ro"}}
    with pytest.raises(EngineError) as exc:
        engine.create("img", entrypoint=["sh"], binds=binds)
    assert str(exc.value).startswith(
        "the engine at tcp://build-box:2376 cannot see /ws/run.env: it runs on another machine"
    )
    assert "\n" not in str(exc.value)


def test_a_remote_engine_missing_any_source_is_said_of_the_workspace(serve: Serve) -> None:
    """Which missing source an engine names is its own choice (rootless Podman's order is
    random): a run container names its workspace, the path the user knows."""
    missing = json.dumps(
        {
            "message": "making volume mountpoint for volume /store/runs/r1/env: mkdir "
            "/store/runs/r1/env: permission denied"
        }
    ).encode()
    serve(reply("200 OK", b"OK"), reply("500 Internal Server Error", missing))
    engine = Engine()
    engine.base_url = "tcp://build-box:2376"
    binds = {
        "/home/me/proj": {"bind": "/workspace", "mode": "rw"},
        "/store/runs/r1/env": {"bind": "/run/pienv/env", "mode": "ro"},
    }
    labels = {"dev.pienv.workspace": "/home/me/proj"}
    with pytest.raises(EngineError) as exc:
        engine.create("img", entrypoint=["sh"], binds=binds, labels=labels)
    assert str(exc.value).startswith(
        "the engine at tcp://build-box:2376 cannot see /home/me/proj: it runs on another machine"
    )
