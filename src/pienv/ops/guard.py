"""The finalizer that outlives pienv: a forked child that commits the run if pienv dies
(rule 1 in docs/rules.md: nothing lost), or when pienv hands the commit over to it (a
background commit, `[run] commit`).

pienv forks it right after creating the run container. The child holds the branch lock (it
inherits the descriptor) and blocks on a pipe. Three things can come down the pipe:

- ``d``: pienv finished the run itself; the child exits at once.
- ``c`` and the command's exit code: the container has exited and pienv hands the commit
  over, then returns at once. The child commits (``handoff``) and only then exits, which
  releases the lock.
- EOF: pienv died some other way (SIGKILL included). The child, in its own session and deaf
  to SIGHUP/SIGINT/SIGTERM, waits for the container to exit, commits it like a normal run
  (``takeover``), and only then exits.

The child keeps a duplicate of pienv's stderr from the fork, for the handoff's result line;
otherwise its stdio is /dev/null (a dead terminal must not hurt it, and it must never hold
pienv's stdout: `x=$(pienv run -- cmd)` returns when pienv does). On ``d`` and on EOF it
closes that duplicate at once, so a reader of a killed pienv's stderr is not kept waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

# Test-only (tests/test_background.py): the handed-over commit starts this many seconds late,
# so a test can see a run "being committed". Read once at import, as store.crashpoint.
_TEST_DELAY = float(os.environ.get("PIENV_TEST_COMMIT_DELAY") or 0)


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

    def hand_over(self, exit_code: int) -> None:
        """The container has exited: the child commits it. One write of a few bytes (below
        PIPE_BUF, so atomic): the child reads all of it even if pienv dies right after."""
        os.write(self.fd, b"c%d" % exit_code)
        os.close(self.fd)
        self.fd = -1


def spawn(
    takeover: Callable[[], None],
    handoff: Callable[[int], None],
    log_path: str,
) -> Guard:
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
        try:
            stderr = os.dup(2)
        except OSError:
            stderr = -1  # pienv was started with stderr closed
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(read_fd, 32)
        if data[:1] == b"c":
            if _TEST_DELAY:
                import time

                time.sleep(_TEST_DELAY)
            if stderr >= 0:
                os.dup2(stderr, 2)  # the result line goes where pienv's would have
                os.close(stderr)
            handoff(int(data[1:]))
        else:
            if stderr >= 0:
                os.close(stderr)
            if data != b"d":
                takeover()
    except BaseException:
        import sys

        from pienv.store import log_traceback

        code = 1
        with contextlib.suppress(OSError):
            log_traceback(log_path, sys.argv[1:], "pienv finalizer failed:\n")
    finally:
        os._exit(code)
