"""Streams: the attach of a run, the docker CLI for TTY sessions, build output, and the tar
streams of export, import, save and archives. The JSON calls live in client.py.

On the local unix socket the attach goes through pienv's own HTTP (http.py); everywhere else,
and for every tar stream, docker-py's session carries it (``api``: its low-level client).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pienv.engine.http import UnixTransport, frames, pump
from pienv.engine.records import translated
from pienv.errors import EngineError
from pienv.model import full_hex

if TYPE_CHECKING:
    import tarfile

    import docker

    from pienv.engine.dialects import Dialect

Output = Iterator[tuple[bytes | None, bytes | None]]  # (stdout, stderr) chunks


# -- the attach of a run -------------------------------------------------------------------------


def attach_unix(
    http: UnixTransport, cid: str, stdin_fd: int | None, start: Callable[[], None], where: str
) -> Output:
    """Attach to ``cid`` over the unix socket, then ``start`` it; its output until it exits.
    ``stdin_fd`` is copied in until EOF, which half-closes the socket (the engine closes the
    container's stdin, StdinOnce) while the output keeps streaming back."""
    query = urlencode({"stream": 1, "stdout": 1, "stderr": 1, "stdin": int(stdin_fd is not None)})
    with translated(where):
        sock, resp = http.upgrade(f"/containers/{cid}/attach?{query}")
        with sock:
            if stdin_fd is not None:
                import threading

                # A daemon thread: a stdin that never ends must not keep pienv alive.
                threading.Thread(target=pump, args=(stdin_fd, sock), daemon=True).start()
            start()
            # Not a TTY: the stream is multiplexed (see http.frames).
            while (frame := frames(resp)) is not None:
                which, data = frame
                yield (data, None) if which != 2 else (None, data)


def attach_sdk(
    api: docker.APIClient,
    cid: str,
    stdin_fd: int | None,
    where: str,
    unseen: Callable[[str], EngineError | None],
) -> Output:
    """The same through docker-py's session (tcp, TLS, ssh). ``unseen``: the error to raise
    instead when the engine's start error says it could not mount a path of this machine."""
    try:
        with translated(where):
            stream = api.attach(cid, stdout=True, stderr=True, stream=True, logs=False, demux=True)
            if stdin_fd is not None:
                _feed_stdin(api, cid, stdin_fd)
            api.start(cid)
    except EngineError as exc:
        # (EngineError's text is cut at 300 characters: read the engine's own.)
        instead = unseen(str(exc.__cause__ or exc))
        if instead is not None:
            raise instead from exc
        raise
    with translated(where):
        yield from stream


def _feed_stdin(api: docker.APIClient, cid: str, stdin_fd: int) -> None:
    """Over docker-py's session (tcp, TLS, ssh): a second attach, stdin only, made with the
    very connection settings of every other call (TLS material, paramiko's session), fed from
    ``stdin_fd`` by a daemon thread (a stdin that never ends must not keep pienv alive). The
    end of that connection is the end of stdin: the engine closes the container's stdin
    (StdinOnce) while the first attach keeps the output coming. One connection with a
    half-close, as on the unix socket, does not travel everywhere: a TLS socket in Python
    cannot close only its sending side, and proxies (socat) drop a half-closed connection's
    other direction after a moment."""
    import threading

    raw = api.attach_socket(cid, params={"stdin": 1, "stream": 1})
    threading.Thread(target=_feed, args=(stdin_fd, raw), daemon=True).start()


def _feed(fd: int, raw: Any) -> None:
    """Copy ``fd`` into what docker-py's attach_socket returned, then end the sending side
    and wait for the engine to close (closing first, with the engine's last bytes unread,
    sends a reset that may drop input still on its way). ``raw``: a socket's SocketIO
    (tcp), an SSLSocket (TLS), a paramiko Channel (ssh) or docker-py's SSHSocket (its
    ssh-client mode: the ssh subprocess's stdin and stdout are the stream)."""
    import socket

    sock = getattr(raw, "_sock", raw)  # SocketIO -> its socket
    proc = getattr(sock, "proc", None)
    with contextlib.suppress(OSError, EOFError):
        sock.settimeout(None)  # stdin may take its time: a person typing
        while data := os.read(fd, 65536):
            sock.sendall(data)
    with contextlib.suppress(OSError, EOFError, ValueError):
        if proc is not None:
            proc.stdin.close()
            proc.stdout.read()
        elif hasattr(sock, "shutdown_write"):  # paramiko: EOF on the channel
            sock.shutdown_write()
            while sock.recv(65536):
                pass
        else:
            # The base class's shutdown: SSLSocket's own would drop its TLS state. A TCP
            # FIN without TLS's close_notify reads as a clean EOF to Go's TLS server.
            socket.socket.shutdown(sock, socket.SHUT_WR)
            while sock.recv(65536):
                pass
    # The stream is done either way; a close that fails (a transport already torn down)
    # has nothing left to lose.
    with contextlib.suppress(OSError, EOFError, ValueError):
        sock.close()


def attach_interactive(cli_host: str, cid: str, detach_keys: str) -> int:
    """Start and attach through the docker CLI (raw TTY, resize, signals): its exit code."""
    import subprocess  # here, not at the top: ~4 ms off every run's start

    env = dict(os.environ)
    env["DOCKER_HOST"] = cli_host
    try:
        proc = subprocess.run(
            ["docker", "start", "--attach", "--interactive", f"--detach-keys={detach_keys}", cid],
            env=env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise EngineError(
            "the docker CLI is needed for interactive sessions and was not found",
            hint="install the docker client, or run with stdin not a terminal",
        ) from exc
    return proc.returncode


# -- build output ----------------------------------------------------------------------------


def read_build(
    stream: Iterator[dict[str, Any]],
    dialect: Dialect,
    on_line: Callable[[str], None] | None,
    remove_image: Callable[[str], object],
) -> str | None:
    """Follow a build's decoded output: the built image's id if the engine named it (else
    None). A failed build removes the images of the steps it ran (not cache hits, not FROM)
    and raises EngineError."""
    image_id = None
    made: list[str] = []
    ran = False
    for chunk in stream:
        if "error" in chunk:
            for made_id in reversed(made):  # a failed build leaves nothing behind
                with contextlib.suppress(EngineError):
                    remove_image(made_id)
            raise EngineError(f"base build failed: {chunk['error'].strip()}")
        if "stream" in chunk:
            chunk["stream"] = dialect.build_line(str(chunk["stream"]))
        line = str(chunk.get("stream", "")).strip()
        if line.startswith("---> Running in "):
            ran = True
        elif line.startswith("---> ") and " " not in line[5:]:
            if ran:
                made.append(line[5:])
            ran = False
        elif (runs := dialect.build_step_runs(line)) is not None:
            ran = runs
        elif line.startswith("---> Using cache"):
            ran = False
        if "stream" in chunk and on_line:
            on_line(chunk["stream"].rstrip())
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = str(aux["ID"])
    return image_id


# -- tar streams -----------------------------------------------------------------------------


def export(api: docker.APIClient, cid: str, where: str) -> Iterator[bytes]:
    """The container's whole filesystem as a tar, streamed in 1 MiB chunks."""
    with translated(where):
        yield from api.export(cid, chunk_size=1 << 20)


def import_export(
    api: docker.APIClient, cid: str, where: str, on_bytes: Callable[[int], None] | None
) -> str:
    """Stream container ``cid``'s whole filesystem into a new one-layer image (no config)."""

    def counted() -> Iterator[bytes]:
        for chunk in export(api, cid, where):
            if on_bytes:
                on_bytes(len(chunk))
            yield chunk

    with translated(where):
        result = api.import_image_from_data(counted())
    return _imported_id(result)


def _imported_id(result: Any) -> str:
    text = result if isinstance(result, str) else str(result)
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if "status" in data and str(data["status"]).startswith("sha256:"):
                return full_hex(data["status"].strip())
            if "error" in data:
                raise EngineError(f"Docker import failed: {data['error']}")
    raise EngineError(f"Docker import returned no image id: {text[:200]}")


def image_layers(api: docker.APIClient, ref: str, where: str) -> list[list[tarfile.TarInfo]]:
    """The entries (headers only) of each layer of image ``ref``, base first, read from the
    engine's image export (`docker save`): see Engine.image_layers."""
    import tarfile

    found: dict[str, list[tarfile.TarInfo]] = {}
    links: dict[str, str] = {}
    manifest: Any = None
    with translated(where):
        chunks = api.get_image(ref, chunk_size=1 << 20)
        # Plain read mode on a forward-only file: members' content is skipped, not read.
        with tarfile.open(fileobj=ChunkReader(chunks), mode="r:") as outer:  # type: ignore[call-overload]
            for member in outer:
                if member.issym() or member.islnk():
                    # A layer identical to an earlier one (same content, same times) is
                    # written once; later copies link to it ("../ID/layer.tar").
                    where_ = os.path.dirname(member.name) if member.issym() else ""
                    links[member.name] = os.path.normpath(os.path.join(where_, member.linkname))
                    continue
                fh = outer.extractfile(member) if member.isfile() else None
                if fh is None:
                    continue
                if member.name == "manifest.json":
                    manifest = json.loads(fh.read())
                elif not member.name.endswith(("json", "VERSION", "repositories")):
                    # Docker 20.10 names layers DIR/layer.tar, Podman and OCI layouts by
                    # digest: whatever the manifest names, read as a tar.
                    with (
                        contextlib.suppress(tarfile.ReadError),
                        tarfile.open(fileobj=fh, mode="r:") as inner,
                    ):
                        found[member.name] = list(inner)
    try:
        names = [str(name) for name in manifest[0]["Layers"]]
        return [found[links.get(name, name)] for name in names]
    except (TypeError, LookupError) as exc:
        raise EngineError(f"the engine's export of image {ref[:12]} holds no layers") from exc


# -- registry transfer -----------------------------------------------------------------------


def push(
    api: docker.APIClient,
    name: str,
    tag: str,
    auth: Mapping[str, str] | None,
    on_event: Callable[[Mapping[str, Any]], None] | None,
    where: str,
) -> str:
    """Push the image tagged ``name:tag``; the manifest digest the registry stored, as the
    engine reported it ("" if it did not: Podman's stream may name none)."""
    digest = ""
    with translated(where):
        stream = api.push(
            name, tag=tag, stream=True, decode=True, auth_config=dict(auth or {}) or None
        )
        for event in stream:
            digest = _transfer_event(event, on_event) or digest
    return digest


def pull(
    api: docker.APIClient,
    reference: str,
    auth: Mapping[str, str] | None,
    on_event: Callable[[Mapping[str, Any]], None] | None,
    where: str,
) -> None:
    """Pull ``reference`` (NAME@DIGEST or NAME:TAG); its errors raised."""
    with translated(where):
        stream = api.pull(reference, stream=True, decode=True, auth_config=dict(auth or {}) or None)
        for event in stream:
            _transfer_event(event, on_event)


def _transfer_event(event: Any, on_event: Callable[[Mapping[str, Any]], None] | None) -> str | None:
    """One line of a push/pull stream: raise its error; the pushed digest if it names one."""
    if not isinstance(event, dict):
        return None
    if event.get("error") or event.get("errorDetail"):
        message = str(event.get("error") or event["errorDetail"].get("message", ""))
        raise EngineError(f"registry transfer failed: {message[:300]}")
    if on_event is not None:
        on_event(event)
    aux = event.get("aux")
    if isinstance(aux, dict) and aux.get("Digest"):
        return str(aux["Digest"])
    status = str(event.get("status", ""))
    found = re.search(r"digest: (sha256:[0-9a-f]{64})", status)
    return found.group(1) if found else None


def overlay_dirs(data: Mapping[str, Any]) -> list[str] | None:
    """The layer directories an image's inspect data names (overlay drivers), base first, if
    this process can read them all; else None."""
    driver = data.get("GraphDriver") or {}
    if driver.get("Name") != "overlay2" and driver.get("Name") != "overlay":
        return None
    dirs = driver.get("Data") or {}
    lower = [d for d in str(dirs.get("LowerDir") or "").split(":") if d]
    found = [*reversed(lower), *([str(dirs["UpperDir"])] if dirs.get("UpperDir") else [])]
    if not found or not all(os.access(d, os.R_OK | os.X_OK) for d in found):
        return None
    return found


def saved_layers(
    api: docker.APIClient, refs: list[str], want: Callable[[str, int], bool], where: str
) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, bytes | None]]]]:
    """Images ``refs`` read from one engine export: see Engine.saved_layers."""
    import tarfile

    order: dict[str, list[str]] = {}
    layers: dict[str, list[tuple[str, bytes | None]]] = {}
    links: dict[str, str] = {}
    with translated(where):
        # /images/get?names=A&names=B: several images in one tar, each layer once.
        res = api.get(
            f"{api.base_url}/v{api.api_version}/images/get", params={"names": refs}, stream=True
        )
        if res.status_code >= 400:
            raise EngineError(f"the engine refused to export images: {res.text[:200]}")
        chunks = res.iter_content(1 << 20)
        with tarfile.open(fileobj=ChunkReader(chunks), mode="r:") as outer:  # type: ignore[call-overload]
            for member in outer:
                if member.issym() or member.islnk():
                    where_ = os.path.dirname(member.name) if member.issym() else ""
                    links[member.name] = os.path.normpath(os.path.join(where_, member.linkname))
                    continue
                fh = outer.extractfile(member) if member.isfile() else None
                if fh is None:
                    continue
                if member.name == "manifest.json":
                    for entry in json.loads(fh.read()):
                        key = os.path.basename(str(entry["Config"])).removesuffix(".json")
                        order[key.removeprefix("sha256:")] = [str(x) for x in entry["Layers"]]
                elif not member.name.endswith(("json", "VERSION", "repositories")):
                    layers[member.name] = _layer_files(fh, want)
    resolved = {k: [links.get(x, x) for x in v] for k, v in order.items()}
    return resolved, layers


def _layer_files(fh: Any, want: Callable[[str, int], bool]) -> list[tuple[str, bytes | None]]:
    import tarfile

    out: list[tuple[str, bytes | None]] = []
    with contextlib.suppress(tarfile.ReadError), tarfile.open(fileobj=fh, mode="r:") as inner:
        for m in inner:
            if not m.isfile() or not m.size:
                continue  # directories, links, deletion markers: no content to leak
            path = "/" + m.name.removeprefix("./").lstrip("/")
            body = None
            if want(path, m.size):
                got = inner.extractfile(m)
                body = got.read() if got else None
            out.append((path, body))
    return out


class ChunkReader:
    """A file over an iterator of byte chunks that reads forward only: it can `seek` ahead,
    so tarfile in plain read mode ("r:") skips a member's content by dropping whole chunks
    instead of reading it 10 kB at a time (stream mode): reading a 500 MB image's headers
    costs the transfer, not seconds of Python. Copies each byte read once."""

    def __init__(self, chunks: Iterator[bytes] | list[bytes]) -> None:
        self._it = iter(chunks)
        self._chunk = b""
        self._pos = 0  # in _chunk
        self._base = 0  # offset of _chunk in the stream

    def _next(self) -> bool:
        try:
            chunk = next(self._it)
        except StopIteration:
            return False
        self._base += len(self._chunk)
        self._chunk, self._pos = chunk, 0
        return True

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:
            if self._pos >= len(self._chunk):
                if not self._next():
                    break
                continue
            end = len(self._chunk) if n < 0 else min(len(self._chunk), self._pos + n)
            parts.append(self._chunk[self._pos : end])
            if n > 0:
                n -= end - self._pos
            self._pos = end
        return b"".join(parts)

    def tell(self) -> int:
        return self._base + self._pos

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.tell() + offset if whence == 1 else -1
        if target < self.tell():
            raise OSError("a forward-only stream cannot seek back or from its end")
        while target > self._base + len(self._chunk):
            if not self._next():
                self._pos = len(self._chunk)
                return self.tell()
        self._pos = target - self._base
        return target
