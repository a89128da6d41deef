"""The reflog: one line per ref move in reflog.jsonl, append-only (rewritten only by a branch
rename and by prune's expiry)."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any

# Reflog texts fsck --repair reads back (git parses "checkout: moving from A to B" the same way).
WORKTREE_BIND = "worktree: bind "
WORKTREE_UNBIND = "worktree: unbind "
CHECKOUT = "checkout: moving to "
RENAMED = "branch: renamed "


@dataclass
class ReflogEntry:
    ref: str  # branch name, "tags/NAME" or "HEAD" (detached moves)
    old: str | None
    new: str | None
    time: str
    who: str
    what: str

    def valid(self) -> bool:
        """Whether every field has the type pienv reads (a hand-edited line may not)."""
        texts = (self.ref, self.time, self.who, self.what)
        return all(isinstance(v, str) for v in texts) and all(
            v is None or isinstance(v, str) for v in (self.old, self.new)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "old": self.old,
            "new": self.new,
            "time": self.time,
            "who": self.who,
            "what": self.what,
        }


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back to the uid
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
