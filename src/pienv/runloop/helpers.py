"""Labels of pienv's helper containers (a flatten's copy, an agent's install, the never-started
containers `export`, `diff` and `reset --system` read files from): the store and
a kind (the role label), and the pid that made them, so `pienv orphans` can list the ones a
killed pienv left behind. The process keys are the run's (run-host, run-pid, run-started),
which every commit overwrites (model.COMMIT_KEYS): an install's commit does not keep them."""

from __future__ import annotations

import os
import socket

from pienv.locks import process_start
from pienv.model import LABEL, now_rfc3339

# Helper kinds `pienv orphans` lists (a run is "run", a keeper is never an orphan).
FLATTEN = "flatten"
INSTALL = "install"
EXPORT = "export"  # `export`'s read of a root commit's files
DIFF = "diff"  # `diff`/`show`'s filesystem scans and package reads
RESET = "reset"  # `reset --system`'s read of the old home
KINDS = (FLATTEN, INSTALL, EXPORT, DIFF, RESET)


def helper_labels(store_id: str, kind: str) -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL + "store": store_id,
        LABEL + "role": kind,
        LABEL + "run-host": socket.gethostname(),
        LABEL + "run-pid": f"{pid}:{process_start(pid)}",
        LABEL + "run-started": now_rfc3339(),
    }
