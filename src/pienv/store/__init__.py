"""The store directory: ref store, reflog, commit index and per-commit change lists.

Layout of ``$PIENV_HOME``::

    refs.json       schema, store id, HEAD, branches, tags, worktree bindings (atomic replace)
    refs.lock       the short store lock (flock) serialising every ref transaction
    reflog.jsonl    one line per ref move, append-only (rewritten only by rename and prune)
    commits.jsonl   commit index: one Commit per line, so log/status need no engine call
    changes/ID.json paths added/changed/deleted by each commit, captured at commit time
    locks/          per-branch run locks (see locks.py)
    runs/           transient per-run files (env files), removed when the run is finalized
    pienv.log       tracebacks of internal errors

The package is split as dulwich splits a repository: ``files`` (atomic replace, whole-line
append, torn-line-safe reads; ``memory`` is its in-memory twin for unit tests), ``refs``
(refs.json and compare-and-swap transactions), ``reflog``, ``index`` (the commit index and
changes/), ``repo`` (the ``Store`` tying them to one directory and one lock), ``log`` (the
store's pienv.log) and ``crash`` (the test crash hook). The names below are the ones the rest
of pienv imports.
"""

from __future__ import annotations

from pienv.store.crash import crashpoint
from pienv.store.files import write_atomic
from pienv.store.home import default_home
from pienv.store.log import log_traceback
from pienv.store.reflog import CHECKOUT, WORKTREE_BIND, WORKTREE_UNBIND, ReflogEntry, who
from pienv.store.refs import REFS, Refs, Transaction
from pienv.store.repo import Store

__all__ = [
    "CHECKOUT",
    "REFS",
    "WORKTREE_BIND",
    "WORKTREE_UNBIND",
    "ReflogEntry",
    "Refs",
    "Store",
    "Transaction",
    "crashpoint",
    "default_home",
    "log_traceback",
    "who",
    "write_atomic",
]
