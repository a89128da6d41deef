"""The typer command line: parse, call one operation, render its result.

One module per command family (run, status, history, refs, worktree, recovery, maint,
agent); the table below says which module holds each command, in the order `pienv --help`
lists them. A module is imported only when one of its commands runs (or when `--help` lists
them all), and heavy modules (docker, networkx, dulwich, rich tables) load inside the commands
that need them. entry.py is the console script: it runs the plain forms of `run`/`shell`
without importing this package, and maps PienvError and internal errors to their exit codes;
``invoke`` below maps click's own errors (usage, abort, bare group).

To add a command: write it in its family's module (or a new module with ``app = family()``),
then name it in COMMANDS.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator, MutableMapping
from functools import cache
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pienv import ui
from pienv.errors import UsageError

# command -> the pienv.cli module defining it; a trailing "/" marks a group (the module's
# whole app is the command, e.g. `pienv worktree add`).
COMMANDS: dict[str, str] = {
    "run": "run",
    "shell": "run",
    "status": "status",
    "log": "history",
    "show": "history",
    "diff": "history",
    "branch": "refs",
    "checkout": "refs",
    "reset": "refs",
    "tag": "refs",
    "reflog": "refs",
    "bisect": "timetravel",
    "rebase": "timetravel",
    "export": "timetravel",
    "orphans": "recovery",
    "recover": "recovery",
    "clean-orphans": "recovery",
    "unlock": "recovery",
    "prune": "maint",
    "flatten": "maint",
    "doctor": "maint",
    "fsck": "maint",
    "remote": "remotes/",
    "push": "sharing",
    "fetch": "sharing",
    "pull": "sharing",
    "clone": "sharing",
    "worktree": "worktree/",
    "base": "base/",
    "agent": "agent/",
    "egress": "egress/",
}


@cache
def _family(module: str) -> Any:
    """The click group of the module ``module`` (built once)."""
    mod = importlib.import_module(f"pienv.cli.{module}")
    return typer.main.get_group(mod.app)


def load(name: str) -> Any:
    """The click command ``pienv NAME``, importing its module."""
    where = COMMANDS[name]
    if where.endswith("/"):
        group = _family(where[:-1])
        group.name = name
        return group
    return _family(where).commands[name]


class _LazyCommands(MutableMapping[str, Any]):
    """The root group's commands: every name known at once, each loaded when looked up."""

    def __getitem__(self, name: str) -> Any:
        return load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)

    def __setitem__(self, name: str, command: Any) -> None:
        raise TypeError(f"name {name!r} in pienv.cli.COMMANDS instead")

    def __delitem__(self, name: str) -> None:
        raise TypeError("pienv.cli.COMMANDS is fixed")

    def get(self, name: str, default: Any = None) -> Any:
        return load(name) if name in COMMANDS else default


class _LazyGroup(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["commands"] = None  # the root app registers none itself
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)  # names only: nothing imported until asked for


app = typer.Typer(
    cls=_LazyGroup,
    add_completion=False,  # pienv's own options below: they take the shell to install for
    help="A git-like versioned environment in Docker for coding agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from pienv import __version__

        ui.out(f"pienv {__version__}")
        raise typer.Exit(0)


SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _shell(value: str) -> str:
    """The shell named, else the one pienv runs under, else $SHELL's (a script run by `sh`
    still installs for the user's bash); UsageError when none is supported."""
    import os

    if value != "auto":
        if value not in SHELLS:
            raise UsageError(f"cannot complete for shell {value!r}: one of {', '.join(SHELLS)}")
        return value
    from typer._completion_shared import _get_shell_name

    for name in (_get_shell_name(), os.path.basename(os.environ.get("SHELL", ""))):
        if name in SHELLS:
            return name
    raise UsageError(
        "cannot tell which shell to complete for: name it, e.g. "
        "`pienv --install-completion bash` (bash, zsh, fish, powershell, pwsh)"
    )


def _install_completion(value: str | None) -> None:
    if value is None:
        return
    from typer._completion_classes import completion_init
    from typer._completion_shared import install

    completion_init()
    shell, path = install(shell=_shell(value), prog_name="pienv")
    ui.out(f"{shell} completion installed in {path}")
    ui.out("Completion will take effect once you restart the terminal")
    raise typer.Exit(0)


def _show_completion(value: str | None) -> None:
    if value is None:
        return
    from typer._completion_classes import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    ui.out(get_completion_script(prog_name="pienv", complete_var=COMPLETE_VAR, shell=_shell(value)))
    raise typer.Exit(0)


COMPLETE_VAR = "_PIENV_COMPLETE"


@app.callback()
def _root(
    install_completion: Annotated[
        str | None,
        typer.Option(
            "--install-completion",
            metavar="[SHELL]",
            callback=_install_completion,
            expose_value=False,
            is_eager=True,
            help="Install completion for SHELL (default: the current shell, else $SHELL's).",
        ),
    ] = None,
    show_completion: Annotated[
        str | None,
        typer.Option(
            "--show-completion",
            metavar="[SHELL]",
            callback=_show_completion,
            expose_value=False,
            is_eager=True,
            help="Show completion for SHELL, to copy it or customize the installation.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,  # answered before click asks for a command
            help="Print pienv's version and exit.",
        ),
    ] = False,
) -> None:
    pass


# -- the error handler for what click raises ---------------------------------------------------


def _click_exceptions() -> Any:
    """Click's exception classes: typer >= 0.26 vendors click as typer._click (no `click`
    package is installed then); older typer depends on click itself."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _usage_line(exc: Any, click: Any) -> str:
    message = str(exc.format_message()).rstrip(".")
    if not isinstance(exc, click.UsageError):
        return message
    path = exc.ctx.command_path if exc.ctx is not None else "pienv"
    return f"{message[:1].lower()}{message[1:]} (see `{path} --help`)"


def invoke(args: list[str]) -> int:
    """Run the typer app on ``args``; its exit code. PienvError is left to the caller."""
    import os

    if COMPLETE_VAR in os.environ:  # a shell asking for completions: typer's answers
        from typer._completion_classes import completion_init

        completion_init()
    if args[:1] in (["--install-completion"], ["--show-completion"]):
        # SHELL is optional (click options take a value or none, not both): read it here.
        shell = args[1] if len(args) > 1 and not args[1].startswith("-") else "auto"
        try:
            (_install_completion if args[0] == "--install-completion" else _show_completion)(shell)
        except typer.Exit:
            return 0
    try:
        rc = app(args=args, standalone_mode=False, prog_name="pienv")
    except SystemExit:
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            # typer's answer to a reader gone (`pienv log | head`) is exit 1; git's is 0.
            return 0
        raise
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        return 130
    except Exception as exc:
        click = _click_exceptions()
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `pienv` (or `pienv base`)
            with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout closed
                ui.out(getattr(exc, "ctx").get_help())  # noqa: B009 (typed as Exception)
            return 0
        if isinstance(exc, click.ClickException):
            # Usage errors exit 2 (click's and argparse's code; git's 129 is its own), every
            # other error 1; both as the one line every pienv error is (docs/commands.md).
            ui.error(_usage_line(exc, click))
            return 2 if isinstance(exc, click.UsageError) else 1
        raise
    return rc if isinstance(rc, int) else 0
