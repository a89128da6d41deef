"""`pienv export --dockerfile [REV]`: a branch as a Dockerfile, by the same replay as
`pienv rebase` (ops.replay): one RUN per replayable run, in the run's user, working
directory and wrapper (so PATH, HOME and npm's prefix are what the run had), interactive
sessions listed as comments to redo by hand.

It starts from the branch's root commit (the base plus pienv's small layer for the host
user: passwd entry, home, sudo rule, mount points), named by a build argument so a team can
point it at a registry copy."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pienv.model import JsonResult, short
from pienv.ops import probe, replay
from pienv.ops.commits import host_ids
from pienv.ops.context import Context
from pienv.ops.sandbox import ENV_FILE, WRAPPER


@dataclass(frozen=True)
class Exported(JsonResult):
    head: str
    root: str
    dockerfile: str
    replayed: int
    by_hand: int


def _comment(text: str) -> str:
    return "\n".join(f"# {line}" for line in text.splitlines() or [""])


def run_line(command: tuple[str, ...], env: dict[str, str], exit_code: int | None) -> str:
    """The RUN of one replayed run: exec form (JSON, so any argument survives), through
    `env` (a RUN has no env file) and pienv's wrapper. A run that exited non-zero, and was
    committed so, must not stop the build when it exits the same way again."""
    argv = ["/bin/sh", "-c", WRAPPER, ENV_FILE, *command]
    if exit_code:
        check = f'"$0" "$@"; c=$?; [ $c -eq 0 ] || [ $c -eq {exit_code} ] || exit $c'
        argv = ["/bin/sh", "-c", check, *argv]
    pairs = [f"{k}={v}" for k, v in sorted(env.items())]
    return "RUN " + json.dumps(["env", *pairs, *argv])


def dockerfile(ctx: Context, rev: str | None) -> Exported:
    refs = ctx.refs()
    head = ctx.resolve(rev or "HEAD", refs)
    root, items = replay.plan(ctx.store.commits(), head, (ctx.config.agent.command,))
    env = probe.replay_env(ctx, None)
    base = root.message.removeprefix("root: base ").split(" (")[0] if root.message else ""
    lines = [
        f"# pienv export of {rev or 'HEAD'} ({short(head)}): its runs, replayed.",
        "# Build: docker build -t NAME - < Dockerfile",
        f"# The root commit {root.short}: base {base or '?'} plus pienv's layer for the host user.",
        f"ARG PIENV_ROOT={ctx.repository()}:{root.short}",
        "FROM ${PIENV_ROOT}",
    ]
    user = workdir = ""
    replayed = by_hand = 0
    for item in items:
        c = item.commit
        if item.action == "skip":
            continue
        lines.append("")
        lines.append(_comment(f"{c.short} {c.message}"))
        if item.action == "manual":
            by_hand += 1
            cmd = " ".join(c.command) or "(none)"
            lines.append(_comment(f"BY HAND: {item.why}; command: {cmd}"))
            continue
        replayed += 1
        if (item.user or host_ids()) != user:
            user = item.user or host_ids()
            lines.append(f"USER {user}")
        if item.workdir != workdir:
            workdir = item.workdir
            lines.append(f"WORKDIR {workdir}")
        lines.append(run_line(c.command, env, c.exit_code))
    return Exported(head, root.id, "\n".join(lines) + "\n", replayed, by_hand)
