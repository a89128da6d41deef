"""The finalizer that outlives pienv: a forked child that commits the run if pienv dies
(rule 1 in docs/rules.md: nothing lost), or when pienv hands the commit over to it (a
background commit, `[run] commit`).

pienv forks it right after creating the run container. The child holds the branch lock (it
inherits the descriptor) and blocks on a pipe. Three things can come down the pipe:

- ``d``: pienv finished the run itself; the child exits at once.
- ``c`` and the command's exit code: the container has exited and pienv hands the commit
  over, then returns at once. The child commits (``_handoff``) and only then exits, which
  releases the lock.
- EOF: pienv died some other way (SIGKILL included). The child, in its own session and deaf
  to SIGHUP/SIGINT/SIGTERM, waits for the container to exit, commits it like a normal run
  (``_takeover``), and only then exits.

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
from pathlib import Path

from pienv import locks
from pienv.context import Context
from pienv.errors import EngineError, PienvError
from pienv.locks import BranchLock, name_of
from pienv.model import RunInfo
from pienv.runloop.finish import RunResult, finalize
from pienv.runloop.pin import REFUSED, Gate
from pienv.runloop.sweep import Sweep, sweep

# Test-only (tests/test_background.py): the handed-over commit starts this many seconds late,
# so a test can see a run "being committed". Read once at import, as store.crashpoint.
_TEST_DELAY = float(os.environ.get("PIENV_TEST_COMMIT_DELAY") or 0)

# Hears, in the finalizer, how a commit handed to it ended: the result, or the error.
Report = Callable[[RunResult | None, Exception | None], None]


@dataclass(frozen=True)
class Job:
    """What the finalizer commits: the run's container, its record and where it ran."""

    store_home: Path
    cid: str
    info: RunInfo
    no_commit: bool
    workspace: str
    env_file: Path
    rule: str  # the branch selection rule, for the result line
    sweep: Sweep | None = None  # what to sweep of planted privilege before the commit
    # The run's egress slot claim (egressnet.claim), shared with pienv across the fork:
    # closed here once the container has exited, so the next run of the store may take it.
    slot_fd: int = -1


class Finalizer:
    """The forked committer of one run. State, parent side: ``pid`` (the child) and ``fd``
    (the pipe's write end, -1 once the child was told ``done`` or handed the commit)."""

    def __init__(self, job: Job, lock: BranchLock, report: Report | None) -> None:
        self.job, self.lock, self.report = job, lock, report
        self.pid = 0
        self.fd = -1

    # -- parent side ---------------------------------------------------------------------

    def start(self, log_path: str) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid:
            os.close(read_fd)
            self.pid, self.fd = pid, write_fd
            return
        os.close(write_fd)
        self._serve(read_fd, log_path)  # never returns

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

    # -- child side ----------------------------------------------------------------------

    def _serve(self, read_fd: int, log_path: str) -> None:
        code = 0
        try:
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
                self._handoff(int(data[1:]))
            else:
                if stderr >= 0:
                    os.close(stderr)
                if data != b"d":
                    self._takeover()
        except BaseException:
            import sys

            from pienv.store import log_traceback

            code = 1
            with contextlib.suppress(OSError):
                log_traceback(log_path, sys.argv[1:], "pienv finalizer failed:\n")
        finally:
            os._exit(code)

    def _context(self) -> Context:
        # Its own engine connection (the parent's socket must not be shared across the
        # fork), the same store.
        from pienv.engine import Engine
        from pienv.store import Store

        return Context(store=Store(self.job.store_home), _engine=Engine())

    def _takeover(self) -> None:
        """pienv died: wait for the container, then commit it."""
        job = self.job
        try:
            child = self._context()
            self.lock.record(job.workspace, pid=os.getpid(), container=job.cid)
            gate = _refuse_at_gate(job.env_file)
            child.engine().wait(job.cid)
            _release_slot(job)
            if gate is not None:
                gate.close()
            self.lock.record(
                job.workspace, pid=os.getpid(), phase=locks.COMMITTING, container=job.cid
            )
            if job.sweep is not None:  # nobody hears its line: `pienv doctor` does not either
                sweep(child.engine(), job.sweep)
            finalize(child, job.cid, job.info, None, job.no_commit)
            self.lock.release()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(job.env_file)

    def _handoff(self, exit_code: int) -> None:
        """pienv handed a finished run over (the lock record already names this process)."""
        assert self.report is not None
        job = self.job
        _release_slot(job)  # the container has exited
        try:
            ctx = self._context()
            # Before the commit and its result line: the line says what the sweep did.
            swept = sweep(ctx.engine(), job.sweep) if job.sweep is not None else ""
            done = finalize(ctx, job.cid, job.info, exit_code, job.no_commit)
            if swept:
                done.notes.insert(0, swept)
        except Exception as exc:
            # The container is kept; the lock frees when this process exits, its record
            # naming the finalizer that failed. Say what was kept (finalize says it only
            # for a failed commit; not, e.g., when the engine is gone before it).
            self.report(None, _kept(exc, job))
            raise
        # The branch is free before the result line (and the pipe's EOF) reaches a reader.
        self.lock.release()
        done.rule = job.rule
        self.report(done, None)


def _release_slot(job: Job) -> None:
    if job.slot_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(job.slot_fd)


def _kept(exc: Exception, job: Job) -> Exception:
    """``exc``, naming the kept container and how to recover it when it does not yet."""
    cid = job.cid[:12]
    if not isinstance(exc, PienvError) or cid in exc.message:
        return exc
    return EngineError(
        f"{exc.message}; the run's container {cid} is kept with everything it changed",
        hint=(exc.hint + "; " if exc.hint else "")
        + f"then `pienv recover {cid}` commits it (the next run on "
        f"{name_of(job.info.branch)!r} does too)",
    )


def _refuse_at_gate(env_file: Path) -> Gate | None:
    """pienv died before it verified the mounts (runloop/pin.py): a container waiting at
    its env file gets `exit 125` there, so it ends without running the command."""
    import stat

    try:
        if not stat.S_ISFIFO(os.lstat(env_file).st_mode):
            return None
    except OSError:
        return None
    gate = Gate(env_file, b"exit %d\n" % REFUSED, [])
    gate.open(lambda: 0)
    return gate
