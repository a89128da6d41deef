"""What every operation needs: the store, the config and (lazily) the engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from pienv import config as configmod
from pienv.errors import PienvError, UsageError
from pienv.locks import name_of
from pienv.model import Commit, is_hex_prefix, parse_rev, short
from pienv.report import Reporter
from pienv.store import Refs, Store

if TYPE_CHECKING:
    from pienv.engine import Engine


# How long a revision waits for a background commit on its branch (a commit takes moments).
SETTLE_WAIT = 120.0


@dataclass
class Context:
    store: Store = field(default_factory=Store)
    _engine: Engine | None = None
    # The branch this command means by HEAD (rule 11), set by ops.workspace.select from
    # --branch / PIENV_PROFILE / the worktree binding; None: refs.json's own HEAD. Only reads
    # see it: transactions re-read refs.json, so a ref move never writes it back.
    head_branch: str | None = None
    # Where the operation's notes, warnings and progress go while it works (report.py): the
    # command line shows them at once; the default keeps them for the caller.
    report: Reporter = field(default_factory=Reporter)

    @cached_property
    def config(self) -> configmod.Config:
        return configmod.load(self.store.config_path)

    def engine(self) -> Engine:
        if self._engine is None:
            from pienv.engine import Engine

            self._engine = Engine()
        if self._engine.helper_labels is None:  # also one the caller made (the finalizer's)
            self._engine.helper_labels = self._helper_labels
        return self._engine

    def _helper_labels(self, kind: str) -> dict[str, str]:
        """The labels of a helper container this command makes (runloop/helpers.py)."""
        from pienv.locks import helper_labels

        try:
            return helper_labels(self.store_id, kind)
        except PienvError:  # no store (yet): nothing of it to label
            return {}

    def refs(self) -> Refs:
        refs = self.store.load_refs()
        if self.head_branch and self.head_branch != refs.head_branch:
            refs = dataclasses.replace(refs, head_branch=self.head_branch, head_detached=None)
        return refs

    @cached_property
    def store_id(self) -> str:
        return self.refs().store_id

    def repository(self) -> str:
        """The Docker repository holding this store's commit tags."""
        return f"pienv/{self.store_id}"

    def commit(self, cid: str) -> Commit:
        try:
            return self.store.commits()[cid]
        except KeyError:
            raise UsageError(
                f"commit {short(cid)} is not in the commit index",
                hint="`pienv fsck --repair` rebuilds the index from image labels",
            ) from None

    # -- revisions ---------------------------------------------------------------------------

    def settle(self, name: str, refs: Refs) -> bool:
        """Wait for a background commit on the branch ``name`` names (HEAD: the current
        branch); whether there was one (the refs read before it are stale then)."""
        from pienv import locks

        branch = name_of(refs.head_branch) if name == "HEAD" else name
        if branch != "HEAD" and branch not in refs.branches:
            return False  # a tag or a commit id: nothing moves it
        if locks.committing(self.store.locks_dir, branch) is None:
            return False  # the usual case: one file read
        locks.await_commit(self.store.locks_dir, branch, SETTLE_WAIT)
        return True

    def resolve(self, text: str, refs: Refs | None = None, settle: bool = True) -> str:
        """A revision (see model.parse_rev) -> full commit id, or UsageError.

        ``settle``: a revision that names a branch (or HEAD) whose finished run is still being
        committed in the background waits for that commit first (up to SETTLE_WAIT s), so
        that `pienv run -- CMD; pienv tag T` tags the run, as it did before the commit went
        to the background."""
        refs = refs or self.refs()
        rev = parse_rev(text)
        if settle and self.settle(rev.base, refs):
            refs = self.refs()
        commits = self.store.commits()
        cid = self._resolve_base(rev.base, rev.reflog, refs, commits, text)
        for op, n in rev.steps:
            if op == "~":
                for i in range(n):
                    c = commits.get(cid)
                    if c is None or not c.parents:
                        # Say how far back it does go, from where this ~N started.
                        raise UsageError(
                            f"unknown revision {text!r}: the history goes back only {i} "
                            f"commit{'' if i == 1 else 's'} from there ({short(cid)} is a "
                            "root)",
                            hint="`pienv log` lists it",
                        )
                    cid = c.parents[0]
            elif n:
                cid = self._parent(cid, n, commits, text)
        return cid

    def _resolve_base(
        self, base: str, at: int | None, refs: Refs, commits: dict[str, Commit], text: str
    ) -> str:
        if at is not None:
            ref = base
            if base == "HEAD":
                ref = name_of(refs.head_branch)
            elif base not in refs.branches and base in refs.tags:
                ref = "tags/" + base
            values = [e.new for e in reversed(self.store.reflog(ref)) if e.new]
            if not values:
                raise UsageError(f"unknown revision {text!r}: no reflog for {ref!r}")
            if at >= len(values):
                raise UsageError(
                    f"unknown revision {text!r}: the reflog of {ref!r} has only "
                    f"{len(values)} entries"
                )
            return values[at]
        if base == "HEAD":
            head = refs.head_commit()
            if head is None:
                raise UsageError("HEAD has no commit yet", hint="`pienv run` creates the first")
            return head
        if base in refs.branches:
            return refs.branches[base]
        if base in refs.tags:
            return refs.tags[base]
        if "/" in base:
            from pienv.tracking import resolve_tracking

            tracked = resolve_tracking(self.store, base)  # origin/main: a remote-tracking ref
            if tracked is not None:
                return tracked
        if is_hex_prefix(base):
            prefix = base.removeprefix("sha256:")
            found = [c for c in commits if c.startswith(prefix)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                names = ", ".join(sorted(short(c) for c in found)[:8])
                raise UsageError(f"ambiguous revision {text!r}: it matches {names}")
        raise UsageError(
            f"unknown revision {text!r}: not a branch, tag or commit of this store",
            hint="`pienv branch` and `pienv log --all` list them",
        )

    @staticmethod
    def _parent(cid: str, n: int, commits: dict[str, Commit], text: str) -> str:
        c = commits.get(cid)
        if c is None or len(c.parents) < n:
            raise UsageError(f"unknown revision {text!r}: {short(cid)} has no parent #{n}")
        return c.parents[n - 1]
