"""Time travel: `pienv bisect ...`, `pienv rebase`, `pienv export --dockerfile`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pienv import ui
from pienv.cli.common import complete_branch, complete_rev, context, family, selected
from pienv.errors import UsageError

if TYPE_CHECKING:
    from pienv.ops.bisect import Step
    from pienv.ops.rebase import Outcome

app = family()
bisect_app = family("Find the env commit that broke a command (as git bisect).", group=True)
app.add_typer(bisect_app, name="bisect")

RevArg = Annotated[
    str | None,
    typer.Argument(
        metavar="REV", help="Default: the commit to test next.", autocompletion=complete_rev
    ),
]


def _say_step(step: Step) -> None:
    from pienv.model import short

    if step.first_bad:
        ui.out(f"{short(step.first_bad)} is the first bad commit.")
        _show(step.first_bad)
    elif step.ambiguous:
        ui.out("The first bad commit could be any of (skipped commits hide it):")
        for cid in step.ambiguous:
            ui.out(f"  {short(cid)}")
    elif step.next:
        ui.out(f"Bisecting: {step.remaining} commits left to test; next: {short(step.next)}.")
        ui.note("test it with `pienv bisect run -- CMD`, or mark it: `pienv bisect good|bad|skip`")


def _show(cid: str) -> None:
    from pienv.model import short

    commit = context().commit(cid)
    cmd = " ".join(commit.command)
    ui.out(f"  {short(cid)} {commit.message}" + (f"  ({cmd})" if cmd else ""))


@bisect_app.command("start")
def bisect_start(
    bad: Annotated[
        str,
        typer.Argument(
            metavar="BAD", help="A commit where CMD fails.", autocompletion=complete_rev
        ),
    ],
    good: Annotated[
        list[str],
        typer.Argument(
            metavar="GOOD...",
            help="Commits where CMD works (ancestors of BAD).",
            autocompletion=complete_rev,
        ),
    ],
    with_code: Annotated[
        bool,
        typer.Option("--with-code", help="Probe against the code recorded with each commit."),
    ] = False,
) -> None:
    """Start bisecting between BAD and one or more GOOD env commits (first parents)."""
    from pienv.ops import bisect

    _say_step(bisect.start(selected(), bad, good, with_code))


def _mark(what: str, rev: str | None) -> None:
    from pienv.ops import bisect

    _say_step(bisect.mark(selected(), what, rev))  # type: ignore[arg-type]


@bisect_app.command("good")
def bisect_good(rev: RevArg = None) -> None:
    """Mark REV (default: the commit to test next) good."""
    _mark("good", rev)


@bisect_app.command("bad")
def bisect_bad(rev: RevArg = None) -> None:
    """Mark REV (default: the commit to test next) bad."""
    _mark("bad", rev)


@bisect_app.command("skip")
def bisect_skip(rev: RevArg = None) -> None:
    """Mark REV (default: the commit to test next) untestable."""
    _mark("skip", rev)


@bisect_app.command("run", context_settings={"allow_interspersed_args": False})
def bisect_run(
    command: Annotated[list[str], typer.Argument(metavar="CMD", help="The test (after --).")],
    workdir: Annotated[
        Path | None, typer.Option("--workdir", "-w", metavar="DIR", help="The workspace.")
    ] = None,
) -> None:
    """Run CMD on each candidate in a throwaway container: 0 good, 125 skip, 1-127 bad,
    anything else stops. No env commit is made and no branch moves."""
    from pienv.model import short
    from pienv.ops import bisect
    from pienv.runloop.workspace import find_workspace

    ws = find_workspace(Path.cwd(), workdir)
    out = bisect.run(selected(), tuple(command), ws.path)
    for p in out.probed:
        ui.note(f"{short(p.commit)}: exit {p.exit_code} -> {p.mark or 'abort'}")
    if out.aborted is not None:
        raise UsageError(
            f"bisect run stopped: `{' '.join(command)}` exited {out.aborted.exit_code} "
            f"on {short(out.aborted.commit)} (above 127)",
            hint="fix the test, then `pienv bisect run` again",
        )
    ui.out(f"{ui.plural(len(out.probed), 'probe')}.")
    _say_step(out.step)


@bisect_app.command("log")
def bisect_log() -> None:
    """What the bisection has marked so far."""
    from pienv.ops import bisect

    for line in bisect.log(context()):
        ui.out(line)


@bisect_app.command("reset")
def bisect_reset() -> None:
    """End the bisection (no ref was moved by it)."""
    from pienv.ops import bisect

    ui.out("Bisection ended." if bisect.reset(context()) else "No bisection was under way.")


def _say_rebase(out: Outcome) -> None:
    from pienv.model import short

    if out.aborted:
        ui.out(f"Rebase aborted: {out.branch} stays at {short(out.old_head)}.")
        return
    for old, new in out.replayed:
        ui.note(f"{short(old)} -> {short(new) if new else '(dropped)'}")
    if out.stopped_at:
        ui.out(f"Rebase stopped at {short(out.stopped_at)}: {out.reason}.")
        ui.note(
            f"HEAD is detached at {short(out.new_head)}: fix it there with `pienv run`, then "
            "`pienv rebase --continue` (or --skip, --abort)"
        )
        return
    ui.out(f"{out.branch} is now at {short(out.new_head)} (was {short(out.old_head)}).")
    ui.note(f"the old head stays in the reflog: `pienv reset {out.branch}@{{1}}` undoes it")


@app.command()
def rebase(
    branch: Annotated[
        str | None,
        typer.Argument(metavar="BRANCH", help="Default: HEAD's.", autocompletion=complete_branch),
    ] = None,
    onto: Annotated[
        str | None,
        typer.Option(
            "--onto", metavar="BASE", help="An image (a fresh root is made) or an env revision."
        ),
    ] = None,
    cont: Annotated[bool, typer.Option("--continue", help="Go on after a stop.")] = False,
    skip: Annotated[bool, typer.Option("--skip", help="Drop the commit it stopped at.")] = False,
    abort: Annotated[bool, typer.Option("--abort", help="Give up; nothing changes.")] = False,
) -> None:
    """Replay a branch's recorded runs on a new base.

    It stops at an interactive session or a failing command: fix it with `pienv run` on
    the detached HEAD, then --continue (or --skip, --abort)."""
    from pienv.ops import rebase as ops

    ctx = selected()  # BRANCH's default: the branch rule 11 chooses here
    chosen = [
        name for name, on in (("--continue", cont), ("--skip", skip), ("--abort", abort)) if on
    ]
    if len(chosen) > 1 or (chosen and onto):
        raise UsageError("use one of --onto, --continue, --skip, --abort")
    if cont:
        out = ops.continue_(ctx)
    elif skip:
        out = ops.skip(ctx)
    elif abort:
        out = ops.abort(ctx)
    elif onto:
        out = ops.start(ctx, onto, branch)
    else:
        raise UsageError("usage: pienv rebase --onto BASE [BRANCH]")
    _say_rebase(out)
    if out.stopped_at:
        raise typer.Exit(1)


@app.command()
def export(
    rev: Annotated[
        str | None,
        typer.Argument(metavar="REV", help="Default: HEAD.", autocompletion=complete_rev),
    ] = None,
    dockerfile: Annotated[
        bool, typer.Option("--dockerfile", help="As a Dockerfile (the one format so far).")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE", help="Default: stdout.")
    ] = None,
) -> None:
    """A branch as a Dockerfile replaying its runs.

    Build it with `docker build -t NAME - < FILE`; interactive sessions are comments."""
    from pienv.ops import export as ops

    if not dockerfile:
        raise UsageError("usage: pienv export --dockerfile [REV]")
    out = ops.dockerfile(selected(), rev)
    if output is None:
        ui.out(out.dockerfile.rstrip("\n"))
    else:
        from pienv.store import write_atomic

        write_atomic(output, out.dockerfile.encode())
    if out.by_hand:
        ui.warn(f"{out.by_hand} interactive session(s) are comments to redo by hand")
