"""The only module that talks to Docker.

JSON calls (the whole run loop among them) go through one small REST layer, `Engine._call`.
On a local unix socket (the default engine, rootless Docker, a unix DOCKER_HOST or context)
that layer speaks HTTP/1.1 on the socket itself: importing docker-py and requests costs about
60 ms per command, a quarter of a no-op `docker run`. Any other endpoint (tcp, TLS, ssh) goes
through docker-py's own session. The transport itself lives in `enginehttp.py`. Streams that
need more (build contexts, export/import, archives) always use docker-py; TTY sessions use the
docker CLI.

Docker's JSON stays in this module: calls return ids, small typed records (ImageInfo,
ImageRow, ContainerState, ContainerRow, EngineVersion, EngineInfo) or plain lists; failures
become EngineError (HTTPError with a status, MaxDepthExceeded) with a message that says what
to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import quote, urlencode

from pienv.enginehttp import NO_TIMEOUT, HTTPError, UnixTransport, frames, pump
from pienv.errors import EngineError, MaxDepthExceeded
from pienv.model import full_hex

if TYPE_CHECKING:
    import tarfile

    import docker

KIND = {0: "C", 1: "A", 2: "D"}
MAX_DEPTH = 125  # overlay2 refuses to commit past this many layers ("max depth exceeded")
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
_NO_TIMEOUT = NO_TIMEOUT
# Mount points the engine makes for itself (not listed in a container's Mounts): its init
# for Init=true (Docker's tini, Podman's catatonit), and on Podman the files below.
# Podman also makes its /etc/hosts, /etc/hostname, /etc/resolv.conf and /run/.containerenv
# mount points in the container's own layer (Docker keeps them in a layer it never commits),
# so a run that changed nothing shows "C /etc" there.
INIT_MOUNTS = (
    "/sbin/docker-init",
    "/run/podman-init",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run/.containerenv",
)
# What Podman writes into every started container's layer when the image lacks it (made_paths):
# the targets of the files it bind-mounts into every container, and its /etc/mtab link.
PODMAN_MADE = (
    ("/etc/hosts", ""),
    ("/etc/hostname", ""),
    ("/etc/resolv.conf", ""),
    ("/run/.containerenv", ""),
    ("/etc/mtab", "/proc/mounts"),
)
# The DiffID of an empty layer (a tar of two zero blocks). Podman's commit adds one even when
# the container changed nothing (Docker adds no layer then): it holds no content.
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
_PATH_STAT = "x-docker-container-path-stat"  # the archive API's stat of the path asked for
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._/-]*")

__all__ = [
    "ContainerRow",
    "ContainerState",
    "Engine",
    "EngineInfo",
    "EngineVersion",
    "HTTPError",
    "ImageInfo",
    "ImageRow",
    "MaxDepthExceeded",
]


# -- records: what ops get instead of Docker's JSON ---------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """One image, inspected. ``config`` is the engine's own image config: opaque to ops, it
    only travels back into `Engine.commit` (so a commit keeps its parent's config)."""

    id: str  # 64 hex, no "sha256:"
    size: int
    layers: tuple[str, ...]
    labels: Mapping[str, str]
    tags: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # Where an overlay storage driver keeps each layer's files (base first), as the engine
    # reports them: readable only on the engine's own host. Empty for other drivers.
    layer_dirs: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        """Layers in the image: the storage driver refuses a commit past MAX_DEPTH."""
        return len(self.layers)

    @property
    def content_layers(self) -> tuple[str, ...]:
        """The layers that hold files: equal for two images means equal filesystems, on
        Docker and on Podman (whose commit of an unchanged container adds an empty layer)."""
        return tuple(layer for layer in self.layers if layer != EMPTY_LAYER)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ImageInfo:
        config = dict(data.get("Config") or {})
        return cls(
            id=full_hex(str(data["Id"])),
            size=int(data.get("Size") or 0),
            layers=tuple((data.get("RootFS") or {}).get("Layers") or ()),
            labels=dict(config.get("Labels") or {}),
            tags=_familiar(data.get("RepoTags")),
            config=config,
            layer_dirs=_layer_dirs(data.get("GraphDriver") or {}),
        )


def _layer_dirs(driver: Mapping[str, Any]) -> tuple[str, ...]:
    """overlay2 (Docker) / overlay (Podman): LowerDir lists the lower layers top first,
    UpperDir is the top layer."""
    if driver.get("Name") not in ("overlay2", "overlay"):
        return ()
    data = driver.get("Data") or {}
    upper = str(data.get("UpperDir") or "")
    lower = [d for d in str(data.get("LowerDir") or "").split(":") if d]
    return (*reversed(lower), upper) if upper else ()


@dataclass(frozen=True)
class ImageRow:
    """One image of a listing (no layers, no config: listings are cheap)."""

    id: str
    labels: Mapping[str, str]
    tags: tuple[str, ...]
    size: int

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> ImageRow:
        return cls(
            id=full_hex(str(row["Id"])),
            labels=dict(row.get("Labels") or {}),
            tags=_familiar(row.get("RepoTags")),
            size=int(row.get("Size") or 0),
        )


# A container's State in a listing, as the engine names it ("" if it named none we know).
ContainerStatus = Literal[
    "", "created", "running", "paused", "restarting", "removing", "exited", "dead"
]


def _status(value: object) -> ContainerStatus:
    for known in get_args(ContainerStatus):
        if value == known:
            return known  # type: ignore[no-any-return]  # get_args is untyped
    return ""


@dataclass(frozen=True)
class ContainerRow:
    """One container of a listing."""

    id: str
    name: str
    state: ContainerStatus
    labels: Mapping[str, str]
    image_id: str  # 64 hex ("" if the engine did not say)

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> ContainerRow:
        image = str(row.get("ImageID") or "")
        return cls(
            id=str(row["Id"]),
            name=str((row.get("Names") or ["?"])[0]).lstrip("/"),
            state=_status(row.get("State")),
            labels=dict(row.get("Labels") or {}),
            image_id=full_hex(image) if image else "",
        )


@dataclass(frozen=True)
class ContainerState:
    """One container, inspected."""

    id: str
    name: str
    status: str  # created | running | exited | ...
    exit_code: int
    mounts: tuple[str, ...]  # the container paths of its mounts
    labels: Mapping[str, str]
    image_id: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> ContainerState:
        state = data.get("State") or {}
        return cls(
            id=str(data["Id"]),
            name=str(data.get("Name") or "").lstrip("/"),
            status=str(state.get("Status") or ""),
            exit_code=int(state.get("ExitCode") or 0),
            mounts=tuple(str(m["Destination"]) for m in data.get("Mounts") or ()),
            labels=dict((data.get("Config") or {}).get("Labels") or {}),
            image_id=full_hex(str(data.get("Image") or "")),
        )


@dataclass(frozen=True)
class EngineVersion:
    product: str  # "Docker Engine" | "Podman"
    version: str
    api_version: str  # the Docker API version it speaks (Podman: its compat version)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> EngineVersion:
        names = [str(c.get("Name", "")) for c in data.get("Components") or ()]
        podman = any("podman" in n.lower() for n in names)
        return cls(
            product="Podman" if podman else "Docker Engine",
            version=str(data.get("Version") or "?"),
            api_version=str(data.get("ApiVersion") or "?"),
        )

    def __str__(self) -> str:
        return f"{self.product} {self.version} (API {self.api_version})"


@dataclass(frozen=True)
class EngineInfo:
    driver: str  # storage driver
    root_dir: str  # where the engine keeps images (on the engine's machine)
    rootless: bool
    host: str  # the engine machine's host name
    engine_id: str
    init_binary: str  # Docker: "docker-init"; Podman says nothing here

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> EngineInfo:
        security = [str(o) for o in data.get("SecurityOptions") or ()]
        return cls(
            driver=str(data.get("Driver") or "?"),
            root_dir=str(data.get("DockerRootDir") or "/var/lib/docker"),
            # Docker says so in its security options; Podman's compat API has a field.
            rootless=bool(data.get("Rootless")) or any("name=rootless" in o for o in security),
            host=str(data.get("Name") or ""),
            engine_id=str(data.get("ID") or ""),
            init_binary=str(data.get("InitBinary") or ""),
        )


def _translate(exc: BaseException, where: str) -> EngineError:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, PermissionError) or "permission denied" in low:
        return EngineError(
            "permission denied on the Docker socket",
            hint="add your user to the `docker` group (then log in again) or use a rootless "
            "Docker context",
        )
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)) or any(
        s in low
        for s in (
            "connection refused",
            "no such file",
            "connection aborted",
            "error while fetching",
        )
    ):
        return EngineError(
            f"Docker is not running (cannot reach the engine at {where})",
            hint="start it, e.g. `sudo systemctl start docker`, or set DOCKER_HOST",
        )
    if "no space left on device" in low:
        return EngineError(f"Docker ran out of disk space: {text.splitlines()[0][:200]}")
    first = text.splitlines()[0] if text else exc.__class__.__name__
    return EngineError(f"Docker: {first[:300]}")


@contextlib.contextmanager
def translated(where: str = DEFAULT_SOCKET) -> Iterator[None]:
    """docker-py's and the socket's exceptions as EngineError; ``where``: the endpoint."""
    try:
        yield
    except EngineError:
        raise
    except Exception as exc:
        # docker-py's APIError is an OSError too (via requests' HTTPError): look at it first.
        if isinstance(exc, OSError) and "docker.errors" not in sys.modules:
            raise _translate(exc, where) from exc
        import docker.errors
        import requests.exceptions

        if isinstance(exc, OSError) and not isinstance(exc, docker.errors.APIError):
            raise _translate(exc, where) from exc
        if isinstance(exc, docker.errors.NotFound):
            raise HTTPError(404, str(exc.explanation or exc)) from exc
        if isinstance(exc, docker.errors.APIError):
            status = exc.status_code or 500
            if "no space left on device" in str(exc).lower():
                raise _translate(exc, where) from exc
            raise HTTPError(status, str(exc.explanation or exc)) from exc
        if isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException)):
            raise _translate(exc, where) from exc
        raise


def endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The engine Docker's own CLI would use: DOCKER_HOST, else the current context's host."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST")
    if host:
        return host
    config_dir = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = env.get("DOCKER_CONTEXT")
    if not name:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
    if not name or name == "default":
        return DEFAULT_SOCKET
    import hashlib

    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    try:
        data = json.loads((meta / "meta.json").read_text())
        return str(data["Endpoints"]["docker"]["Host"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"Docker context {name!r} is not readable",
            hint="`docker context ls` lists them; `docker context use default` resets",
        ) from exc


class Engine:
    """A connection to one Docker engine (DOCKER_HOST or the current Docker context)."""

    def __init__(self, timeout: int = 300, *, sdk: bool = False) -> None:
        self.timeout = timeout
        self.base_url = endpoint()
        self._cli_host = self.base_url
        local = self.base_url.startswith("unix://") and not os.environ.get("DOCKER_TLS_VERIFY")
        # None: every call goes through docker-py (tcp, TLS and ssh endpoints, or sdk=True).
        self._socket = self.base_url[len("unix://") :] if local and not sdk else None
        self._http = UnixTransport(self._socket) if self._socket is not None else None
        self._client: docker.DockerClient | None = None
        self._podman: bool | None = None
        self._rootless: bool | None = None

    @property
    def api(self) -> docker.APIClient:
        """docker-py's low-level client, made on first use (it costs ~60 ms of imports)."""
        if self._client is None:
            import docker

            # requests lets these variables replace a session's CA (psf/requests#3829), so
            # with TLS the engine's own CA (DOCKER_CERT_PATH/ca.pem) would be ignored: hide
            # them while the client is made (it asks the engine's version), then stop the
            # session from reading them.
            tls = bool(os.environ.get("DOCKER_TLS_VERIFY"))
            hidden = {k: os.environ.pop(k) for k in _CA_VARIABLES if tls and k in os.environ}
            try:
                with translated(self.base_url):
                    if self.base_url == os.environ.get("DOCKER_HOST"):
                        # from_env also honours DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
                        self._client = docker.from_env(timeout=self.timeout)
                    else:
                        self._client = docker.DockerClient(
                            base_url=self.base_url, timeout=self.timeout
                        )
            finally:
                os.environ.update(hidden)
            if hidden:
                self._client.api.trust_env = False
        return self._client.api

    # -- the REST layer --------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call; the decoded JSON answer (None when empty). Errors: HTTPError."""
        raw = self._request(method, path, query, body, timeout)
        return json.loads(raw) if raw.strip() else None

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> bytes:
        """One API call; the raw answer. Query values that are lists repeat the parameter."""
        data = None if body is None else json.dumps(body).encode()
        limit = self.timeout if timeout is None else timeout
        with translated(self.base_url):
            if self._http is not None:
                target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
                status, headers, raw = self._http.request(method, target, data, limit)
            else:
                api = self.api
                r = api.request(
                    method,
                    f"{api.base_url}/v{api.api_version}{path}",
                    params=dict(query or {}),
                    data=data,
                    headers={"Content-Type": "application/json"} if data else None,
                    timeout=None if limit == _NO_TIMEOUT else limit,
                )
                status, raw = r.status_code, r.content
                headers = {k.lower(): v for k, v in r.headers.items()}
        if self._podman is None:
            # Free with any answer: Podman's compat API names itself in its headers.
            server = headers.get("server", "")
            self._podman = "libpod-api-version" in headers or server.startswith("Libpod")
        if status >= 400:
            try:
                message = str(json.loads(raw)["message"])
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or f"HTTP {status}"
            if "no space left on device" in message.lower():
                raise EngineError(f"Docker ran out of disk space: {message[:200]}")
            raise HTTPError(status, message, "Podman" if self._podman else "Docker", headers)
        return raw

    # -- the one capability check ----------------------------------------------------------

    @property
    def is_podman(self) -> bool:
        """Whether this is Podman's Docker-compatible API. Everything that differs on Podman
        hangs off this one check (docs/engines.md lists what and why):

        - create: Podman adds its own variables (TERM, container=podman) to every container
          and commits them into the image; pienv asks it to add none (UnsetEnvAll) and passes
          the image's own Env, which is what Docker uses.
        - commit: Podman ignores the config in the commit body; pienv sends the same config
          as `changes` instructions, values quoted so they arrive verbatim (_podman_changes).
        - image references that are 64 hex digits are refused: `_ref` adds "sha256:".
        - its commit of an unchanged container adds an empty layer (ImageInfo.content_layers).
        - it writes its bind targets and /etc/mtab into a run's own layer (made_paths), and
          its archive API answers 404 for a dangling symlink (path_exists).
        """
        if self._podman is None:
            self._request("GET", "/_ping")
        return bool(self._podman)

    @property
    def local(self) -> bool:
        """Whether the engine runs on this machine (reached on a unix socket): only then are
        paths it names (its root dir) paths here."""
        return self.base_url.startswith("unix://")

    @property
    def rootless(self) -> bool:
        """Whether the engine runs as a non-root user. On a local socket its owner says so
        for free (a rootless engine cannot make a root-owned socket; /info costs ~0.6 s on
        rootless Podman); elsewhere /info, asked once."""
        if self._rootless is None:
            owner = None
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    owner = os.stat(self._socket).st_uid
            self._rootless = owner != 0 if owner is not None else self.info().rootless
        return self._rootless

    @staticmethod
    def _ref(ref: str) -> str:
        # A bare 64-hex id reads as an image name to Podman ("cannot specify 64-byte
        # hexadecimal strings"); both engines take the "sha256:" form.
        return "sha256:" + ref if _HEX64.fullmatch(ref) else ref

    @classmethod
    def _id(cls, ref: str) -> str:
        return quote(cls._ref(ref), safe="/:@")

    # -- engine ----------------------------------------------------------------------------

    def version(self) -> EngineVersion:
        return EngineVersion.from_api(self._call("GET", "/version"))

    def info(self) -> EngineInfo:
        return EngineInfo.from_api(self._call("GET", "/info"))

    def describe(self) -> str:
        """One truthful line: product, version, API, storage driver, rootless, endpoint."""
        version, info = self.version(), self.info()
        mode = "rootless" if info.rootless else "rootful"
        return f"{version}, {info.driver}, {mode}, at {self.base_url}"

    def probe(self, image: str) -> list[tuple[str, str]]:
        """What pienv needs of an engine, tried for real on ``image`` (for `pienv doctor`):
        [(check, "" when it works, else what failed)]. Leaves nothing behind."""
        out: list[tuple[str, str]] = []
        labels = {"dev.pienv.probe": 'a "quoted" $value \\ ', "dev.pienv.probe-empty": ""}
        cid = new = ""
        try:
            cid = self.create(
                image,
                entrypoint=["/bin/sh", "-c", "echo ok > /probe"],
                labels={"dev.pienv.probe": "run"},
            )
            for _ in self.run_streaming(cid):
                pass
            code = self.wait(cid)
            out.append(("init binary", "" if code == 0 else f"the probe exited {code}"))
        except EngineError as exc:
            out.append(("init binary", str(exc)))
            return out
        try:
            like = self.inspect_image(image)
            new = self.commit(cid, like, labels)
            got = self.inspect_image(new)
            lost = {k: v for k, v in labels.items() if not got or got.labels.get(k) != v}
            out.append(("commit labels", f"labels changed on the way: {lost}" if lost else ""))
            data = self.read_archive(cid, "/probe")
            out.append(("archive API", "" if data else "GET /containers/{id}/archive gave nothing"))
        except EngineError as exc:
            out.append(("commit labels" if not new else "archive API", str(exc)))
        finally:
            self.remove_container(cid, force=True)
            if new:
                self.remove_image(new)
        return out

    # -- images ----------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> ImageInfo | None:
        try:
            return ImageInfo.from_api(self._call("GET", f"/images/{self._id(ref)}/json"))
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def images(self, label_filters: list[str]) -> list[ImageRow]:
        # /images/json, not docker-py's images.list(), which inspects every image (7x slower).
        # Podman 4.3 answers nothing when given two label filters: it gets the first, the
        # rest are checked here (on every engine: the same rule everywhere).
        sent = label_filters[:1] if self.is_podman else label_filters
        rows = self._call("GET", "/images/json", _filters(label=sent)) or []
        return [r for r in map(ImageRow.from_api, rows) if _has_labels(r.labels, label_filters)]

    def images_in(self, repository: str) -> list[ImageRow]:
        """Images tagged ``repository:*`` (a store's commits fetched from another store keep
        that store's labels, but carry this store's tags)."""
        rows = self._call("GET", "/images/json", _filters(reference=[f"{repository}:*"])) or []
        return list(map(ImageRow.from_api, rows))

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        self._call("POST", f"/images/{self._id(image_id)}/tag", {"repo": repository, "tag": tag})

    def untag(self, ref: str) -> None:
        with contextlib.suppress(HTTPError):
            self._call("DELETE", f"/images/{self._id(ref)}", {"noprune": "0"})

    def remove_image(self, image_id: str) -> bool:
        """Remove an image; False if a container or child still needs it."""
        try:
            self._call("DELETE", f"/images/{self._id(image_id)}", {"force": "0", "noprune": "0"})
        except HTTPError as exc:
            if exc.status == 404:
                return True
            if exc.status == 409:
                return False
            raise
        return True

    def build(
        self,
        context: Path,
        tag: str,
        buildargs: dict[str, str],
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        with translated(self.base_url):
            # forcerm: the container of a failed step goes too (rm only cleans on success).
            stream = self.api.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs,
                rm=True,
                forcerm=True,
                decode=True,
            )
            image_id = None
            made: list[str] = []  # images of steps this build ran (not cache hits, not FROM)
            ran = False
            for chunk in stream:
                if "error" in chunk:
                    for made_id in reversed(made):  # a failed build leaves nothing behind
                        with contextlib.suppress(EngineError, HTTPError):
                            self.remove_image(made_id)
                    raise EngineError(f"base build failed: {chunk['error'].strip()}")
                if "stream" in chunk and self.is_podman:
                    chunk["stream"] = _docker_build_line(str(chunk["stream"]))
                line = str(chunk.get("stream", "")).strip()
                if line.startswith("---> Running in "):
                    ran = True
                elif line.startswith("---> ") and " " not in line[5:]:
                    if ran:
                        made.append(line[5:])
                    ran = False
                elif self.is_podman and line.startswith("Step "):
                    # Podman names no step container: every step but FROM makes an image,
                    # unless it says "Using cache" before its id.
                    ran = not line.partition(" : ")[2].upper().startswith("FROM ")
                elif line.startswith("---> Using cache"):
                    ran = False
                if "stream" in chunk and on_line:
                    on_line(chunk["stream"].rstrip())
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = aux["ID"]
            if image_id is None:
                info = self.inspect_image(tag)
                if info is None:
                    raise EngineError("base build produced no image")
                image_id = info.id
        return full_hex(image_id)

    # -- containers ------------------------------------------------------------------------

    def create(
        self,
        image: str,
        *,
        entrypoint: list[str],
        user: str = "",
        workdir: str = "",
        binds: Mapping[str, Mapping[str, str]] | None = None,
        labels: dict[str, str] | None = None,
        tty: bool = False,
        stdin: bool = False,
        network: str = "bridge",
        hostname: str | None = None,
        name: str | None = None,
        dns: tuple[str, ...] = (),
        cap_drop: tuple[str, ...] = (),
    ) -> str:
        if self.is_podman:
            for host in binds or {}:
                if "," in host:
                    # Podman 4.3 turns Mounts back into "a,b=c" option text and fails.
                    raise EngineError(
                        f"Podman cannot mount {host}: its path holds a ','",
                        hint="rename or move the directory, or use Docker",
                    )
        config: dict[str, Any] = {
            "Image": self._ref(image),
            "Entrypoint": entrypoint,
            # An explicit empty Cmd: the image's Cmd must not be appended to our argv.
            "Cmd": [],
            "Labels": labels or {},
            "Tty": tty,
            "OpenStdin": stdin,
            "StdinOnce": stdin,
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": {
                # The Mounts form, not "Binds" strings: a host path may hold ':' or ',', and
                # a missing source is an error instead of a root-owned directory on the host.
                # A source that is not an absolute path is a named volume, as in "Binds".
                "Mounts": [
                    {
                        "Type": "bind" if host.startswith("/") else "volume",
                        "Source": host,
                        "Target": b["bind"],
                        "ReadOnly": b["mode"] == "ro",
                    }
                    for host, b in (binds or {}).items()
                ],
                "NetworkMode": network,
                "Init": True,
                "Privileged": False,
            },
        }
        if user:
            config["User"] = user
        if workdir:
            config["WorkingDir"] = workdir
        if hostname:
            config["Hostname"] = hostname
        if dns:  # the egress proxy, the only resolver (it answers nothing): docs/network.md
            config["HostConfig"]["Dns"] = list(dns)
        if cap_drop:
            config["HostConfig"]["CapDrop"] = list(cap_drop)
        return self._create(config, name)

    def _create(self, config: dict[str, Any], name: str | None = None) -> str:
        if self.is_podman:
            # Only the image's own variables, as on Docker: Podman would add TERM and
            # container=podman, and its commit would bake them into the image.
            image = self.inspect_image(str(config["Image"]))
            config["UnsetEnvAll"] = True
            config["Env"] = list((image.config.get("Env") if image else None) or [])
            if self.rootless:
                # Rootless: container uids other than root are subordinate ids on the host,
                # so the run user (the host user's uid) could not write /workspace and its
                # files would not be the host user's (rule 5). keep-id maps the service
                # user's uid to itself.
                config.setdefault("HostConfig", {})["UsernsMode"] = "keep-id"
        query = {"name": name} if name else None
        try:
            created = self._call("POST", "/containers/create", query, config)
        except HTTPError as exc:
            if "init binary" in str(exc) or "catatonit" in str(exc):
                raise EngineError(
                    f"the engine has no init binary ({exc.message[:200]})",
                    hint="install catatonit (Debian/Ubuntu: `apt-get install catatonit`) or "
                    "set init_path in containers.conf",
                ) from exc
            missing = _missing_source(config, str(exc))
            if missing and not self.local:
                # Every run mounts its env file, named by a fresh random token: an engine
                # that cannot find it does not share this machine's files, so the workspace
                # it would mount is not this one (a remote engine: ssh://, tcp://).
                raise self._cannot_see(missing) from exc
            raise
        return str(created["Id"])

    def _cannot_see(self, path: str) -> EngineError:
        return EngineError(
            f"the engine at {self.base_url} cannot see {path}: it runs on another machine, "
            "and the workspace must be on the engine's machine",
            hint="run pienv on that machine, or use a local engine "
            "(unset DOCKER_HOST, `docker context use default`)",
        )

    def create_stopped(self, image: str, labels: dict[str, str] | None = None) -> str:
        """A container that is never started (for commits and exports of an image)."""
        return self._create({"Image": self._ref(image), "Cmd": ["true"], "Labels": labels or {}})

    def run_streaming(
        self, cid: str, stdin_fd: int | None = None
    ) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Start ``cid`` and yield its (stdout, stderr) chunks until it exits.

        ``stdin_fd`` (the container must have been created with ``stdin=True``) is copied to
        the container until EOF, which closes the container's stdin, as `docker run -i`
        does, on every transport: the unix socket, tcp, TLS and ssh.

        The attach is made before the start: attaching to a container that already exited
        can block forever, and a short command may exit before a late attach arrives. No
        ``logs`` replay (as `docker run`): the engine answers the attach before it subscribes
        and reads the log, so output written in between would arrive twice.
        """
        if self._http is None:
            try:
                with translated(self.base_url):
                    stream = self.api.attach(
                        cid, stdout=True, stderr=True, stream=True, logs=False, demux=True
                    )
                    if stdin_fd is not None:
                        self._feed_stdin(cid, stdin_fd)
                    self.api.start(cid)
            except EngineError as exc:
                # Rootful Podman makes a missing bind source on its machine at create (an
                # empty directory), then fails to mount the env file it made a directory
                # (at the attach: Podman prepares the container there).
                # (EngineError's text is cut at 300 characters: read the engine's own.)
                unseen = re.search(r'error mounting "([^"]+)"', str(exc.__cause__ or exc))
                if unseen and not self.local:
                    raise self._cannot_see(unseen.group(1)) from exc
                raise
            with translated(self.base_url):
                yield from stream
            return
        query = urlencode(
            {"stream": 1, "stdout": 1, "stderr": 1, "stdin": int(stdin_fd is not None)}
        )
        with translated(self.base_url):
            sock, resp = self._http.upgrade(f"/containers/{cid}/attach?{query}")
            with sock:
                if stdin_fd is not None:
                    import threading

                    # A daemon thread: a stdin that never ends must not keep pienv alive.
                    threading.Thread(target=pump, args=(stdin_fd, sock), daemon=True).start()
                self._call("POST", f"/containers/{cid}/start")
                # Not a TTY: the stream is multiplexed (see enginehttp.frames).
                while (frame := frames(resp)) is not None:
                    which, data = frame
                    yield (data, None) if which != 2 else (None, data)

    def _feed_stdin(self, cid: str, stdin_fd: int) -> None:
        """Over docker-py's session (tcp, TLS, ssh): a second attach, stdin only, made with
        the very connection settings of every other call (TLS material, paramiko's session),
        fed from ``stdin_fd`` by a daemon thread (a stdin that never ends must not keep pienv
        alive). The end of that connection is the end of stdin: the engine closes the
        container's stdin (StdinOnce) while the first attach keeps the output coming. One
        connection with a half-close, as on the unix socket, does not travel everywhere: a
        TLS socket in Python cannot close only its sending side, and proxies (socat) drop a
        half-closed connection's other direction after a moment."""
        import threading

        raw = self.api.attach_socket(cid, params={"stdin": 1, "stream": 1})
        threading.Thread(target=_feed, args=(stdin_fd, raw), daemon=True).start()

    def attach_interactive(self, cid: str, detach_keys: str = "ctrl-^,ctrl-q") -> int:
        """Start and attach through the docker CLI (raw TTY, resize, signals): its exit code."""
        import subprocess  # here, not at the top: ~4 ms off every run's start

        env = dict(os.environ)
        env["DOCKER_HOST"] = self._cli_host
        try:
            proc = subprocess.run(
                [
                    "docker",
                    "start",
                    "--attach",
                    "--interactive",
                    f"--detach-keys={detach_keys}",
                    cid,
                ],
                env=env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise EngineError(
                "the docker CLI is needed for interactive sessions and was not found",
                hint="install the docker client, or run with stdin not a terminal",
            ) from exc
        return proc.returncode

    def wait(self, cid: str, timeout: int | None = None) -> int:
        result = self._call(
            "POST", f"/containers/{cid}/wait", timeout=_NO_TIMEOUT if timeout is None else timeout
        )
        return int(result.get("StatusCode", 1))

    def stop(self, cid: str, timeout: int = 10) -> None:
        with contextlib.suppress(HTTPError):
            self._call("POST", f"/containers/{cid}/stop", {"t": timeout}, timeout=timeout + 60)

    def inspect_container(self, cid: str) -> ContainerState | None:
        try:
            return ContainerState.from_api(self._call("GET", f"/containers/{cid}/json"))
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def containers(self, label_filters: list[str]) -> list[ContainerRow]:
        rows = self._call("GET", "/containers/json", {"all": 1, **_filters(label=label_filters)})
        found = [ContainerRow.from_api(r) for r in rows or []]
        return [r for r in found if _has_labels(r.labels, label_filters)]

    def container_size(self, cid: str) -> int:
        rows = self._call("GET", "/containers/json", {"all": 1, "size": 1, **_filters(id=[cid])})
        return int(rows[0].get("SizeRw", 0)) if rows else 0

    def path_exists(self, cid: str, path: str) -> bool:
        """Whether ``path`` exists in container ``cid``'s filesystem (symlinks of its parent
        directories followed, as the engine does for mount targets; the path itself as lstat
        sees it, so a dangling symlink exists); needs no start."""
        try:
            self._call("HEAD", f"/containers/{cid}/archive", {"path": path})
        except HTTPError as exc:
            # Podman follows a final symlink and answers 404 when its target is missing,
            # yet sends the link's own stat along: the path is there.
            if exc.status == 404:
                return _PATH_STAT in exc.headers
            raise
        return True

    def init_path(self) -> str:
        """Where this engine bind-mounts its init for ``Init: True`` (a run creates it in its
        writable layer unless the image holds it): Docker's tini or Podman's catatonit."""
        return INIT_MOUNTS[1] if self.is_podman else INIT_MOUNTS[0]

    def made_paths(self) -> tuple[tuple[str, str], ...]:
        """Paths the engine itself writes into a started container's own layer, beyond its
        mount points, when the image lacks them: (path, symlink target, or "" for an empty
        file). Podman makes the targets of the files it bind-mounts (`/etc/hosts`,
        `/etc/hostname`, `/etc/resolv.conf`, `/run/.containerenv`) and links `/etc/mtab` to
        `/proc/mounts`, and its commit keeps them; Docker keeps its own in a layer it never
        commits. A commit that holds them keeps a no-op run's layer empty (design rule 3)."""
        return PODMAN_MADE if self.is_podman else ()

    def diff(self, cid: str) -> list[tuple[str, str]]:
        rows = self._call("GET", f"/containers/{cid}/changes") or []
        return [(KIND.get(r["Kind"], "C"), r["Path"]) for r in rows]

    def commit(self, cid: str, like: ImageInfo | None, labels: Mapping[str, str]) -> str:
        """Commit container ``cid`` with ``like``'s image config and ``labels`` added to its
        labels (pass *every* pienv label: see _commit_conf); the new image's id.

        Raises MaxDepthExceeded when the storage driver refuses another layer.
        """
        conf = _commit_conf(like.config if like else {}, labels)
        query: dict[str, Any] = {"container": cid}
        if self.is_podman:
            query["changes"] = self._podman_changes(cid, conf)
        try:
            result = self._call("POST", "/commit", query, conf, timeout=_NO_TIMEOUT)
        except EngineError as exc:
            if "max depth exceeded" in str(exc).lower():
                raise MaxDepthExceeded(
                    f"the engine refuses a layer past {MAX_DEPTH}: {exc.message}"
                ) from exc
            raise
        return full_hex(result["Id"])

    def _podman_changes(self, cid: str, conf: Mapping[str, Any]) -> list[str]:
        """Instructions that give a Podman commit of ``cid`` the config a Docker commit with
        body ``conf`` gets. Podman ignores the body and keeps the container's config (the run
        wrapper as Entrypoint, the run labels); Docker merges the body over the container's
        config (_docker_merge). So: Docker's result, minus what Podman keeps anyway.

        `changes` are parsed like Dockerfile lines, so no value goes in raw: LABEL and ENV
        values are wrapped in double quotes (Podman strips exactly one pair and keeps `$`,
        backslashes and inner quotes verbatim, measured on 4.3); ENTRYPOINT, CMD and VOLUME
        are JSON. A line break cannot travel (Podman splits changes on it): such a label
        must already be on the container (run containers carry the run's message, command
        and workspace; fresh commits carry all their labels), or the commit is refused.
        """
        have = self._call("GET", f"/containers/{cid}/json").get("Config") or {}
        want = _docker_merge(conf, have)
        changes: list[str] = []

        def line_safe(what: str, value: str) -> str:
            if "\n" in value or "\r" in value:
                raise EngineError(
                    f"Podman cannot commit {what} with a line break in its value",
                    hint="Podman's commit takes config as text lines; use one line",
                )
            return value

        def name_safe(what: str, name: str) -> str:
            if not _NAME.fullmatch(name):
                raise EngineError(f"Podman cannot commit the {what} name {name!r}")
            return name

        have_labels = dict(have.get("Labels") or {})
        for key, value in want["Labels"].items():
            if have_labels.get(key) != value:
                value = line_safe(f"label {key}", str(value))
                changes.append(f'LABEL {name_safe("label", key)}="{value}"')
        have_env = set(have.get("Env") or [])
        for entry in want["Env"]:
            if entry not in have_env:
                name, _, value = str(entry).partition("=")
                value = line_safe(f"variable {name}", value)
                changes.append(f'ENV {name_safe("variable", name)}="{value}"')
        changes.append(f"ENTRYPOINT {json.dumps(list(want['Entrypoint'] or []))}")
        changes.append(f"CMD {json.dumps(list(want['Cmd'] or []))}")
        for key, instruction in (("User", "USER"), ("WorkingDir", "WORKDIR")):
            if want[key] and want[key] != (have.get(key) or ""):
                changes.append(f"{instruction} {line_safe(key, str(want[key]))}")
        for volume in want["Volumes"]:
            if volume not in (have.get("Volumes") or {}):
                changes.append(f"VOLUME {json.dumps([volume])}")
        for port in want["ExposedPorts"]:
            if port not in (have.get("ExposedPorts") or {}):
                changes.append(f"EXPOSE {line_safe('a port', str(port))}")
        if want["StopSignal"] and want["StopSignal"] != (have.get("StopSignal") or ""):
            changes.append(f"STOPSIGNAL {line_safe('StopSignal', str(want['StopSignal']))}")
        return changes

    def remove_container(self, cid: str, force: bool = False) -> None:
        with contextlib.suppress(HTTPError):
            self._call("DELETE", f"/containers/{cid}", {"force": int(force), "v": 1})

    # -- flatten ---------------------------------------------------------------------------

    def export_stream(self, cid: str) -> Iterator[bytes]:
        """The container's whole filesystem as a tar, streamed in 1 MiB chunks."""
        with translated(self.base_url):
            yield from self.api.export(cid, chunk_size=1 << 20)

    def image_layers(self, image: str) -> list[list[tarfile.TarInfo]]:
        """The entries (headers only: no file content is kept) of each of ``image``'s
        layers, base first, as the engine stores them: added and changed paths, whiteouts
        (`.wh.NAME`, `.wh..wh..opq`) for deletions. Read from the engine's image export
        (`docker save`), the only API that hands out single layers: the engine writes out
        the whole image, so this costs the image's size, once per commit shown."""
        import tarfile

        found: dict[str, list[tarfile.TarInfo]] = {}
        links: dict[str, str] = {}
        manifest: Any = None
        with translated(self.base_url):
            chunks = self.api.get_image(self._ref(image), chunk_size=1 << 20)
            # Plain read mode on a forward-only file: members' content is skipped, not read.
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r:") as outer:  # type: ignore[call-overload]
                for member in outer:
                    if member.issym() or member.islnk():
                        # A layer identical to an earlier one (same content, same times) is
                        # written once; later copies link to it ("../ID/layer.tar").
                        where = os.path.dirname(member.name) if member.issym() else ""
                        links[member.name] = os.path.normpath(os.path.join(where, member.linkname))
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
            raise EngineError(f"the engine's export of image {image[:12]} holds no layers") from exc

    def read_archive(self, cid: str, path: str) -> bytes | None:
        """A tar of ``path`` in the container, or None if it does not exist."""
        try:
            with translated(self.base_url):
                chunks, _ = self.api.get_archive(cid, path)
                return b"".join(chunks)
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def remove_volume(self, name: str) -> bool:
        """Remove a named volume; False when there is none (a volume in use is an error)."""
        try:
            self._call("DELETE", f"/volumes/{name}")
        except HTTPError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def volumes(self, prefix: str) -> list[str]:
        """Names of the volumes whose name starts with ``prefix``."""
        data = self._call("GET", "/volumes", _filters(name=[prefix])) or {}
        return sorted(
            str(v["Name"]) for v in data.get("Volumes") or () if str(v["Name"]).startswith(prefix)
        )

    def read_path(self, cid: str, path: str) -> bytes | None:
        """A tar of ``path`` in the container (only that path is read, however big the
        image), or None if it does not exist. Over the local socket: no docker-py import."""
        try:
            return self._request("GET", f"/containers/{cid}/archive", {"path": path})
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def write_archive(self, cid: str, directory: str, data: bytes) -> None:
        """Extract a tar into ``directory`` of the container (owners and modes kept)."""
        with translated(self.base_url):
            self.api.put_archive(cid, directory, data)

    def export_container(self, cid: str, on_bytes: Callable[[int], None] | None = None) -> str:
        """Stream container ``cid``'s whole filesystem into a new one-layer image (no config)."""

        def counted() -> Iterator[bytes]:
            for chunk in self.export_stream(cid):
                if on_bytes:
                    on_bytes(len(chunk))
                yield chunk

        with translated(self.base_url):
            result = self.api.import_image_from_data(counted())
        return _imported_id(result)

    # -- registry transfer (ops/push.py, ops/remote.py) ------------------------------------

    def push_image(
        self,
        image_id: str,
        name: str,
        tag: str,
        auth: Mapping[str, str] | None,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> str:
        """Push one image as ``name:tag`` (the engine skips layers the registry holds); the
        manifest digest the registry stored, as the engine reported it ("" if it did not).
        ``auth``: X-Registry-Auth fields (None: the
        engine client's own config). The local tag is removed again afterwards."""
        self.tag(image_id, name, tag)
        digest = ""
        try:
            with translated(self.base_url):
                stream = self.api.push(
                    name, tag=tag, stream=True, decode=True, auth_config=dict(auth or {}) or None
                )
                for event in stream:
                    digest = _transfer_event(event, on_event) or digest
        finally:
            self.untag(f"{name}:{tag}")
        return digest  # "" if the engine's stream named none (Podman's may not)

    def pull_image(
        self,
        reference: str,
        auth: Mapping[str, str] | None,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> str:
        """Pull ``NAME@DIGEST`` (or ``NAME:TAG``); the local image id (sha256:...)."""
        with translated(self.base_url):
            stream = self.api.pull(
                reference, stream=True, decode=True, auth_config=dict(auth or {}) or None
            )
            for event in stream:
                _transfer_event(event, on_event)
        info = self.inspect_image(reference)
        if info is None:
            raise EngineError(f"the engine pulled {reference} but does not list it")
        return info.id

    def layer_dirs(self, image: str) -> list[str] | None:
        """The directories holding ``image``'s layers on this machine, base first (overlay2
        on a local engine: the image's GraphDriver data); None where they cannot be read
        here (another driver, a remote or rootless engine): use ``saved_layers`` then."""
        if not self.local:
            return None
        try:
            data = self._call("GET", f"/images/{self._id(image)}/json")
        except HTTPError:
            return None
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
        self, images: list[str], want: Callable[[str, int], bool]
    ) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, bytes | None]]]]:
        """Read ``images`` from one engine export (`docker save`: every layer written once):
        ({image id hex: its layer keys, base first}, {layer key: [(path, content)]}) for the
        non-empty regular files of each layer, content read only where ``want(path, size)``
        says so (None for the rest)."""
        import tarfile

        order: dict[str, list[str]] = {}
        layers: dict[str, list[tuple[str, bytes | None]]] = {}
        links: dict[str, str] = {}
        with translated(self.base_url):
            api = self.api
            # /images/get?names=A&names=B: several images in one tar, each layer once.
            res = api.get(
                f"{api.base_url}/v{api.api_version}/images/get",
                params={"names": [self._ref(i) for i in images]},
                stream=True,
            )
            if res.status_code >= 400:
                raise EngineError(f"the engine refused to export images: {res.text[:200]}")
            chunks = res.iter_content(1 << 20)
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r:") as outer:  # type: ignore[call-overload]
                for member in outer:
                    if member.issym() or member.islnk():
                        where = os.path.dirname(member.name) if member.issym() else ""
                        links[member.name] = os.path.normpath(os.path.join(where, member.linkname))
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


def _docker_build_line(text: str) -> str:
    """A line of Podman's build output as Docker's classic builder writes it: "STEP 2/4: RUN
    x" -> "Step 2/4 : RUN x", "--> 2bd1a37478b" -> " ---> 2bd1a37478b" (its ids and "Using
    cache" lines too), so what pienv shows and parses is the same on both engines."""
    step = re.match(r"STEP (\d+/\d+): ", text)
    if step:
        return f"Step {step.group(1)} : {text[step.end() :]}"
    if text.startswith("--> "):
        return " ---> " + text[4:]
    return text


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
    with contextlib.suppress(Exception):
        sock.close()


def _filters(**filters: list[str]) -> dict[str, str]:
    return {"filters": json.dumps(filters)}


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


def _missing_source(config: Mapping[str, Any], message: str) -> str:
    """The bind source an engine's create error says does not exist, or "". Docker says
    "bind source path does not exist"; Podman tries to make a missing source ("making volume
    mountpoint for volume PATH: mkdir PATH: permission denied" when rootless)."""
    low = message.lower()
    if not any(s in low for s in ("does not exist", "no such file", "making volume mountpoint")):
        return ""
    for mount in (config.get("HostConfig") or {}).get("Mounts") or ():
        source = str(mount.get("Source") or "")
        if mount.get("Type") == "bind" and source and source in message:
            return source
    return ""


def _has_labels(labels: Mapping[str, str], filters: list[str]) -> bool:
    """Docker's label filter: "key" (present) or "key=value"."""
    for f in filters:
        key, eq, value = f.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _familiar(tags: Any) -> tuple[str, ...]:
    """Tags as `docker images` shows them: Podman names "pienv/x:1" "docker.io/pienv/x:1"."""
    out = []
    for tag in tags or ():
        if tag == "<none>:<none>":
            continue
        for prefix in ("docker.io/library/", "docker.io/"):
            if tag.startswith(prefix):
                tag = tag[len(prefix) :]
                break
        out.append(str(tag))
    return tuple(out)


def _docker_merge(conf: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The config Docker's commit gives an image: the body ``conf`` with its empty fields
    filled from the container's config (moby daemon/commit.go `merge`)."""
    env = list(conf.get("Env") or [])
    names = {e.partition("=")[0] for e in env}
    env += [e for e in container.get("Env") or [] if e.partition("=")[0] not in names]
    cmd, entrypoint = conf.get("Cmd"), conf.get("Entrypoint")
    if not entrypoint and not cmd:
        cmd, entrypoint = container.get("Cmd"), container.get("Entrypoint")
    return {
        "Labels": {**(container.get("Labels") or {}), **(conf.get("Labels") or {})},
        "Env": env,
        "Cmd": cmd,
        "Entrypoint": entrypoint,
        "User": conf.get("User") or container.get("User") or "",
        "WorkingDir": conf.get("WorkingDir") or container.get("WorkingDir") or "",
        "Volumes": {**(container.get("Volumes") or {}), **(conf.get("Volumes") or {})},
        "ExposedPorts": {
            **(container.get("ExposedPorts") or {}),
            **(conf.get("ExposedPorts") or {}),
        },
        "StopSignal": conf.get("StopSignal") or container.get("StopSignal") or "",
    }


def _commit_conf(image_config: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """An image's own config with ``labels`` set, safe against Docker's commit merge.

    Docker merges the run container's config into a commit: env entries, labels and (when the
    image has none) entrypoint/cmd of the container survive unless the commit names them.
    Callers pass *every* pienv label; here an empty Entrypoint list (not null) stops the run
    wrapper from becoming the image's entrypoint.
    """
    conf = dict(image_config)
    merged = dict(conf.get("Labels") or {})
    merged.update(labels)
    conf["Labels"] = merged
    if not conf.get("Entrypoint"):
        conf["Entrypoint"] = []
    conf.pop("Image", None)
    return conf
