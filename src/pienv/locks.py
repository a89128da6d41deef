"""Per-branch run locks: flock on a side file that is never unlinked.

The kernel releases a flock when the last descriptor of its open file goes away, so a lock
whose holder died is free again by itself; the holder record (pid, pid start time, host, start
time, workspace, phase) inside the file only explains who holds a live lock. A forked
finalizer that inherits the descriptor keeps the lock after the run's pienv process dies, and
records itself (phase "committing") when it commits a run in the background: a run that
wants the branch then waits for that commit instead of being refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from pienv.errors import BranchBusy
from pienv.model import LABEL, now_rfc3339

# "Detached" has one spelling in pienv's code: a branch of None (``branch: str | None``), as
# refs.json's HEAD, `status --json` and every result say it. Where a *name* is needed (the
# lock file, the reflog, a message), the detached HEAD is called DETACHED; image labels, being
# strings, carry "" (model.py converts).
DETACHED = "HEAD"

# A lock holder's phase: a run's container may still be running (a second run is refused), or
# a finalizer is committing a finished run (a second run waits: it needs the new head).
RUNNING = "running"
COMMITTING = "committing"


def name_of(branch: str | None) -> str:
    """The name ``branch`` goes by in locks, the reflog and messages (DETACHED for None)."""
    return branch or DETACHED


@dataclass(frozen=True)
class Holder:
    pid: int
    pid_start: str
    host: str
    since: str
    workspace: str
    branch: str
    phase: str = RUNNING  # RUNNING: a run (or its finalizer waiting for it); COMMITTING
    container: str = ""  # the run container a finalizer is committing

    def alive(self) -> bool:
        """True if the recorded process still runs (pid *and* start time match, same host)."""
        if self.host != socket.gethostname():
            return True  # cannot tell from here: assume alive
        return process_start(self.pid) == self.pid_start and self.pid_start != ""


def process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot), '' if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return ""  # a zombie is dead, even if its parent has not reaped it yet
    return fields[19]


def lock_path(locks_dir: Path, branch: str) -> Path:
    return locks_dir / (quote(branch, safe="") + ".lock")


class BranchLock:
    """Holds one branch's run lock until ``release`` (or until every fd holder exits)."""

    def __init__(self, locks_dir: Path, branch: str, fd: int) -> None:
        self.locks_dir = locks_dir
        self.branch = branch
        self.fd = fd

    def record(
        self,
        workspace: str,
        pid: int | None = None,
        phase: str = RUNNING,
        container: str = "",
    ) -> None:
        """Write the holder record (again, e.g. when a finalizer takes over)."""
        pid = pid or os.getpid()
        data = {
            "pid": pid,
            "pid_start": process_start(pid),
            "host": socket.gethostname(),
            "since": now_rfc3339(),
            "workspace": workspace,
            "branch": self.branch,
            "phase": phase,
            "container": container,
        }
        text = json.dumps(data).encode()
        # One write that covers the old record (JSON allows the trailing blanks): a reader, or
        # a kill -9 between two steps, sees the old record or the new one, never none.
        os.pwrite(self.fd, text.ljust(os.fstat(self.fd).st_size), 0)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1

    def hand_over(self) -> None:
        """Close this process's descriptor, keeping record and lock: a forked finalizer that
        shares the open file now holds it (flock(LOCK_UN) here would unlock it for the
        finalizer too, as both descriptors name one open file)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_holder(locks_dir: Path, branch: str) -> Holder | None:
    for attempt in range(3):
        try:
            data = json.loads(lock_path(locks_dir, branch).read_text() or "null")
            break
        except OSError:
            return None
        except ValueError:
            # A read that met a write half-way (records are rewritten in place): read again.
            if attempt == 2:
                return None
            time.sleep(0.01)
    if not isinstance(data, dict):
        return None
    try:
        return Holder(
            pid=int(data["pid"]),
            pid_start=str(data["pid_start"]),
            host=str(data["host"]),
            since=str(data["since"]),
            workspace=str(data["workspace"]),
            branch=str(data.get("branch", branch)),
            phase=str(data.get("phase", RUNNING)),
            container=str(data.get("container", "")),
        )
    except (KeyError, ValueError):
        return None


def lock_names(locks_dir: Path) -> list[str]:
    """Branches that have a lock file (held or not), sorted."""
    return sorted(unquote(p.name.removesuffix(".lock")) for p in locks_dir.glob("*.lock"))


def is_locked(locks_dir: Path, branch: str) -> bool:
    return held(lock_path(locks_dir, branch))


def held(path: Path) -> bool:
    """Whether a process holds the flock on ``path`` now (a missing file: nobody). Opened
    for writing where it can be (NFS emulates an exclusive flock with a write lock), else
    read-only (a read-only store, a directory in its place); never blocking (a FIFO). A path
    that cannot be opened at all counts as held, so that no caller takes it for free."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, os.O_RDWR | flags)
    except FileNotFoundError:
        return False
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except FileNotFoundError:
            return False
        except OSError:
            return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# A short wait for a commit needs no word; a longer one says whom it waits for.
QUIET_WAIT = 0.5


def acquire(
    locks_dir: Path,
    branch: str,
    workspace: str,
    wait: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[BranchLock, Holder | None]:
    """Take ``branch``'s lock or raise BranchBusy naming the holder.

    ``wait``: seconds to wait for a busy lock (None = fail at once, 0 = forever). A lock held
    by a finalizer committing the previous run is waited for whatever ``wait`` says: that run
    is over, and its commit is the head this one must start from. Returns the lock and, if
    the previous holder died without releasing its record, that stale holder (so the caller
    can say it took the lock over). ``on_wait`` hears, once, who it waits for.
    """
    locks_dir.mkdir(parents=True, exist_ok=True)
    fd = _above_stdio(os.open(lock_path(locks_dir, branch), os.O_RDWR | os.O_CREAT, 0o644))
    start = time.monotonic()
    deadline = None if not wait else start + float(wait)
    told_commit = False
    unrecorded = 0.0  # when a held lock's record was first seen missing
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = read_holder(locks_dir, branch)
            # No record: its holder took the lock a moment ago, or is releasing it (record
            # cleared, descriptor not yet closed), or `status` is probing a free lock. Look
            # again for a while from when the record went missing before calling it busy.
            unrecorded = (unrecorded or time.monotonic()) if holder is None else 0.0
            transient = holder is None and time.monotonic() - unrecorded < 0.5
            if transient or finishing(holder):
                long_wait = time.monotonic() - start >= QUIET_WAIT
                if on_wait is not None and holder is not None and long_wait and not told_commit:
                    on_wait(
                        f"waiting for the previous run's commit on {branch!r} (pid {holder.pid})"
                    )
                    told_commit = True
                time.sleep(0.05)
                continue
            if wait is None or (deadline is not None and time.monotonic() >= deadline):
                os.close(fd)
                raise busy_error(locks_dir, branch) from None
            if on_wait is not None:
                until = "as long as it takes" if not wait else f"up to {float(wait):g} s"
                on_wait(f"waiting for branch {branch!r} ({until}): held by {describe(holder)}")
                on_wait = None
            time.sleep(0.1)
    stale = read_holder(locks_dir, branch)
    lock = BranchLock(locks_dir, branch, fd)
    lock.record(workspace)
    return lock, stale


def _above_stdio(fd: int) -> int:
    """``fd`` moved to 3 or above. With stdin closed (`pienv run <&-`) the lock file opened
    as fd 0, and the finalizer's /dev/null over its stdio closed it: the lock's release then
    truncated /dev/null, and the next run found the dead run's record ("took over the lock
    from dead pid")."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def finishing(holder: Holder | None) -> bool:
    """Whether a held lock's holder is a finalizer at work on a run that is over: committing
    it, or (its record still names the run's dead pienv) about to record itself. Only a
    forked finalizer can hold a lock whose recorded process is gone: lock descriptors are
    never inherited across exec."""
    if holder is None:
        return False
    return holder.phase == COMMITTING or not holder.alive()


def committing(locks_dir: Path, branch: str) -> Holder | None:
    """The live finalizer committing a finished run on ``branch``, if there is one."""
    holder = read_holder(locks_dir, branch)
    if holder is None or holder.phase != COMMITTING or not holder.alive():
        return None
    return holder if is_locked(locks_dir, branch) else None


def await_commit(
    locks_dir: Path,
    branch: str,
    timeout: float,
    on_wait: Callable[[str], None] | None = None,
) -> Holder | None:
    """Wait up to ``timeout`` s for a background commit on ``branch`` to land; return its
    finalizer if it is still committing then (None: nothing pending)."""
    end = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        holder = committing(locks_dir, branch)
        if holder is None or time.monotonic() >= end:
            return holder
        if on_wait is not None and time.monotonic() - start >= QUIET_WAIT:
            on_wait(f"waiting for the run being committed on {branch!r} (pid {holder.pid})")
            on_wait = None
        time.sleep(0.05)


def describe(holder: Holder | None) -> str:
    if holder is None:
        return "another pienv"
    return (
        f"pid {holder.pid} on {holder.host} since {holder.since[:19].replace('T', ' ')} "
        f"(workspace {holder.workspace})"
    )


def busy_error(locks_dir: Path, branch: str) -> BranchBusy:
    who = describe(read_holder(locks_dir, branch))
    return BranchBusy(
        f"branch {branch!r} is busy: {who} is running on it",
        hint=(
            "run on another branch with `pienv run --branch NAME`, give this agent its own "
            "worktree with `pienv worktree add PATH BRANCH`, or wait with `--wait`"
        ),
    )


def clear_record(locks_dir: Path, branch: str) -> None:
    """Forget the holder record of a free lock. The file stays: unlinking it would let the next
    run lock a fresh inode while a live holder keeps its flock on the old one."""
    with contextlib.suppress(FileNotFoundError):
        os.truncate(lock_path(locks_dir, branch), 0)


def helper_labels(store_id: str, kind: str) -> dict[str, str]:
    """The labels of a helper container (runloop/helpers.py): its store, its kind and the
    process that made it, as a lock holder's record names it (pid and start time)."""
    pid = os.getpid()
    return {
        LABEL + "store": store_id,
        LABEL + "role": kind,
        LABEL + "run-host": socket.gethostname(),
        LABEL + "run-pid": f"{pid}:{process_start(pid)}",
        LABEL + "run-started": now_rfc3339(),
    }
