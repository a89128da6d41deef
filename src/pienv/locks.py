"""Per-branch run locks: flock on a side file that is never unlinked.

The kernel releases a flock when the last descriptor of its open file goes away, so a lock
whose holder died is free again by itself; the holder record (pid, pid start time, host, start
time, workspace) inside the file only explains who holds a live lock. A forked finalizer that
inherits the descriptor keeps the lock after the run's pienv process dies.
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
from pienv.model import now_rfc3339

# "Detached" has one spelling in pienv's code: a branch of None (``branch: str | None``), as
# refs.json's HEAD, `status --json` and every result say it. Where a *name* is needed (the
# lock file, the reflog, a message), the detached HEAD is called DETACHED; image labels, being
# strings, carry "" (model.py converts).
DETACHED = "HEAD"


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

    def record(self, workspace: str, pid: int | None = None) -> None:
        """Write the holder record (again, e.g. when a finalizer takes over)."""
        pid = pid or os.getpid()
        data = {
            "pid": pid,
            "pid_start": process_start(pid),
            "host": socket.gethostname(),
            "since": now_rfc3339(),
            "workspace": workspace,
            "branch": self.branch,
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(data).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1


def read_holder(locks_dir: Path, branch: str) -> Holder | None:
    try:
        data = json.loads(lock_path(locks_dir, branch).read_text() or "null")
    except (OSError, ValueError):
        return None
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
        )
    except (KeyError, ValueError):
        return None


def lock_names(locks_dir: Path) -> list[str]:
    """Branches that have a lock file (held or not), sorted."""
    return sorted(unquote(p.name.removesuffix(".lock")) for p in locks_dir.glob("*.lock"))


def is_locked(locks_dir: Path, branch: str) -> bool:
    path = lock_path(locks_dir, branch)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def acquire(
    locks_dir: Path,
    branch: str,
    workspace: str,
    wait: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[BranchLock, Holder | None]:
    """Take ``branch``'s lock or raise BranchBusy naming the holder.

    ``wait``: seconds to wait for a busy lock (None = fail at once, 0 = forever). Returns the
    lock and, if the previous holder died without releasing its record, that stale holder (so
    the caller can say it took the lock over). ``on_wait`` hears, once, who it waits for.
    """
    locks_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(locks_dir, branch), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if not wait else time.monotonic() + float(wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if wait is None or (deadline is not None and time.monotonic() >= deadline):
                os.close(fd)
                raise busy_error(locks_dir, branch) from None
            if on_wait is not None:
                until = "as long as it takes" if not wait else f"up to {float(wait):g} s"
                on_wait(
                    f"waiting for branch {branch!r} ({until}): held by "
                    f"{describe(read_holder(locks_dir, branch))}"
                )
                on_wait = None
            time.sleep(0.1)
    stale = read_holder(locks_dir, branch)
    lock = BranchLock(locks_dir, branch, fd)
    lock.record(workspace)
    return lock, stale


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
