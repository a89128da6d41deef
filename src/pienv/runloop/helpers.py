"""Labels of pienv's helper containers (a flatten's copy, an agent's install, the never-started
containers `export`, `diff` and `reset --system` read files from): the store and
a kind (the role label), and the pid that made them, so `pienv orphans` can list the ones a
killed pienv left behind. The process keys are the run's (run-host, run-pid, run-started),
which every commit overwrites (model.COMMIT_KEYS): an install's commit does not keep them."""

from __future__ import annotations

from pienv.locks import helper_labels

__all__ = ["helper_labels"]  # in locks: Context (core) labels the helpers an Engine makes

# Helper kinds `pienv orphans` lists (a run is "run", a keeper is never an orphan).
FLATTEN = "flatten"
INSTALL = "install"
EXPORT = "export"  # `export`'s read of a root commit's files
DIFF = "diff"  # `diff`/`show`'s filesystem scans and package reads
RESET = "reset"  # `reset --system`'s read of the old home
PROBE = "probe"  # a `bisect run` probe (ops/probe.py), labelled with the workspace it mounts
REBASE = "rebase"  # a `rebase` replay
SWEEP = "sweep"  # the privilege sweep's fix container (runloop/sweep.py)
KINDS = (FLATTEN, INSTALL, EXPORT, DIFF, RESET, PROBE, REBASE, SWEEP)
