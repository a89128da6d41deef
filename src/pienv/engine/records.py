"""What ops get instead of Docker's JSON: small typed records, and the engine's failures as
typed errors (`translated`: docker-py's and the socket's exceptions become EngineError, an
HTTPError with a status, or a message that says what to do)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pienv.engine.http import HTTPError
from pienv.errors import EngineError
from pienv.model import full_hex

MAX_DEPTH = 125  # overlay2 refuses to commit past this many layers ("max depth exceeded")
# The DiffID of an empty layer (a tar of two zero blocks). Podman's commit adds one even when
# the container changed nothing (Docker adds no layer then): it holds no content.
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


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
    pid: int = 0  # its first process, on the engine's host (0: not running)
    oom_killed: bool = False  # the kernel killed a process of it for memory
    ports: tuple[str, ...] = ()  # published ports, "127.0.0.1:3000->3000/tcp"

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
            pid=int(state.get("Pid") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            ports=published(data),
        )


def published(data: Mapping[str, Any]) -> tuple[str, ...]:
    """A container's published ports: its live bindings when it runs, else those asked for."""
    bindings = (
        (data.get("NetworkSettings") or {}).get("Ports")
        or (data.get("HostConfig") or {}).get("PortBindings")
        or {}
    )
    return tuple(
        f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}->{port}"
        for port, binds in sorted(bindings.items())
        for b in binds or ()
    )


@dataclass(frozen=True)
class EngineVersion:
    product: str  # "Docker Engine" | "Podman"
    version: str
    api_version: str  # the Docker API version it speaks (Podman: its compat version)
    arch: str = ""  # the engine machine's architecture, Go's name ("amd64", "arm64")

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> EngineVersion:
        names = [str(c.get("Name", "")) for c in data.get("Components") or ()]
        podman = any("podman" in n.lower() for n in names)
        return cls(
            product="Podman" if podman else "Docker Engine",
            version=str(data.get("Version") or "?"),
            api_version=str(data.get("ApiVersion") or "?"),
            arch=str(data.get("Arch") or ""),
        )

    def __str__(self) -> str:
        return f"{self.product} {self.version} (API {self.api_version})"


@dataclass(frozen=True)
class EngineInfo:
    driver: str  # storage driver
    root_dir: str  # where the engine keeps images (on the engine's machine)
    rootless: bool
    host: str  # the engine machine's host name
    # The engine maps container root to an unprivileged host uid (Docker's userns-remap, or
    # any rootless engine): root in the container is not root on the workspace's files.
    userns: bool = False

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> EngineInfo:
        security = [str(o) for o in data.get("SecurityOptions") or ()]
        return cls(
            driver=str(data.get("Driver") or "?"),
            root_dir=str(data.get("DockerRootDir") or "/var/lib/docker"),
            # Docker says so in its security options; Podman's compat API has a field.
            rootless=bool(data.get("Rootless")) or any("name=rootless" in o for o in security),
            host=str(data.get("Name") or ""),
            userns=bool(data.get("Rootless"))
            or any(n in o for o in security for n in ("name=userns", "name=rootless")),
        )


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


# -- failures: what ops get instead of docker-py's and the socket's exceptions ------------------


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
def translated(where: str) -> Iterator[None]:
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
