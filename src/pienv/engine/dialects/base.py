"""What a dialect answers: every point where engines that speak Docker's API differ.

`Engine` (engine/client.py) asks its dialect at each of these points and nowhere else asks
which engine it talks to. To support another engine, subclass `Dialect` in a module of its own
beside docker.py and podman.py, answer each point, and teach `dialects.identify` to recognise
it from the headers of the engine's answers.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pienv.engine.records import ImageInfo


class Calls(Protocol):
    """What a dialect may ask of the engine it belongs to (the client implements it)."""

    @property
    def rootless(self) -> bool: ...

    @property
    def local(self) -> bool: ...

    def inspect_image(self, ref: str) -> ImageInfo | None: ...

    def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any: ...


class Dialect(abc.ABC):
    name: str  # how messages name the engine: "Docker", "Podman"
    # Mount points the engine makes for itself in every container (not listed in its
    # Mounts), its init for Init=true first.
    own_mounts: tuple[str, ...]
    # Paths the engine writes into a started container's own layer when the image lacks
    # them, beyond its mount points: (path, symlink target, or "" for an empty file).
    made_paths: tuple[tuple[str, str], ...]
    # The engine's default network, the way out (`NetworkMode` of a container that needs one).
    default_network: str
    # The `o` option of a tmpfs-backed local volume (mode 0700, at most 64 MiB where the
    # engine takes a size).
    tmpfs_volume_options: str
    # Whether removing an image that another image builds on removes it (and frees the
    # layers only it holds) rather than refusing (Docker: 409, the image stays, untagged).
    removes_built_on: bool = False
    # Whether `started` must see every run container start, the docker CLI's interactive
    # attach (which starts it without pienv's own call) included.
    watches_starts: bool = False

    def started(self, engine: Calls, cid: str) -> None:
        """A run container has just started (the engine reports OOM kills itself: nothing)."""
        return None

    def oom_killed(self, cid: str) -> bool:
        """Whether a process of ``cid`` was killed for memory, beyond the engine's own
        `State.OOMKilled` (which the engine sets itself: nothing more to know)."""
        return False

    @property
    def init_path(self) -> str:
        """Where the engine bind-mounts its init for ``Init: True``."""
        return self.own_mounts[0]

    @abc.abstractmethod
    def label_filters(self, filters: list[str]) -> list[str]:
        """The label filters to send with an image listing (the client checks all of them
        on what comes back, so an engine may be sent fewer)."""

    @abc.abstractmethod
    def build_line(self, text: str) -> str:
        """A line of the engine's build output as Docker's classic builder writes it."""

    @abc.abstractmethod
    def build_step_runs(self, line: str) -> bool | None:
        """For a build line (as build_line made it) that opens a step: whether the step
        makes an image; None when the line says nothing about that."""

    @abc.abstractmethod
    def check_mounts(self, sources: Iterable[str]) -> None:
        """Refuse (EngineError) a mount source the engine cannot mount."""

    @abc.abstractmethod
    def prepare_create(self, engine: Calls, config: dict[str, Any]) -> None:
        """Adjust a container create body so the container gets what it gets on Docker."""

    @abc.abstractmethod
    def commit_query(self, engine: Calls, cid: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        """Query parameters beyond `container` that make a commit of ``cid`` with body
        ``conf`` give the image the config a Docker commit gives it."""

    @abc.abstractmethod
    def exists_after_404(self, headers: Mapping[str, str]) -> bool:
        """Whether a 404 to `HEAD /containers/{id}/archive` still means the path exists."""
