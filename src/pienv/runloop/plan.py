"""A run's container, decided: request + workspace + config + agent + parent image in, a
`ContainerSpec` out. PURE: no engine, no filesystem, no clock (what the host says is read by
the session and passed in: the checked mounts, the environment, the run's record), so every
rule about what the container gets is unit-tested without an engine (tests/test_plan.py).

Where to change what the container gets: here (and the records in spec.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pienv import limits
from pienv.config import Agent, Config
from pienv.errors import UsageError
from pienv.limits import Limits
from pienv.model import LABEL, RunInfo
from pienv.runloop.agent import INSTALLED_LABEL, agent_env, volume_mounts
from pienv.runloop.sandbox import (
    AGENT_HOME,
    ENV_FILE,
    LOGIN_SHELL,
    TMPFS,
    WORKSPACE,
    WRAPPER,
    container_env,
)
from pienv.runloop.spec import ContainerSpec, Mount, MountPoint
from pienv.runloop.workspace import Workspace

# Capabilities no run needs and a hostile agent would use on the host through a bind mount
# (rule 13): device nodes (MKNOD) and file capabilities (SETFCAP). apt keeps working: dpkg
# sets setuid bits with FOWNER, and packages that setcap in postinst fall back to setuid
# (tests/test_box.py installs openssh-client). What they cannot stop (setuid files, trees
# of root) the sweep after the run removes (runloop/sweep.py).
DROPPED_CAPS = ("MKNOD", "SETFCAP")


@dataclass(frozen=True)
class RunRequest:
    command: tuple[str, ...] = ()  # empty: the configured agent
    branch: str | None = None
    workdir: Path | None = None
    message: str | None = None
    no_commit: bool = False
    interactive: bool = False
    shell: bool = False
    wait: float | None = None
    env_names: tuple[str, ...] = ()
    agent: str | None = None  # a preset name (`--agent`); None: the configured agent
    egress: str | None = None  # `--egress MODE` for this run; None: the branch's policy
    # `--cpus/--memory/--pids` as written (over `[run]`, over the host's defaults), `-p`, `--gpus`
    limits: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    gpus: str | None = None


@dataclass(frozen=True)
class Parent:
    """What the plan needs of the parent image."""

    id: str
    mount_points: frozenset[str] = frozenset()  # per-run mount points it already holds


@dataclass(frozen=True)
class Boundary:
    """The run's network boundary (runloop/egressrun.py, docs/network.md), when it has one:
    the proxy's network, the proxy as the only resolver, variables that override the env
    file's, capabilities dropped."""

    network: str
    dns: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cap_drop: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)  # the run's slot (egressnet.py)
    mounts: tuple[Mount, ...] = ()  # read-only files of its slot (resolver, hosts)
    volume_scope: str = ""  # its policy's own agent state and cache volumes ("": the store's)


@dataclass(frozen=True)
class HostFacts:
    """What the session read from the host for this run (the plan reads nothing itself)."""

    user: str  # "uid:gid" the agent runs as (rule 5)
    environ: Mapping[str, str]
    env_file: str  # where the session writes the run's variables
    name: str  # the container's name (runloop.sandbox.run_name)
    store_id: str
    checked: tuple[Mount, ...] = ()  # git metadata and `[run] mounts`, through the policy
    forward_stdin: bool = False
    boundary: Boundary | None = None  # None: an open run (the configured network)
    defaults: Limits = field(
        default_factory=Limits
    )  # what limits a run gets here unless asked (limits.host_defaults)


def command_of(req: RunRequest, agent: Agent) -> tuple[str, ...]:
    """What the run runs: the request's command, a login shell, or the agent."""
    return tuple(req.command or (LOGIN_SHELL if req.shell else agent.command))


def env_names(req: RunRequest, agent: Agent) -> tuple[str, ...]:
    """The host variables asked for: `--env` names and the agent's own."""
    return (*req.env_names, *agent.env)


def run_env(
    req: RunRequest,
    ws: Workspace,
    config: Config,
    agent: Agent,
    branch: str | None,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """The run's variables (written to the env file, never into the container's config)."""
    env = container_env(
        config, environ, env_names(req, agent), branch, agent_env(agent, config.caches)
    )
    if ws.subdir:
        env["PIENV_SUBDIR"] = ws.subdir
    return env


# What a run of an egress slot gets read-only from its slot (egressnet.slot_files).
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")


def own_mounts(ws: Workspace, config: Config, agent: Agent, host: HostFacts) -> tuple[Mount, ...]:
    """What every run mounts: the workspace, the env file, the agent's state and caches."""
    return (
        Mount(str(ws.path), WORKSPACE, False, "the workspace"),
        Mount(host.env_file, ENV_FILE, True, "the run's variables", directory=False),
        *volume_mounts(
            host.store_id,
            agent,
            config.caches,
            host.boundary.volume_scope if host.boundary else "",
        ),
        *(host.boundary.mounts if host.boundary else ()),
    )


def mount_points(
    mounts: Sequence[Mount], varying: Sequence[Mount], parent: Parent
) -> tuple[MountPoint, ...]:
    """The mount points of ``varying`` (git metadata, configured mounts) that ``parent`` lacks.
    pienv's own commits hold those every run gets; a target inside another mount is made in
    that mount, on the host, not in the image."""
    targets = [m.target.rstrip("/") + "/" for m in mounts]
    out: list[MountPoint] = []
    for m in varying:
        if m.target in parent.mount_points or any(m.target.startswith(t) for t in targets):
            continue
        if all(p.path != m.target for p in out):
            out.append(MountPoint(m.target, directory=m.directory))
    return tuple(out)


def plan(
    req: RunRequest,
    ws: Workspace,
    config: Config,
    agent: Agent,
    parent: Parent,
    info: RunInfo,
    host: HostFacts,
    branch: str | None,
) -> ContainerSpec:
    """The run container: the wrapper entrypoint around the command, the host user, the
    mounts (pienv's own first; a later mount of the same host path wins), the run's record
    as labels, the configured network."""
    mounts: dict[str, Mount] = {m.source: m for m in own_mounts(ws, config, agent, host)}
    for m in host.checked:
        mounts[m.source] = m
    ordered = tuple(mounts.values())
    boundary = host.boundary
    env = run_env(req, ws, config, agent, branch, host.environ)
    if boundary is not None:
        env.update(boundary.env)
    return ContainerSpec(
        image=parent.id,
        name=host.name,
        entrypoint=("/bin/sh", "-c", WRAPPER, ENV_FILE, *command_of(req, agent)),
        user=host.user,
        workdir=WORKSPACE,  # the wrapper enters ws.subdir (PIENV_SUBDIR)
        env=env,
        env_file=host.env_file,
        mounts=ordered,
        info=info,
        network=boundary.network if boundary else config.network,
        dns=boundary.dns if boundary else (),
        tty=req.interactive,
        stdin=req.interactive or host.forward_stdin,
        cap_drop=cap_drop(boundary),
        no_new_privileges=not config.sudo,
        extra_labels=dict(boundary.labels) if boundary else {},
        prepare=mount_points(ordered, host.checked, parent),
        tmpfs=TMPFS,
        **resources(req, config, host),
    )


def cap_drop(boundary: Boundary | None) -> tuple[str, ...]:
    """The capabilities a container of the agent's images goes without: DROPPED_CAPS always,
    and what its network boundary drops."""
    return tuple(dict.fromkeys((*DROPPED_CAPS, *(boundary.cap_drop if boundary else ()))))


def probe_spec(
    image: str,
    command: tuple[str, ...],
    workspace: str | None,
    env: Mapping[str, str],
    config: Config,
    host: HostFacts,
    labels: Mapping[str, str],
    workdir: str = "",
) -> ContainerSpec:
    """A container another command starts from an env commit (bisect's probe, rebase's
    replay): a run's wrapper, env file and user, and a run's box: its dropped capabilities,
    no new privileges with `[run] sudo = false`, the network boundary ``host.boundary``, and
    the ``workspace`` (a checked real path, or None) with its git metadata mounts
    (``host.checked``, gitguard.git_mounts). Not a run: no record, no agent state or cache
    volumes, no limits."""
    boundary = host.boundary
    env_mount = Mount(host.env_file, ENV_FILE, True, "the run's variables", directory=False)
    mounts: dict[str, Mount] = {host.env_file: env_mount}
    if workspace:
        mounts[workspace] = Mount(workspace, WORKSPACE, False, "the workspace")
    for m in (*(boundary.mounts if boundary else ()), *host.checked):
        mounts[m.source] = m
    return ContainerSpec(
        image=image,
        name=host.name,
        entrypoint=("/bin/sh", "-c", WRAPPER, ENV_FILE, *command),
        user=host.user,
        workdir=workdir or WORKSPACE,
        env={**env, **(boundary.env if boundary else {})},
        env_file=host.env_file,
        mounts=tuple(mounts.values()),
        info=None,
        network=boundary.network if boundary else config.network,
        dns=boundary.dns if boundary else (),
        cap_drop=cap_drop(boundary),
        no_new_privileges=not config.sudo,
        extra_labels={**labels, **(boundary.labels if boundary else {})},
    )


def resources(req: RunRequest, config: Config, host: HostFacts) -> dict[str, Any]:
    """The run's limits (command line > `[run]` > the host's defaults), its ports (on
    127.0.0.1 only) and GPUs (`--gpus`, else `[run] gpus`)."""
    gpus = req.gpus or config.gpus
    ports = tuple(dict.fromkeys(limits.parse_port(p) for p in req.ports))
    if ports and host.boundary is not None:
        # A run with a policy is alone on its slot's network (no address on the engine's
        # host): a published port would reach nothing, and the engine refuses it there.
        raise UsageError(
            "--port needs an open network: this run has an egress policy",
            hint="run with --egress open to publish a port",
        )
    return {
        "limits": limits.resolve(host.defaults, config.limits, req.limits),
        "ports": ports,
        "gpus": (limits.gpu_request(gpus),) if gpus else (),
    }


def install_spec(spec: ContainerSpec, agent: Agent, config: Config, store_id: str) -> ContainerSpec:
    """The agent's install step: its own container on the run's parent, with the run's env
    file and pienv's volumes (not the workspace), labelled as an install."""
    kept = tuple(
        m for m in spec.mounts if m.volume or m.target == ENV_FILE or m.target in NETWORK_FILES
    )
    return ContainerSpec(
        image=spec.image,
        name=spec.name + "-install",
        entrypoint=("/bin/sh", "-c", WRAPPER, ENV_FILE, "sh", "-c", agent.install),
        user=spec.user,
        workdir=AGENT_HOME,
        env=spec.env,
        env_file=spec.env_file,
        mounts=kept,
        info=None,
        # A branch with an egress policy installs through its boundary too (egressrun.py):
        # code the agent left in the image must not get an open network from the install.
        network=spec.network,
        dns=spec.dns,
        cap_drop=spec.cap_drop,
        limits=spec.limits,  # an install's build runs away like any other
        tmpfs=spec.tmpfs,  # nor does an install's temp junk enter its commit
        # The install command goes on the container too: it may hold line breaks, which an
        # engine whose commit takes labels as text lines (Podman) keeps only from there.
        extra_labels={
            **spec.extra_labels,  # its egress slot's, if any: a killed install's is passed over
            LABEL + "store": store_id,
            LABEL + "role": "install",
            INSTALLED_LABEL: agent.install,
        },
    )
