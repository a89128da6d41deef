"""refs.json and its transactions: ref moves are compare-and-swap under the store lock, and
each produces a reflog entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pienv.errors import ConcurrentUpdate, UsageError
from pienv.model import SCHEMA, Commit, now_rfc3339, short
from pienv.store.reflog import RENAMED, WORKTREE_BIND, WORKTREE_UNBIND, ReflogEntry, who

REFS = "refs.json"


@dataclass
class Refs:
    """The content of refs.json. Mutated only inside ``Store.transaction``."""

    store_id: str
    head_branch: str | None = "main"
    head_detached: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    worktrees: dict[str, str] = field(default_factory=dict)  # abs path -> branch
    base: str | None = None  # image the root commit was made from

    def to_json(self) -> dict[str, Any]:
        head: dict[str, str | None] = (
            {"branch": self.head_branch} if self.head_branch else {"detached": self.head_detached}
        )
        return {
            "schema": SCHEMA,
            "store_id": self.store_id,
            "head": head,
            "branches": dict(sorted(self.branches.items())),
            "tags": dict(sorted(self.tags.items())),
            "worktrees": dict(sorted(self.worktrees.items())),
            "base": self.base,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refs:
        """Raises KeyError or TypeError (the store says which file is corrupt)."""
        _check_types(data)
        head = data["head"]
        return cls(
            store_id=data["store_id"],
            head_branch=head.get("branch"),
            head_detached=head.get("detached"),
            branches=dict(data.get("branches", {})),
            tags=dict(data.get("tags", {})),
            worktrees=dict(data.get("worktrees", {})),
            base=data.get("base"),
        )

    def head_commit(self) -> str | None:
        if self.head_branch:
            return self.branches.get(self.head_branch)
        return self.head_detached


def _check_types(data: dict[str, Any]) -> None:
    """refs.json written by hand or by another tool: every value of the type pienv reads, or
    TypeError naming the first that is not (no command may fail later on a wrong type)."""
    if not isinstance(data["store_id"], str) or not isinstance(data["head"], dict):
        raise TypeError("store_id or head of the wrong type")
    head = data["head"]
    for key in ("branch", "detached"):
        if not isinstance(head.get(key), str | None):
            raise TypeError(f"head.{key} is not a string")
    for table in ("branches", "tags", "worktrees"):
        value = data.get(table, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise TypeError(f"{table} is not a table of strings")
    if not isinstance(data.get("base"), str | None):
        raise TypeError("base is not a string")


def pending_rename(last: dict[str, Any] | None, refs: Refs) -> tuple[str, str] | None:
    """(old, new) when the reflog's ``last`` line is a rename refs.json does not hold yet."""
    if last is None or not str(last.get("what", "")).startswith(RENAMED):
        return None
    old, sep, new = str(last["what"]).removeprefix(RENAMED).partition(" to ")
    if (
        sep
        and last.get("ref") == new
        and new not in refs.branches
        and old in refs.branches
        and refs.branches[old] == last.get("new")
    ):
        return old, new
    return None


class Transaction:
    """Ref moves under the store lock; each is CAS and produces a reflog entry."""

    def __init__(self, refs: Refs, what: str) -> None:
        self.refs = refs
        self.what = what
        self.entries: list[ReflogEntry] = []
        self.renames: dict[str, str] = {}  # old branch name -> new, applied to the reflog
        self.commits: list[tuple[Commit, list[tuple[str, str]] | None]] = []

    def add_commit(self, commit: Commit, changes: list[tuple[str, str]] | None = None) -> None:
        """Index ``commit`` in the same transaction as the ref moves (written first)."""
        self.commits.append((commit, changes))

    def complete_move(self, ref: str, value: str) -> None:
        """Finish a move whose reflog entry was written but refs.json was not (a crash between
        the two): set the ref without logging the move a second time."""
        if ref == "HEAD":
            self.refs.head_detached = value
        elif ref.startswith("tags/"):
            self.refs.tags[ref.removeprefix("tags/")] = value
        else:
            self.refs.branches[ref] = value

    def bind_worktree(self, path: str, branch: str) -> None:
        """Bind a worktree to a branch; logged on the branch so fsck --repair can restore it."""
        self.refs.worktrees[path] = branch
        head = self.refs.branches.get(branch)
        self._log(branch, head, head, f"{WORKTREE_BIND}{path}")

    def unbind_worktree(self, path: str) -> None:
        branch = self.refs.worktrees.pop(path, None)
        if branch is not None:
            head = self.refs.branches.get(branch)
            self._log(branch, head, head, f"{WORKTREE_UNBIND}{path}")

    def _log(self, ref: str, old: str | None, new: str | None, what: str | None) -> None:
        self.entries.append(ReflogEntry(ref, old, new, now_rfc3339(), who(), what or self.what))

    def move_branch(
        self, name: str, expected: str | None, new: str, what: str | None = None
    ) -> None:
        """Point ``name`` at ``new`` if it still holds ``expected`` (None: must not exist)."""
        current = self.refs.branches.get(name)
        if current != expected:
            if expected is None:
                raise UsageError(f"branch {name!r} already exists")
            if current is None:
                raise ConcurrentUpdate(f"branch {name!r} was deleted meanwhile; nothing moved")
            raise ConcurrentUpdate(
                f"branch {name!r} moved from {short(expected)} to {short(current)} meanwhile; "
                "nothing was overwritten"
            )
        self.refs.branches[name] = new
        self._log(name, expected, new, what)

    def rename_branch(self, old: str, new: str) -> str:
        """Rename a branch; HEAD, worktree bindings and the reflog follow (as `git branch -m`)."""
        if old not in self.refs.branches:
            raise UsageError(f"branch {old!r} not found")
        if new in self.refs.branches:
            raise UsageError(f"branch {new!r} already exists")
        cid = self.refs.branches.pop(old)
        self.refs.branches[new] = cid
        if self.refs.head_branch == old:
            self.refs.head_branch = new
        for path, bound in self.refs.worktrees.items():
            if bound == old:
                self.refs.worktrees[path] = new
        self.renames[old] = new
        self._log(new, cid, cid, f"{RENAMED}{old} to {new}")
        return cid

    def finish_rename(self, old: str, new: str) -> None:
        """Apply to refs a rename the reflog already holds (its command was killed before
        writing refs.json); logs nothing, the reflog is already renamed."""
        self.refs.branches[new] = self.refs.branches.pop(old)
        if self.refs.head_branch == old:
            self.refs.head_branch = new
        for path, bound in self.refs.worktrees.items():
            if bound == old:
                self.refs.worktrees[path] = new

    def delete_branch(self, name: str, expected: str, what: str | None = None) -> None:
        if self.refs.branches.get(name) != expected:
            raise ConcurrentUpdate(f"branch {name!r} moved meanwhile; not deleted")
        del self.refs.branches[name]
        self._log(name, expected, None, what)

    def set_tag(self, name: str, new: str | None, what: str | None = None) -> None:
        old = self.refs.tags.get(name)
        if new is None:
            self.refs.tags.pop(name, None)
        else:
            self.refs.tags[name] = new
        self._log("tags/" + name, old, new, what)

    def move_detached(self, expected: str | None, new: str, what: str | None = None) -> None:
        if self.refs.head_branch is not None or self.refs.head_detached != expected:
            raise ConcurrentUpdate("HEAD moved meanwhile; nothing was overwritten")
        self.refs.head_detached = new
        self._log("HEAD", expected, new, what)

    def move_head(
        self, branch: str | None, expected: str | None, new: str, what: str | None = None
    ) -> None:
        """Compare-and-swap ``branch``, or the detached HEAD when ``branch`` is None, from
        ``expected`` to ``new``: the one move runs, resets and flattens make."""
        if branch:
            self.move_branch(branch, expected, new, what)
        else:
            self.move_detached(expected, new, what)

    def checkout(self, branch: str | None, detached: str | None = None) -> None:
        old = self.refs.head_commit()
        self.refs.head_branch = branch
        self.refs.head_detached = None if branch else detached
        new = self.refs.head_commit()
        self._log("HEAD", old, new, self.what)
