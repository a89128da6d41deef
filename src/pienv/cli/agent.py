"""`pienv agent list`: the agent presets."""

from __future__ import annotations

from pienv import ui
from pienv.cli.common import context, family

app = family("Agent presets: what `pienv run` installs and starts.", group=True)


@app.command("list")
def agent_list() -> None:
    """The agent presets: command, pinned install, variables passed, where the login lives.

    `[agent] preset` picks one (`pienv run --agent NAME` for one run); `[agent] version`
    moves its pin. The configured agent is marked with `*`.
    """
    from pienv.ops import agent as agent_ops

    rows = agent_ops.list_agents(context().config)
    ui.table(
        [
            "",
            "agent",
            "version",
            "passes (when set)",
            "state (a volume, never committed)",
            "install",
        ],
        keep=("agent", "version", "install"),
        rows=[
            (
                "*" if r.configured else "",
                r.name,
                r.version or "-",
                r.env or "-",
                r.state or "-",
                r.install or "-",
            )
            for r in rows
        ],
    )
    ui.note(
        "a run also passes TERM, COLORTERM, LANG, LANGUAGE, TZ and LC_*; -e NAME adds one; "
        "credentials of the deny-list never pass (docs/security.md)"
    )
