"""What the command modules share: option types, completion, the context a command runs
with (its branch chosen by rule 11) and the Reporter that shows what an operation says.

Nothing heavy at module level: every command module imports this one, and `pienv --help`
imports every command module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pienv import ui
from pienv.report import Reporter

if TYPE_CHECKING:  # free at run time: ops modules load inside the commands that need them
    from pienv.context import Context
    from pienv.ops.workspace import Selection


def family(help: str | None = None, *, group: bool = False) -> typer.Typer:
    """The typer app of one command module: its commands, or (``group``) a subcommand group
    such as `pienv worktree`. cli/__init__.py loads it when one of its commands is asked for."""
    return typer.Typer(
        help=help,
        no_args_is_help=group,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of text (keys in docs/json.md).")
]

BRANCH_HELP = "The env branch (default: PIENV_PROFILE, the worktree's, or HEAD's)."
WORKDIR_HELP = "Mount DIR as the workspace (default: the git repo around you)."
NO_COMMIT_HELP = "Discard the run's environment changes."


# -- completion (ops/names.py reads the store's files directly) -------------------------------


def _names(kinds: tuple[str, ...], incomplete: str) -> list[str]:
    from pienv.ops.names import ref_names

    return [n for n in ref_names(kinds) if n.startswith(incomplete)]


def complete_branch(incomplete: str) -> list[str]:
    return _names(("branches",), incomplete)


def complete_tag(incomplete: str) -> list[str]:
    return _names(("tags",), incomplete)


def complete_ref(incomplete: str) -> list[str]:
    return _names(("branches", "tags"), incomplete)


def complete_remote(incomplete: str) -> list[str]:
    from pienv.ops.names import remote_names

    return [n for n in remote_names() if n.startswith(incomplete)]


def complete_rev(incomplete: str) -> list[str]:
    """Revisions: HEAD, branches, tags, and commit ids once 4+ hex digits are typed."""
    found = _names(("head", "branches", "tags"), incomplete)
    if len(incomplete) >= 4 and set(incomplete) <= set("0123456789abcdef"):
        from pienv.ops.names import commit_ids

        found += [c for c in commit_ids(incomplete) if c not in found]
    return found


BranchOpt = Annotated[
    str | None,
    typer.Option(
        "--branch", "-b", metavar="BRANCH", help=BRANCH_HELP, autocompletion=complete_branch
    ),
]
WorkdirOpt = Annotated[
    Path | None, typer.Option("--workdir", "-w", metavar="DIR", help=WORKDIR_HELP)
]
NoCommitOpt = Annotated[bool, typer.Option("--no-commit", help=NO_COMMIT_HELP)]


# -- the context and its reporter --------------------------------------------------------------


# (what, done, total), as Reporter.progress takes them
ProgressFn = Callable[[str, int | None, int | None], None]


class ConsoleReporter(Reporter):
    """Shows notes and warnings on stderr as they happen; progress goes to ``on_progress``
    (a command's activity line or bar) when the command sets one."""

    def __init__(self) -> None:
        super().__init__()
        self.on_progress: ProgressFn | None = None

    def note(self, text: str) -> None:
        ui.note(text)

    def warn(self, text: str) -> None:
        ui.warn(text)

    def progress(self, what: str, done: int | None = None, total: int | None = None) -> None:
        if self.on_progress is not None:
            self.on_progress(what, done, total)


def context() -> Context:
    from pienv.context import Context

    return Context(report=ConsoleReporter())


def selection(explicit: str | None = None) -> tuple[Context, Selection]:
    """A Context whose HEAD is the branch the selection rule picks here (rule 11, docs/rules.md):
    --branch (``explicit``) > PIENV_PROFILE > worktree binding > HEAD, and that Selection.
    Says which rule chose it when that is not the obvious one."""
    from pienv.ops.workspace import select

    ctx = context()
    sel = select(ctx, Path.cwd(), os.environ, explicit)
    if not sel.by_default:
        ctx.report.note(f"branch {sel.branch} (chosen by {sel.rule})")
    return ctx, sel


def selected(explicit: str | None = None) -> Context:
    return selection(explicit)[0]


def reporting(ctx: Context, on_progress: ProgressFn) -> ConsoleReporter:
    """``ctx``'s reporter, now showing progress through ``on_progress``."""
    report = ctx.report
    assert isinstance(report, ConsoleReporter)
    report.on_progress = on_progress
    return report
