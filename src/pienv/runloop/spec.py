"""What a run's container will be, as data: the typed records `plan.py` computes and the
session hands to the engine. Pure (no engine, no filesystem): everything that changes what
the container gets (mounts, variables, capabilities, network, limits) is a field here, so
it can be unit-tested and reviewed in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pienv.limits import Limits
from pienv.model import RunInfo


@dataclass(frozen=True)
class MountPoint:
    """A path a run bind-mounts over: a directory, or a file for a file mount."""

    path: str
    directory: bool = True
    link: str = ""  # made as a symlink to this (what the engine itself makes, not a mount)
    mode: int = 0o755


@dataclass(frozen=True)
class Mount:
    """One mount of a run: a host path (absolute) or a named volume at ``target``."""

    source: str
    target: str
    read_only: bool
    why: str  # said in reviews and errors: "the workspace", "git hooks, read-only", ...
    volume: bool = False  # a named volume of pienv's own (agent state, caches)
    directory: bool = True  # what the mount point in the image must be

    @property
    def mode(self) -> str:
        return "ro" if self.read_only else "rw"


@dataclass(frozen=True)
class ContainerSpec:
    """A run container, complete: the session creates exactly this.

    ``env`` never becomes the container's Env (a commit would keep it, rule 10): it is
    written to ``env_file`` on the host, mounted read-only, and loaded by the wrapper.
    """

    image: str
    name: str
    entrypoint: tuple[str, ...]
    user: str
    workdir: str
    env: Mapping[str, str]
    env_file: str  # host path of the env file (mounted at sandbox.ENV_FILE)
    mounts: tuple[Mount, ...]
    info: RunInfo | None  # the run's record (its labels); None for pienv's own steps
    network: str
    dns: tuple[str, ...] = ()  # resolvers (the egress proxy, for a run with a policy)
    tty: bool = False
    stdin: bool = False
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    no_new_privileges: bool = False
    limits: Limits = field(default_factory=Limits)
    ports: tuple[tuple[int, int], ...] = ()  # (host port on 127.0.0.1, container port)
    tmpfs: tuple[str, ...] = ()
    gpus: tuple[Mapping[str, object], ...] = ()  # DeviceRequests entries (`--gpus`)
    # Mount points the image lacks: made by a "prepare" commit before the container is
    # created, so Docker creating them is never a change (rule 3).
    prepare: tuple[MountPoint, ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        return {**(self.info.labels() if self.info else {}), **self.extra_labels}

    def binds(self) -> dict[str, dict[str, str]]:
        """The mounts in the engine's ``binds`` form (host path or volume -> target, mode)."""
        return {m.source: {"bind": m.target, "mode": m.mode} for m in self.mounts}

    def on_image(self, image: str) -> ContainerSpec:
        """The same container started from ``image`` (a prepare commit's child of the parent),
        its record naming that image as the run's parent."""
        info = replace(self.info, parent=image) if self.info else None
        return replace(self, image=image, info=info, prepare=())
