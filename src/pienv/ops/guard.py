"""The finalizer that outlives pienv: a forked child that commits the run if pienv dies
(rule 1 in docs/rules.md: nothing lost).

pienv forks it right after creating the run container. The child holds the branch lock (it
inherits the descriptor) and blocks on a pipe. If pienv finishes normally it writes ``d`` and
the child exits at once. If pienv dies any other way (SIGKILL included) the pipe hits EOF: the
child, in its own session and deaf to SIGHUP/SIGINT/SIGTERM, waits for the container to exit,
commits it like a normal run, and only then exits, which releases the lock.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from pienv.locks import BranchLock


@dataclass
class Guard:
    pid: int
    fd: int

    def done(self) -> None:
        """The parent finished the run itself: let the child go, and reap it."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, b"d")
        os.close(self.fd)
        self.fd = -1
        # Reap before the caller releases the lock: the child shares the lock's descriptor.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def spawn(lock: BranchLock, workspace: str, takeover: Callable[[], None], log_path: str) -> Guard:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_fd)
        return Guard(pid=pid, fd=write_fd)
    # --- child -----------------------------------------------------------------------------
    code = 0
    try:
        os.close(write_fd)
        os.setsid()
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        # A dead terminal must not hurt us: detach stdio.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(read_fd, 1)
        if data != b"d":
            lock.record(workspace, pid=os.getpid())
            takeover()
    except BaseException:
        import sys

        from pienv.store import log_traceback

        code = 1
        with contextlib.suppress(OSError):
            log_traceback(log_path, sys.argv[1:], "pienv finalizer failed:\n")
    finally:
        os._exit(code)
