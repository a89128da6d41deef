"""Mounts that are what was checked (rule 13): no mount comes from a path the agent can swap
between pienv's check and the engine's mount.

The engine mounts a host *path* when the container starts; another run's agent that can write
a component of that path can make it a symlink to somewhere the mount policy refused (two
agents at once: docs/security.md). A mount cannot be pinned through Docker's API (a
``/proc/PID/fd/N`` source is refused by runc: EINVAL, another mount namespace), so it is
verified instead, after the mounts exist and before the command runs:

- the run's env file is a FIFO; the entry wrapper's first act is to read it (``. "$0"``), so
  the container waits there, its mounts made, with nothing of the command run yet;
- pienv reads the container's ``/proc/PID/mountinfo`` and compares every bind mount's
  filesystem (major:minor) and root (the path within that filesystem, which the kernel
  resolved when it mounted it) with those of the real path the policy checked;
- then it writes the variables into the FIFO, or, if anything differs, a line that makes the
  wrapper exit 125 before the command (the run is refused, nothing of it ran).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pienv.runloop.spec import Mount

REFUSED = 125  # the wrapper's exit code when the mounts were not what was checked


@dataclass(frozen=True)
class Pin:
    """A bind mount as it must appear in the container's mountinfo."""

    target: str
    source: str
    dev: str  # "major:minor" of the source's filesystem
    root: str  # the source's path within that filesystem


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mountinfo(pid: int | str) -> list[tuple[str, str, str]]:
    """(major:minor, root, mount point) of each mount ``pid`` sees, in mount order."""
    out = []
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 5:
                out.append((fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return out


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def pins(mounts: Sequence[Mount]) -> list[Pin]:
    """The pins of ``mounts``' host paths, from the paths the policy checked (their strings:
    nothing is followed now, so a swap since the check cannot change what is expected).
    Volumes are the engine's: nothing to pin."""
    host = mountinfo("self")
    out = []
    for m in mounts:
        if m.volume:
            continue
        holders = [e for e in host if _within(m.source, e[2])]
        if not holders:
            continue
        dev, root, point = max(holders, key=lambda e: len(e[2]))
        rel = os.path.relpath(m.source, point)
        out.append(Pin(m.target, m.source, dev, os.path.normpath(os.path.join(root, rel))))
    return out


def verify(pid: int, wanted: Sequence[Pin]) -> list[str]:
    """What differs between the container's mounts and ``wanted`` (empty: all as checked)."""
    seen: dict[str, tuple[str, str]] = {}
    for dev, root, point in mountinfo(pid):
        seen[point] = (dev, root)  # a later mount on the same point is the visible one
    bad = []
    for p in wanted:
        got = seen.get(p.target)
        if got != (p.dev, p.root):
            what = f"{got[1]} (device {got[0]})" if got else "nothing"
            bad.append(f"{p.target}: {what} instead of {p.source}")
    return bad


@dataclass
class Gate:
    """Holds the container at its env file until its mounts are verified (see the module)."""

    fifo: Path
    payload: bytes
    wanted: list[Pin]
    problems: list[str] = field(default_factory=list)
    unverified: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def make(cls, path: Path, payload: bytes, mounts: Sequence[Mount]) -> Gate:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.mkfifo(path, 0o600)
        return cls(path, payload, pins(mounts))

    def open(self, pid_of: Callable[[], int]) -> None:
        """Wait (in a thread) for the container to read the FIFO, verify, then answer.
        ``pid_of``: the container's host pid once it runs (0: unknown)."""
        threading.Thread(target=self._serve, args=(pid_of,), daemon=True).start()

    def close(self) -> None:
        """Stop waiting (the container ended, or never started) and remove the FIFO."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.fifo.unlink()

    def _serve(self, pid_of: Callable[[], int]) -> None:
        try:
            fd = self._writer()
            if fd < 0:
                return
            try:
                pid = pid_of()
                if pid and os.path.exists(f"/proc/{pid}/mountinfo"):
                    self.problems = verify(pid, self.wanted)
                else:
                    # Not this machine's process (an engine in a VM): nothing to compare.
                    self.unverified = True
            except OSError as exc:
                self.problems = [f"cannot read the container's mounts: {exc.strerror}"]
            data = self.payload
            if self.problems:
                data = b"exit %d\n" % REFUSED  # before the command: nothing of it runs
            os.set_blocking(fd, True)
            with contextlib.suppress(OSError):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            os.close(fd)
        finally:
            self.done.set()

    def _writer(self) -> int:
        """The FIFO's write end once the container opened it for reading (-1: stopped)."""
        while not self._stop.is_set():
            try:
                return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    return -1
            time.sleep(0.002)
        return -1
