"""`pienv egress show|allow|deny|mode|reset|log|learn`: the branch's network boundary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pienv import ui
from pienv.cli.common import BranchOpt, JsonOpt, complete_rev, context, family, selected

if TYPE_CHECKING:
    from pienv.context import Context
    from pienv.ops.egress import PolicyResult

app = family(
    "Egress: the hosts a branch's agent may reach; audit.",
    group=True,
)

RulesArg = Annotated[
    list[str],
    typer.Argument(
        metavar="HOST|*.DOMAIN[:PORT]...",
        help="Host names; *.example.org for its subdomains; :PORT for other than 80/443.",
    ),
]
RevArg = Annotated[
    str | None,
    typer.Argument(metavar="REV", help="A commit (default: HEAD).", autocompletion=complete_rev),
]


def _editing(branch: str | None) -> Context:
    """The selected branch's context, the store made first: a policy may come before the
    first run."""
    context().store.init()
    return selected(branch)


def _render(r: PolicyResult, as_json: bool) -> None:
    if as_json:
        ui.emit_json(r.to_json())
        return
    where = f"branch {r.branch}" if r.branch else "detached HEAD"
    ui.out(f"{where}: egress {r.mode}  (policy {r.hash[:12]}, {r.source})")
    for rule in r.allow:
        ui.out(f"  allow {rule}")
    for rule in r.deny:
        ui.out(f"  deny  {rule}")
    if r.mode == "open":
        ui.note(
            "open: runs reach any host directly, unrecorded (`pienv egress allow HOST` opts in)"
        )
    if r.added:
        ui.note(f"added what the agent needs: {', '.join(r.added)}")


@app.command("show")
def egress_show(branch: BranchOpt = None, as_json: JsonOpt = False) -> None:
    """The branch's policy: mode (open, allow-list, none) and its rules."""
    from pienv.ops import egress

    _render(egress.show(selected(branch)), as_json)


@app.command("allow")
def egress_allow(
    rules: RulesArg,
    branch: BranchOpt = None,
    no_agent: Annotated[
        bool, typer.Option("--no-agent", help="Do not add the agent's provider and registry.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Allow hosts. On an open branch this starts an allow-list (with the agent's own hosts)."""
    from pienv.ops import egress

    _render(egress.allow(_editing(branch), rules, with_agent=not no_agent), as_json)


@app.command("deny")
def egress_deny(rules: RulesArg, branch: BranchOpt = None, as_json: JsonOpt = False) -> None:
    """Deny hosts (in every mode; a deny wins over an allow)."""
    from pienv.ops import egress

    _render(egress.deny(_editing(branch), rules), as_json)


@app.command("mode")
def egress_mode(
    mode: Annotated[
        str,
        typer.Argument(
            metavar="open|allow-list|none",
            help="open: no proxy; allow-list: only listed hosts; none: no network.",
        ),
    ],
    branch: BranchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the mode: open (no proxy), allow-list (only listed hosts), none (no network)."""
    from pienv.ops import egress

    _render(egress.set_mode(_editing(branch), mode), as_json)


@app.command("reset")
def egress_reset(branch: BranchOpt = None, as_json: JsonOpt = False) -> None:
    """Back to the default: open, nothing listed."""
    from pienv.ops import egress

    _render(egress.reset(_editing(branch)), as_json)


@app.command("log")
def egress_log(rev: RevArg = None, branch: BranchOpt = None, as_json: JsonOpt = False) -> None:
    """Every connection attempt of the run that made REV: time, host, port, verdict, bytes."""
    from pienv.ops import egress

    r = egress.audit(selected(branch), rev)
    if as_json:
        ui.emit_json(r.to_json())
        return
    ui.out(f"commit {r.commit[:12]}  run {r.run}  policy {r.policy[:12] or 'open'}")
    for a in r.attempts:
        verdict = "allowed" if a.allowed else "DENIED "
        sent = "?" if a.sent is None else ui.size(a.sent)
        received = "?" if a.received is None else ui.size(a.received)
        why = f"  ({a.why})" if a.why else ""
        ui.out(f"{a.time}  {verdict}  {a.host}:{a.port}  out {sent} in {received}{why}")
    if not r.attempts:
        ui.note("the run made no connection")


@app.command("learn")
def egress_learn(rev: RevArg = None, branch: BranchOpt = None, as_json: JsonOpt = False) -> None:
    """The allow-list REV's run needed (from `--egress observe`), to review and apply."""
    from pienv.ops import egress

    r = egress.learn(selected(branch), rev)
    if as_json:
        ui.emit_json(r.to_json())
        return
    for rule in r.rules:
        ui.out(rule)
    if r.new:
        ui.note(f"to allow them: pienv egress allow {' '.join(r.new)}")
    else:
        ui.note("the branch allows all of them already")
