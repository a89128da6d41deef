"""`pienv run` and `pienv shell` when typer parses them (runargs.py reads the plain forms)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pienv.cli.common import BranchOpt, NoCommitOpt, WorkdirOpt, family
from pienv.errors import UsageError

app = family()


# The run's limits, ports and GPUs (docs/limits.md).
CpusOpt = Annotated[
    str | None,
    typer.Option(
        "--cpus", metavar="N", help="Cores the run may use (default: all but one; 0: no limit)."
    ),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory",
        metavar="SIZE",
        help="Memory the run may use, e.g. 4g (default: 3/4 of the host's; 0: no limit).",
    ),
]
PidsOpt = Annotated[
    str | None,
    typer.Option("--pids", metavar="N", help="Processes the run may have (default 4096)."),
]
PublishOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--publish",
        "-p",
        metavar="PORT",
        help="Publish the container's PORT (or HOST_PORT:PORT) on 127.0.0.1 (repeatable).",
    ),
]
GpusOpt = Annotated[
    str | None,
    typer.Option("--gpus", metavar="all|N", help="Pass GPUs through (engines that can)."),
]


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="CMD", help="The command to run instead of the agent (after --)."),
    ] = None,
    branch: BranchOpt = None,
    workdir: WorkdirOpt = None,
    message: Annotated[
        str | None, typer.Option("--message", "-m", metavar="MSG", help="The env commit's message.")
    ] = None,
    no_commit: NoCommitOpt = False,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait", metavar="SECONDS", help="Wait up to SECONDS for a busy branch (0: forever)."
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", metavar="NAME", help="Also pass the host variable NAME (repeatable)."
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Run this agent preset instead of the configured one (`pienv agent list`).",
        ),
    ] = None,
    egress: Annotated[
        str | None,
        typer.Option(
            "--egress",
            metavar="MODE",
            help="This run's network: observe (open, every connection recorded), "
            "allow-list, none, open (default: the branch's `pienv egress` policy).",
        ),
    ] = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    pids: PidsOpt = None,
    publish: PublishOpt = None,
    gpus: GpusOpt = None,
) -> None:
    """Run the agent (or CMD) in the env branch's container.

    The git repo around the current directory is mounted at /workspace and the command starts
    in the same subdirectory; when it exits, what it changed in the environment becomes a
    commit on the branch. The exit code is the command's.

    API keys: the agent gets its preset's keys (e.g. ANTHROPIC_API_KEY) from your environment
    when they are set; `pienv agent list` names what a run passes; -e NAME adds a variable.
    """
    # The plain forms of this command never get here: entry.py reads them (runargs.py).
    _run(
        "run",
        command,
        branch=branch,
        workdir=workdir,
        message=message,
        no_commit=no_commit,
        wait=wait,
        envs=env,
        agent=agent,
        egress=egress,
        cpus=cpus,
        memory=memory,
        pids=pids,
        ports=publish,
        gpus=gpus,
    )


@app.command()
def shell(
    branch: BranchOpt = None,
    workdir: WorkdirOpt = None,
    no_commit: NoCommitOpt = False,
) -> None:
    """An interactive login shell in the env.

    Committed on exit like `run`, with the message `shell`.
    """
    _run("shell", branch=branch, workdir=workdir, no_commit=no_commit)


def _run(name: str, command: list[str] | None = None, **values: Any) -> None:
    from pienv import runargs

    req = runargs.build(name, command, **values)
    if req is None:
        raise UsageError("--wait takes a number of seconds")
    raise typer.Exit(runargs.run_command(req))
