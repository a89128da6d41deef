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

Ref moves are compare-and-swap: a transaction re-reads refs.json under the store lock and a
move succeeds only if the ref still holds the value the caller expected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pienv.errors import ConcurrentUpdate, StoreError, UsageError
from pienv.model import SCHEMA, Commit, now_rfc3339, short

REFS = "refs.json"


def log_traceback(path: str | Path, argv: list[str], what: str = "") -> None:
    """Append the exception being handled to ``path`` (the store's pienv.log).

    Each entry starts with ``--- TIME pienv VERSION argv: [...]`` so a report says when, which
    version and which command line, and entries can be told apart (tests/conftest.py shows the
    newest one when a test sees exit 3)."""
    import traceback

    from pienv import __version__

    header = f"--- {now_rfc3339()} pienv {__version__} argv: {json.dumps(argv)}\n"
    with open(path, "a") as fh:
        fh.write(header + what + traceback.format_exc())


def default_home() -> Path:
    env = os.environ.get("PIENV_HOME")
    if env:
        return Path(env).expanduser().absolute()
    from platformdirs import user_data_dir

    return Path(user_data_dir("pienv"))


def write_atomic(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + os.replace, so readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _os_error(exc, path) from exc
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, path: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {path}; the previous state is kept")
    return StoreError(f"cannot write {path}: {exc.strerror or exc}")


@dataclass
class ReflogEntry:
    ref: str  # branch name, "tags/NAME" or "HEAD" (detached moves)
    old: str | None
    new: str | None
    time: str
    who: str
    what: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "old": self.old,
            "new": self.new,
            "time": self.time,
            "who": self.who,
            "what": self.what,
        }


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


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back to the uid
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class Transaction:
    """Ref moves under the store lock; each is CAS and produces a reflog entry."""

    def __init__(self, refs: Refs, what: str) -> None:
        self.refs = refs
        self.what = what
        self.entries: list[ReflogEntry] = []
        self.renames: dict[str, str] = {}  # old branch name -> new, applied to the reflog

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
        self._log(new, cid, cid, f"branch: renamed {old} to {new}")
        return cid

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


class Store:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or default_home()
        self.refs_path = self.home / REFS
        self.reflog_path = self.home / "reflog.jsonl"
        self.index_path = self.home / "commits.jsonl"
        self.changes_dir = self.home / "changes"
        self.locks_dir = self.home / "locks"
        self.runs_dir = self.home / "runs"
        self.log_path = self.home / "pienv.log"
        self.config_path = Path(os.environ.get("PIENV_CONFIG", self.home / "config.toml"))
        self._index: dict[str, Commit] | None = None

    # -- existence and creation ------------------------------------------------------------

    def exists(self) -> bool:
        return self.refs_path.exists()

    def init(self, base: str | None = None) -> Refs:
        """Create an empty store (no commits yet). Idempotent under the store lock."""
        self._mkdirs()
        with self._store_lock():
            if self.refs_path.exists():
                return self.load_refs()
            if self.index_path.exists() and self.index_path.stat().st_size:
                # Commits exist but the refs are gone: a fresh store would orphan them all.
                raise StoreError(
                    f"{self.refs_path} is missing but the store has commits",
                    hint="`pienv fsck --repair` rebuilds it from image labels",
                )
            refs = Refs(store_id=os.urandom(6).hex(), base=base)
            write_atomic(self.refs_path, _dump(refs.to_json()))
            return refs

    def _mkdirs(self) -> None:
        try:
            for d in (self.home, self.changes_dir, self.locks_dir, self.runs_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, self.home) from exc

    # -- refs -------------------------------------------------------------------------------

    def load_refs(self) -> Refs:
        if not self.refs_path.exists():
            raise StoreError(
                f"no pienv store at {self.home} yet",
                hint="`pienv run` creates it; `pienv fsck --repair` rebuilds a lost refs.json",
            )
        try:
            data = json.loads(self.refs_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"store {self.refs_path} is corrupt ({exc.__class__.__name__}); it was left "
                "untouched",
                hint="`pienv fsck --repair` rebuilds it from image labels",
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
            raise StoreError(
                f"store {self.refs_path} is corrupt (no schema version); it was left untouched",
                hint="`pienv fsck --repair` rebuilds it from image labels",
            )
        if data["schema"] > SCHEMA:
            raise StoreError(
                f"store {self.home} has schema {data['schema']}, newer than this pienv "
                f"understands ({SCHEMA}); it was left untouched",
                hint="upgrade pienv",
            )
        try:
            return Refs.from_json(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"store {self.refs_path} is corrupt (missing {exc}); it was left untouched",
                hint="`pienv fsck --repair` rebuilds it from image labels",
            ) from exc

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        self._mkdirs()
        fd = os.open(self.home / "refs.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[Transaction]:
        """Re-read refs under the store lock; on success append the reflog, then write refs."""
        with self._store_lock():
            txn = Transaction(self.load_refs(), what)
            yield txn
            if txn.renames:
                entries = self.reflog()
                for e in entries:
                    e.ref = txn.renames.get(e.ref, e.ref)
                self.rewrite_reflog(entries)
            if txn.entries:
                # Reflog first: a crash between the two writes over-reports a move (harmless,
                # it only keeps a commit alive) instead of losing the record of one.
                self._append_lines(self.reflog_path, [e.to_json() for e in txn.entries])
            write_atomic(self.refs_path, _dump(txn.refs.to_json()))

    def write_refs_unchecked(self, refs: Refs, entries: list[ReflogEntry]) -> None:
        """Replace refs wholesale (fsck --repair only)."""
        self._mkdirs()
        with self._store_lock():
            if entries:
                self._append_lines(self.reflog_path, [e.to_json() for e in entries])
            write_atomic(self.refs_path, _dump(refs.to_json()))

    # -- reflog -----------------------------------------------------------------------------

    def reflog(self, ref: str | None = None) -> list[ReflogEntry]:
        """Entries oldest first; ``ref`` filters to one ref name."""
        out = []
        for data in _read_jsonl(self.reflog_path):
            try:
                entry = ReflogEntry(**data)
            except TypeError:
                continue
            if ref is None or entry.ref == ref:
                out.append(entry)
        return out

    def rewrite_reflog(self, entries: list[ReflogEntry]) -> None:
        """Replace the whole reflog (branch rename, prune expiry). Caller holds the lock."""
        data = b"".join(_dump_line(e.to_json()) for e in entries)
        write_atomic(self.reflog_path, data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._store_lock():
            yield

    # -- commit index -----------------------------------------------------------------------

    def commits(self) -> dict[str, Commit]:
        """All indexed commits by full id (cached for this Store object)."""
        if self._index is None:
            index: dict[str, Commit] = {}
            for data in _read_jsonl(self.index_path):
                try:
                    c = Commit.from_json(data)
                except (TypeError, ValueError):
                    continue
                index[c.id] = c
            self._index = index
        return self._index

    def add_commit(self, commit: Commit, changes: list[tuple[str, str]] | None = None) -> None:
        if changes is not None:
            self._mkdirs()
            payload = _dump([[kind, path] for kind, path in changes])
            write_atomic(self.changes_dir / f"{commit.id}.json", payload)
        self._append_lines(self.index_path, [commit.to_json()])
        if self._index is not None:
            self._index[commit.id] = commit

    def rewrite_index(self, commits: list[Commit]) -> None:
        data = b"".join(_dump_line(c.to_json()) for c in commits)
        write_atomic(self.index_path, data)
        self._index = {c.id: c for c in commits}

    def changes(self, commit_id: str) -> list[tuple[str, str]] | None:
        path = self.changes_dir / f"{commit_id}.json"
        try:
            return [(k, p) for k, p in json.loads(path.read_bytes())]
        except (OSError, ValueError):
            return None

    def forget_commit_files(self, commit_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.changes_dir / f"{commit_id}.json").unlink()

    # -- helpers ----------------------------------------------------------------------------

    def _append_lines(self, path: Path, rows: list[dict[str, Any]]) -> None:
        data = b"".join(_dump_line(r) for r in rows)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(exc, path) from exc


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _dump_line(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            # A torn last line (crash mid-append) is skipped, never fatal.
            continue
        if isinstance(data, dict):
            yield data
