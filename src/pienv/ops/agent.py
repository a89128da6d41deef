"""`pienv agent list` and `pienv prune --caches` (the agent's run-time part: runloop.agent)."""

from __future__ import annotations

from dataclasses import dataclass

from pienv.config import PRESETS, Config
from pienv.context import Context
from pienv.errors import PienvError
from pienv.runloop.agent import volume_prefix


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
