"""The `pienv` console script: the exit-code contract and the run loop's fast path.

Exit codes: the command's own for `run`/`shell`; 0 ok; 1 a user-facing error printed as one
line; 2 a usage error; 3 an internal error (traceback to the store's log file); 130 Ctrl-C.
The typer CLI (cli.py) is imported only when `runargs` hands the command line over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from pienv import ui
from pienv.errors import PienvError


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _dispatch(args)
    except PienvError as exc:
        ui.error(str(exc))
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as exc:
        log = _log_internal()
        ui.error(f"internal error: {exc.__class__.__name__}: {exc} (traceback in {log})")
        code = 3
    sys.exit(code)


def _dispatch(args: list[str]) -> int:
    from pienv import runargs

    req = runargs.parse(args)
    if req is not None:
        return run_command(req)
    from pienv import cli

    return cli.invoke(args)


def run_command(req: Any) -> int:
    """`pienv run` / `pienv shell`: run, report what happened on stderr, return the exit code."""
    from pienv.ops import run as runmod
    from pienv.ops.context import Context

    def sink(stream: Any) -> Any:
        def write(data: bytes) -> None:
            if stream is not None:  # None: pienv was started with this stream closed
                stream.buffer.write(data)
                stream.flush()

        return write

    stdin_fd = None if sys.stdin is None or sys.stdin.closed else sys.stdin.fileno()
    result = runmod.run(
        Context(), req, Path.cwd(), os.environ, sink(sys.stdout), sink(sys.stderr), stdin_fd
    )
    for line in result.notes:
        ui.note(line)
    if result.commit:
        ui.note(
            f"committed {result.commit.short} on {result.branch or 'HEAD'} "
            f"({result.changes} path{'' if result.changes == 1 else 's'} changed)"
        )
    elif req.no_commit:
        ui.note("--no-commit: the environment changes were discarded")
    else:
        ui.note("nothing changed in the environment; no commit")
    return result.exit_code


def _log_internal() -> str:
    import traceback

    from pienv.store import default_home

    path = default_home() / "pienv.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(traceback.format_exc())
    except OSError:
        return "(unwritable log)"
    return str(path)
