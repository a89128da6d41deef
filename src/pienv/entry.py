"""The `pienv` console script: the exit-code contract and the run loop's fast path.

Exit codes: the command's own for `run`/`shell`; 0 ok; 1 a user-facing error printed as one
line; 2 a usage error; 3 an internal error (traceback to the store's log file); 130 Ctrl-C.
The typer CLI (the cli package) is imported only when `runargs` hands the command line over.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from pienv import ui
from pienv.errors import Interrupted, PienvError


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _dispatch(args)
    except PienvError as exc:
        ui.error(str(exc))
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except Interrupted as exc:  # SIGTERM/SIGHUP while a container ran (what it left defused)
        code = 128 + exc.signum
    except BrokenPipeError:
        code = 0
    except Exception as exc:
        log = _log_internal(args)
        ui.error(f"internal error: {exc.__class__.__name__}: {exc} (traceback in {log})")
        code = 3
    if argv is None:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> NoReturn:
    """The console script's exit, without the interpreter's teardown (freeing every module
    and object: ~14 ms, a tenth of what a no-op `pienv run` adds to `docker run`). Nothing
    of pienv's waits for teardown: files are closed or flushed by their writers, locks are
    freed by the kernel, the run's finalizer is its own process. The standard streams are
    flushed here; a reader gone meanwhile is no error (as for BrokenPipeError above)."""
    import contextlib
    import os

    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # pienv was started with this descriptor closed (`>&-`)
            continue
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, or a closed stream
            stream.flush()
    os._exit(code)


def _dispatch(args: list[str]) -> int:
    from pienv import runargs

    req = runargs.parse(args)
    if req is not None:
        return runargs.run_command(req)
    from pienv import cli

    return cli.invoke(args)


def _log_internal(args: list[str]) -> str:
    """Append the current traceback to the store's pienv.log; its path, for the message."""
    from pienv.store import default_home, log_traceback

    path = default_home() / "pienv.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log_traceback(path, args)
    except OSError:
        return "(unwritable log)"
    return str(path)
