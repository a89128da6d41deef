"""The agent: its install as its own committed step, its state and the package caches in
per-store volumes (never in an env commit), `pienv agent list`, `pienv prune --caches`.

Volumes, not host directories under the store: they work on remote engines, the agent's root
(apt via sudo) can write them without leaving root-owned files in the user's store, and a new
volume starts with the owner of the directory it is mounted on (the prepared root makes those
directories the host user's). Names carry the store id, so two stores never share them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from pienv.config import CACHE_ENV, CACHES, PRESETS, Agent, Config
from pienv.errors import PienvError
from pienv.model import LABEL, Commit
from pienv.ops.commits import finish, host_ids
from pienv.ops.context import Context
from pienv.ops.sandbox import AGENT_HOME, ENV_FILE, WRAPPER

# On the install commit (and inherited by its descendants with the image config): the install
# command that succeeded, so later runs skip the step without starting a container.
INSTALLED_LABEL = LABEL + "agent-install"

Binds = dict[str, dict[str, str]]
Sink = Callable[[bytes], None]


def _home(path: str) -> str:
    return AGENT_HOME + path[1:] if path.startswith("~/") else path


def volume_prefix(store_id: str) -> str:
    return f"pienv-{store_id}-"


def state_volume(store_id: str, rel: str) -> str:
    return f"{volume_prefix(store_id)}state-{re.sub(r'[^A-Za-z0-9_.-]', '_', rel.strip('/'))}"


def cache_volume(store_id: str, name: str) -> str:
    return f"{volume_prefix(store_id)}cache-{name}"


def volume_binds(store_id: str, agent: Agent, caches: bool) -> Binds:
    """pienv's own mounts of a run: the agent's state dirs, and the caches when on. Named
    volumes (a name is never a host path, so the mount policy has nothing to judge)."""
    binds: Binds = {}
    for rel in agent.state:
        target = f"{AGENT_HOME}/{rel.strip('/')}"
        binds[state_volume(store_id, rel)] = {"bind": target, "mode": "rw"}
    if caches:
        for name, path in CACHES:
            binds[cache_volume(store_id, name)] = {"bind": _home(path), "mode": "rw"}
    return binds


def agent_env(agent: Agent, caches: bool) -> dict[str, str]:
    """pienv's variables for the agent: where its state and (when on) the caches are."""
    env = {k: f"{AGENT_HOME}/{v}" for k, v in agent.state_env}
    if caches:
        env.update({k: _home(v) for k, v in CACHE_ENV})
    return env


def installed(labels: Mapping[str, str], agent: Agent) -> bool:
    return not agent.install or labels.get(INSTALLED_LABEL) == agent.install


# What an install's output says went wrong, and what to do (first match wins): a missing
# tool or an unreachable registry is not fixed by another version.
_CAUSES = (
    (
        r"No module named pip|pip: not found|pip3?: command not found",
        "pip is missing in this environment: install it (`pienv shell`, then e.g. "
        "`sudo apt-get install python3-pip`) or use a base image with pip (PIENV_BASE_IMAGE)",
    ),
    (
        r"python3?: not found|python3?: command not found|No such file or directory: .?python",
        "python3 (and pip) are missing in this environment: install them (`pienv shell`) or "
        "use a base image with Python (PIENV_BASE_IMAGE)",
    ),
    (
        r"npm: not found|npm: command not found",
        "npm is missing in this environment: install Node.js and npm (`pienv shell`) or use a "
        "base image with them (PIENV_BASE_IMAGE)",
    ),
    (
        r"EAI_AGAIN|ENOTFOUND|ECONNREFUSED|ETIMEDOUT|ENETUNREACH|getaddrinfo|Temporary failure "
        r"in name resolution|Network is unreachable|Failed to establish a new connection|"
        r"Could not resolve host|connection timed out",
        "the package registry could not be reached (network): check the host's network and "
        "proxy variables, and [run] network in the config",
    ),
)


def failure_cause(output: str) -> str | None:
    """The cause an install's ``output`` names and what to do; None when it names none
    (then the version or the install command is the suspect)."""
    import re

    for pattern, cause in _CAUSES:
        if re.search(pattern, output, re.IGNORECASE):
            return cause
    return None


def install(
    ctx: Context,
    parent: str,
    branch: str | None,
    agent: Agent,
    binds: Binds,
    err: Sink,
    network: str,
    name: str,
    dns: tuple[str, ...] = (),
    cap_drop: tuple[str, ...] = (),
) -> Commit:
    """Run the agent's install in its own container on ``parent``; commit it as "install
    <agent> <version>" and move the branch there. A failed install commits nothing."""
    engine = ctx.engine()
    parent_image = engine.inspect_image(parent)
    cid = engine.create(
        parent,
        entrypoint=["/bin/sh", "-c", WRAPPER, ENV_FILE, "sh", "-c", agent.install],
        user=host_ids(),
        workdir=AGENT_HOME,
        binds=binds,
        # The install command goes on the container too: it may hold line breaks, which an
        # engine whose commit takes labels as text lines (Podman) keeps only from there.
        labels={
            LABEL + "store": ctx.store_id,
            LABEL + "role": "install",
            INSTALLED_LABEL: agent.install,
        },
        network=network,
        name=name,
        # A branch with an egress policy installs through its boundary too (ops/egressrun.py):
        # code the agent left in the image must not get an open network from the install.
        dns=dns,
        cap_drop=cap_drop,
    )
    try:
        err(f"pienv: installing {agent.label}: {agent.install}\n".encode())
        tail = b""  # the end of the install's output: what a failure is read from
        for stdout, stderr in engine.run_streaming(cid, None):
            for data in (stdout, stderr):
                if data:
                    err(data)
                    tail = (tail + data)[-16384:]
        code = int(engine.wait(cid))
        if code != 0:
            cause = failure_cause(tail.decode("utf-8", "replace"))
            key = "[agent] version" if agent.preset and agent.version else "[agent] install"
            raise PienvError(
                f"installing {agent.label} failed (exit {code}): `{agent.install}`; "
                + "nothing was committed: "
                + (cause or f"change {key} in {ctx.store.config_path}")
            )
        # No path list here: `docker diff` misses same-size rewrites that kept their mtime and
        # walks the whole image; the first `pienv show` lists what the commit's layer holds.
        draft = Commit.draft(
            branch,
            f"install {agent.label}",
            "install",
            parents=(parent,),
            command=("sh", "-c", agent.install),
            exit_code=0,
            changes=None,
        )
        draft = replace(draft, container=cid)
        labels = draft.labels(ctx.store_id)
        labels[INSTALLED_LABEL] = agent.install
        image_id = engine.commit(cid, parent_image, labels)
        commit = finish(ctx, engine, image_id, draft, None, parent_image)
        with ctx.store.transaction(f"install: {agent.label}") as txn:
            txn.move_head(branch, parent, commit.id)
        return commit
    finally:
        engine.remove_container(cid, force=True)


@dataclass(frozen=True)
class AgentRow:
    name: str
    command: str
    version: str
    install: str
    env: str
    state: str
    configured: bool


def list_agents(config: Config) -> list[AgentRow]:
    rows = []
    for p in PRESETS.values():
        agent = config.agent if config.agent.preset == p.name else config.agent_named(p.name)
        rows.append(
            AgentRow(
                name=p.name,
                command=" ".join(agent.command),
                version=agent.version,
                install=agent.install,
                env=", ".join(config.passed_names(agent)),
                state=", ".join(f"~/{d}" for d in agent.state),
                configured=config.agent.preset == p.name,
            )
        )
    if not config.agent.preset:
        a = config.agent
        rows.append(
            AgentRow(
                a.name,
                " ".join(a.command),
                "",
                a.install,
                ", ".join(config.passed_names(a)),
                ", ".join(f"~/{d}" for d in a.state),
                True,
            )
        )
    return rows


@dataclass(frozen=True)
class CachesPruned:
    removed: list[str]
    busy: list[str]


def prune_caches(ctx: Context) -> CachesPruned:
    """Empty the store's package caches (remove their volumes; the next run makes new ones)."""
    engine = ctx.engine()
    removed, busy = [], []
    for name in engine.volumes(volume_prefix(ctx.store_id) + "cache-"):
        try:
            engine.remove_volume(name)
            removed.append(name)
        except PienvError:
            busy.append(name)
    return CachesPruned(removed, busy)
