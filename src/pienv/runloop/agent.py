"""The agent at run time: its state and the package caches in
per-store volumes (never in an env commit), what a run mounts and sets for it (its install:
runloop.install).

Volumes, not host directories under the store: they work on remote engines, the agent's root
(apt via sudo) can write them without leaving root-owned files in the user's store, and a new
volume starts with the owner of the directory it is mounted on (the prepared root makes those
directories the host user's). Names carry the store id, so two stores never share them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pienv.config import CACHE_ENV, CACHES, Agent
from pienv.model import LABEL
from pienv.runloop.sandbox import AGENT_HOME
from pienv.runloop.spec import Mount

# On the install commit (and inherited by its descendants with the image config): the install
# command that succeeded, so later runs skip the step without starting a container.
INSTALLED_LABEL = LABEL + "agent-install"


def _home(path: str) -> str:
    return AGENT_HOME + path[1:] if path.startswith("~/") else path


def volume_prefix(store_id: str) -> str:
    return f"pienv-{store_id}-"


def state_volume(store_id: str, rel: str, scope: str = "") -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", rel.strip("/"))
    return f"{volume_prefix(store_id)}state-{name}{_scoped(scope)}"


def cache_volume(store_id: str, name: str, scope: str = "") -> str:
    return f"{volume_prefix(store_id)}cache-{name}{_scoped(scope)}"


def _scoped(scope: str) -> str:
    return f".p{scope}" if scope else ""


def volume_mounts(store_id: str, agent: Agent, caches: bool, scope: str = "") -> tuple[Mount, ...]:
    """pienv's own mounts of a run: the agent's state dirs, and the caches when on. Named
    volumes (a name is never a host path, so the mount policy has nothing to judge).
    ``scope``: a run under an egress policy gets volumes of that policy's own (egressrun.py):
    a volume shared with runs that reach more (a unix socket an open run serves there) would
    be a way around its allow-list."""
    out = [
        Mount(
            state_volume(store_id, rel, scope),
            f"{AGENT_HOME}/{rel.strip('/')}",
            False,
            f"{agent.label}'s state",
            volume=True,
        )
        for rel in agent.state
    ]
    if caches:
        out += [
            Mount(
                cache_volume(store_id, name, scope),
                _home(path),
                False,
                f"{name} cache",
                volume=True,
            )
            for name, path in CACHES
        ]
    return tuple(out)


def agent_env(agent: Agent, caches: bool) -> dict[str, str]:
    """pienv's variables for the agent: where its state and (when on) the caches are."""
    env = {k: f"{AGENT_HOME}/{v}" for k, v in agent.state_env}
    if caches:
        env.update({k: _home(v) for k, v in CACHE_ENV})
    return env


def installed(labels: Mapping[str, str], agent: Agent) -> bool:
    return not agent.install or labels.get(INSTALLED_LABEL) == agent.install
