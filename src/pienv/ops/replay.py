"""Which of a branch's commits can be replayed from what they recorded (shared by `pienv
rebase` and `pienv export --dockerfile`). Pure: commits in, a plan out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pienv.config import PRESETS, Config
from pienv.errors import UsageError
from pienv.model import Commit, short
from pienv.runloop.sandbox import LOGIN_SHELL, WORKSPACE

# replay: run the recorded command again; manual: an interactive session (or anything whose
# effect is not a recorded command), redone by hand; skip: pienv's own bookkeeping commits,
# which a fresh root and later runs make again.
Action = Literal["replay", "manual", "skip"]


@dataclass(frozen=True)
class Item:
    commit: Commit
    action: Action
    why: str = ""

    @property
    def user(self) -> str:
        return self.commit.user

    @property
    def workdir(self) -> str:
        return self.commit.workdir or WORKSPACE


def session_commands(config: Config) -> tuple[tuple[str, ...], ...]:
    """Commands that start an agent session: the configured agent's and every preset's (a
    session recorded before the config changed agents is still one)."""
    return (config.agent.command, *(p.command for p in PRESETS.values()))


def first_parent_line(commits: Mapping[str, Commit], head: str) -> list[Commit]:
    """The commits from the root to ``head``, by first parents (oldest first)."""
    line = []
    cur: str | None = head
    while cur:
        commit = commits.get(cur)
        if commit is None:
            raise UsageError(f"commit {short(cur)} is not in the commit index")
        line.append(commit)
        cur = commit.parents[0] if commit.parents else None
    return line[::-1]


def classify(commit: Commit, agent_commands: Sequence[tuple[str, ...]] = ()) -> Item:
    """What a replay does with ``commit`` (``agent_commands``: commands that start an agent
    session, interactive by nature)."""
    if commit.kind in ("prepare", "flatten", "root"):
        return Item(commit, "skip", f"pienv's own {commit.kind} commit")
    if commit.kind == "reset-system":
        return Item(commit, "manual", "a reset --system (a new base keeping /home)")
    if not commit.command:
        return Item(commit, "manual", "no command recorded")
    if commit.message == "shell" or commit.command == LOGIN_SHELL:
        return Item(commit, "manual", "an interactive shell")
    if commit.command in agent_commands:
        return Item(commit, "manual", "an agent session")
    return Item(commit, "replay")


def plan(
    commits: Mapping[str, Commit], head: str, agent_commands: Sequence[tuple[str, ...]] = ()
) -> tuple[Commit, list[Item]]:
    """The root of ``head``'s line and what to do with each commit after it, oldest first."""
    line = first_parent_line(commits, head)
    return line[0], [classify(c, agent_commands) for c in line[1:]]
