"""`pienv run` / `pienv shell`: argv read without typer (the run loop's start-up fast path),
and the runner that reports a run's result. Both parsers end here.

Importing typer and building the click command tree costs ~45 ms, a sixth of a whole no-op
`docker run`. So the entry point reads the plain forms of these two commands itself and
hands everything else (``--help``, unknown or malformed options, odd values) to the typer
CLI, which parses the same options and reports errors. tests/test_runargs.py checks, for
both commands, that this table names exactly the options typer declares and that both
parsers build the same RunRequest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pienv import ui
from pienv.errors import UsageError
from pienv.report import Reporter

if TYPE_CHECKING:
    from pienv.ops.run import RunRequest
    from pienv.runloop.finish import RunResult

# option spelling -> RunRequest field; "env" and "ports" collect repeats, the others keep
# the last.
VALUED = {
    "run": {
        "--branch": "branch",
        "-b": "branch",
        "--workdir": "workdir",
        "-w": "workdir",
        "--message": "message",
        "-m": "message",
        "--wait": "wait",
        "--env": "env",
        "-e": "env",
        "--agent": "agent",
        "--egress": "egress",
        "--cpus": "cpus",
        "--memory": "memory",
        "--pids": "pids",
        "--publish": "ports",
        "-p": "ports",
        "--gpus": "gpus",
    },
    "shell": {"--branch": "branch", "-b": "branch", "--workdir": "workdir", "-w": "workdir"},
}
FLAGS = {"run": {"--no-commit": "no_commit"}, "shell": {"--no-commit": "no_commit"}}


def parse(argv: list[str]) -> RunRequest | None:
    """The RunRequest for ``argv`` (without the program name), or None: let typer parse it."""
    if not argv or argv[0] not in VALUED:
        return None
    name, rest = argv[0], argv[1:]
    valued, flags = VALUED[name], FLAGS[name]
    fields: dict[str, Any] = {}
    envs: list[str] = []
    ports: list[str] = []
    command: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if arg == "--":
            command = rest[i:]
            break
        if not arg.startswith("-") or arg == "-":
            command = rest[i - 1 :]  # run stops reading options at its command
            break
        if arg in flags:
            fields[flags[arg]] = True
            continue
        if arg.startswith("--"):
            opt, eq, value = arg.partition("=")
        else:
            opt, eq, value = arg[:2], "", arg[2:]
        if opt not in valued:
            return None  # --help, -h, unknown: typer's answer
        if not eq and not value:
            if i == len(rest):
                return None
            value = rest[i]
            i += 1
        if not value or value.startswith("-"):
            return None  # empty or option-like values: typer decides what they mean
        if valued[opt] == "env":
            envs.append(value)
        elif valued[opt] == "ports":
            ports.append(value)
        else:
            fields[valued[opt]] = value
    if command and name == "shell":
        return None
    return build(name, command, envs=envs, ports=ports, **fields)


def build(
    name: str,
    command: list[str] | None = None,
    *,
    branch: str | None = None,
    workdir: str | Path | None = None,
    message: str | None = None,
    no_commit: bool = False,
    wait: str | float | None = None,
    envs: list[str] | None = None,
    agent: str | None = None,
    egress: str | None = None,
    cpus: str | None = None,
    memory: str | None = None,
    pids: str | None = None,
    ports: list[str] | None = None,
    gpus: str | None = None,
) -> RunRequest | None:
    """The one place a RunRequest is made from command-line values (both parsers use it)."""
    from pienv.ops.run import RunRequest

    if isinstance(wait, str):
        try:
            wait = float(wait)
        except ValueError:
            return None
    if wait is not None and not 0 <= wait < 1e9:  # nan, inf and negatives too
        raise UsageError("--wait takes a number of seconds, 0 or more (0: forever)")
    shell = name == "shell"
    return RunRequest(
        command=tuple(command or ()),
        branch=branch,
        workdir=Path(workdir) if workdir is not None else None,
        message=message,
        no_commit=no_commit,
        # shell needs only a terminal to read from; run also wants one to write to.
        interactive=ui.isatty(sys.stdin) and (shell or ui.isatty(sys.stdout)),
        shell=shell,
        wait=wait,
        env_names=tuple(envs or ()),
        agent=agent,
        egress=egress,
        limits={
            k: v for k, v in (("cpus", cpus), ("memory", memory), ("pids", pids)) if v is not None
        },
        ports=tuple(ports or ()),
        gpus=gpus,
    )


def run_command(req: RunRequest) -> int:
    """`pienv run` / `pienv shell`: run, report what happened on stderr, return the exit code.

    A commit handed to the finalizer (a background commit) is reported by the finalizer: on
    a pipe or file the same result line, after the commit (so a reader of pienv's stderr
    sees the whole output, and EOF, only once the commit has landed); on a terminal nothing
    unless something went wrong or needs saying, since the prompt is already back."""
    import os

    from pienv.context import Context
    from pienv.ops import run as runmod

    def sink(stream: TextIO | None) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            if stream is not None:  # None: pienv was started with this stream closed
                stream.buffer.write(data)
                stream.flush()

        return write

    stdin_fd = None if sys.stdin is None or sys.stdin.closed else sys.stdin.fileno()
    result = runmod.run(
        Context(report=_Reporter()),
        req,
        Path.cwd(),
        os.environ,
        sink(sys.stdout),
        sink(sys.stderr),
        stdin_fd,
        report=lambda done, exc: _report_later(req, done, exc),
    )
    for line in result.notes:
        ui.note(line)
    if not result.pending:
        _report(req, result)
    return result.exit_code


class _Reporter(Reporter):
    """What the run says while it works (a busy branch it waits for), shown at once. The
    run path's own: cli/common.py's ConsoleReporter would bring typer onto the hot path."""

    def note(self, text: str) -> None:
        ui.note(text)

    def warn(self, text: str) -> None:
        ui.warn(text)


def _report(req: RunRequest, result: RunResult) -> None:
    """The line that says what became of a run's environment changes."""
    from pienv.locks import name_of

    if result.commit:
        ui.note(
            f"committed {result.commit.short} on {name_of(result.branch)} "
            f"(+{ui.size(result.commit.size)})"
        )
    elif req.no_commit and result.discarded:
        ui.note("--no-commit: the environment changes were discarded")
    else:
        ui.note("nothing changed in the environment; no commit")


def _report_later(req: RunRequest, result: RunResult | None, exc: Exception | None) -> None:
    """In the finalizer, after a background commit: its stderr is pienv's."""
    from pienv.errors import PienvError

    if exc is not None:
        if isinstance(exc, PienvError):
            ui.error(f"background commit: {exc}")
        else:
            ui.error(
                f"internal error in the background commit: {exc.__class__.__name__}: {exc} "
                "(traceback in the store's pienv.log)"
            )
        return
    assert result is not None
    for line in result.notes:  # e.g. the branch moved meanwhile: never silent
        ui.note(line)
    if not ui.isatty(sys.stderr):
        _report(req, result)
