"""Whether the kernel killed a process of a container for memory, read from the container's
own memory cgroup while it exists (engines on this machine only).

Podman 4.3 never sets `State.OOMKilled` here (with or without an init, cgroup v1 with the
cgroupfs manager), sends no "oom" event, and removes the container's cgroup, the only place
that counts its kills, about 0.25 s after the container exits; on cgroup v1 a parent's
counter does not include its children's. So the count is read while the container runs:
a thread polls it until the cgroup is gone, and keeps the last value it read.
"""

from __future__ import annotations

import threading
from pathlib import Path

_POLL = 0.05  # well inside the ~0.25 s between a container's exit and its cgroup's removal
_ROOT = Path("/sys/fs/cgroup")


def counter_file(pid: int, root: Path = _ROOT) -> Path | None:
    """The file that counts OOM kills in the memory cgroup of process ``pid`` (cgroup v1:
    memory.oom_control; v2: memory.events), or None when it cannot be read from here."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return root / "memory" / path.lstrip("/") / "memory.oom_control"
    for line in lines:
        if line.startswith("0::"):
            return root / line[3:].lstrip("/") / "memory.events"
    return None


def kills(text: str) -> int:
    """The `oom_kill N` count of a memory.oom_control or memory.events text."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


class Watch:
    """Polls one container's OOM kill count until its cgroup is gone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pienv-oomwatch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.count = max(self.count, kills(self.path.read_text()))
            except OSError:
                return  # the cgroup is gone: the count read last is the container's
            self._stop.wait(_POLL)

    def killed(self) -> bool:
        """Whether a kill was seen (waits for the poll to end, at most a second)."""
        self.thread.join(1.0)
        self._stop.set()
        return self.count > 0
