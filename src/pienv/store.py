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
move succeeds only if the ref still holds the value the caller expected. Every write follows
one protocol (docs/architecture.md, "Store writes"): under the store lock a transaction appends
the commit index, then the reflog, then replaces refs.json; appends are whole lines or
nothing, and readers skip a torn line without losing the lines after it.
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
_RENAMED = "branch: renamed "

# Test-only crash points (tests/test_crash.py): PIENV_TEST_CRASH_AT=STEP kills pienv at STEP of
# a run's finish, once per store; STEP+all kills its forked finalizer too. Read once at import
# so the hot path pays one string comparison per step.
_CRASH_STEP, _, _CRASH_MODE = os.environ.get("PIENV_TEST_CRASH_AT", "").partition("+")


def crashpoint(step: str) -> None:
    if step == _CRASH_STEP:
        _crash(step)


def _crash(step: str) -> None:
    import signal

    marker = default_home() / f"crashed-at-{step}"
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return  # once: the finalizer or the next command must get past this step
    if _CRASH_MODE == "all":
        me = str(os.getpid())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                with contextlib.suppress(OSError):
                    os.kill(int(stat.parent.name), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


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


# Reflog texts fsck --repair reads back (git parses "checkout: moving from A to B" the same way).
WORKTREE_BIND = "worktree: bind "
WORKTREE_UNBIND = "worktree: unbind "
CHECKOUT = "checkout: moving to "

# Store lock depth per (process, store directory): flock is per open file, so a second
# open + flock by the same process would wait for itself.
_LOCK_DEPTH: dict[str, int] = {}


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
        self._log(new, cid, cid, f"{_RENAMED}{old} to {new}")
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
        """The store lock (flock on refs.lock); re-entrant within one process."""
        key = f"{os.getpid()}:{self.home}"  # a forked child does not hold its parent's lock
        if _LOCK_DEPTH.get(key):
            _LOCK_DEPTH[key] += 1
            try:
                yield
            finally:
                _LOCK_DEPTH[key] -= 1
            return
        self._mkdirs()
        fd = os.open(self.home / "refs.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _LOCK_DEPTH[key] = 1
            try:
                yield
            finally:
                _LOCK_DEPTH.pop(key, None)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[Transaction]:
        """Re-read refs under the store lock; on success append the commit index, then the
        reflog, then replace refs.json (see docs/architecture.md for what a crash between two
        of these leaves and how the next command completes it)."""
        with self._store_lock():
            txn = Transaction(self.load_refs(), what)
            pending = self._pending_rename(txn.refs)
            if pending is not None:
                txn.finish_rename(*pending)  # a rename killed before its refs.json write
            yield txn
            if txn.commits:
                self._index_commits(txn.commits)
                crashpoint("indexed")
            if txn.renames:
                # One atomic write of the renamed reflog and this transaction's entries (the
                # rename entry last): a crash before refs.json leaves that entry as the
                # reflog's last line, which the next transaction completes (_pending_rename).
                entries = self.reflog()
                for e in entries:
                    e.ref = txn.renames.get(e.ref, e.ref)
                self.rewrite_reflog(entries + txn.entries)
            elif txn.entries:
                # Reflog first: a crash between the two writes over-reports a move (harmless,
                # it only keeps a commit alive) instead of losing the record of one.
                self._append_lines(self.reflog_path, [e.to_json() for e in txn.entries])
                if txn.commits:
                    crashpoint("reflogged")
            write_atomic(self.refs_path, _dump(txn.refs.to_json()))
            if txn.commits:
                crashpoint("moved")

    def pending_rename(self) -> tuple[str, str] | None:
        """A `branch -m` killed after its reflog write and before refs.json (fsck reports it;
        the next transaction completes it): (old, new), else None."""
        return self._pending_rename(self.load_refs())

    def _pending_rename(self, refs: Refs) -> tuple[str, str] | None:
        last = _last_line(self.reflog_path)
        if last is None or not str(last.get("what", "")).startswith(_RENAMED):
            return None
        old, sep, new = str(last["what"]).removeprefix(_RENAMED).partition(" to ")
        if (
            sep
            and last.get("ref") == new
            and new not in refs.branches
            and old in refs.branches
            and refs.branches[old] == last.get("new")
        ):
            return old, new
        return None

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

    def fresh_commits(self) -> dict[str, Commit]:
        """The index as on disk now (recovery paths, under the store lock)."""
        self._index = None
        return self.commits()

    def add_commit(self, commit: Commit, changes: list[tuple[str, str]] | None = None) -> None:
        """Index one commit under the store lock (a run's commit goes through a transaction)."""
        with self._store_lock():
            self._index_commits([(commit, changes)])

    def _index_commits(self, rows: list[tuple[Commit, list[tuple[str, str]] | None]]) -> None:
        for commit, changes in rows:
            if changes is not None:
                self.record_changes(commit.id, changes)
        self._append_lines(self.index_path, [c.to_json() for c, _ in rows])
        if self._index is not None:
            for commit, _ in rows:
                self._index[commit.id] = commit

    def rewrite_index(self, commits: list[Commit]) -> None:
        """Replace the index. Under the store lock, so a commit indexed meanwhile waits for it;
        callers must have read ``commits`` under the same lock (prune, fsck --repair)."""
        data = b"".join(_dump_line(c.to_json()) for c in commits)
        with self._store_lock():
            write_atomic(self.index_path, data)
        self._index = {c.id: c for c in commits}

    def torn_lines(self) -> list[tuple[Path, int]]:
        """Lines of the append-only files that are not whole JSON objects (file, 1-based)."""
        out = []
        for path in (self.index_path, self.reflog_path):
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            for n, line in enumerate(raw.splitlines(), 1):
                if line.strip() and _parse_line(line) is None:
                    out.append((path, n))
        return out

    def drop_torn_lines(self) -> list[tuple[Path, int]]:
        """Rewrite the append-only files without their torn lines (fsck --repair)."""
        torn = self.torn_lines()
        with self._store_lock():
            for path in {p for p, _ in torn}:
                raw = path.read_bytes()
                keep = [ln + b"\n" for ln in raw.splitlines() if _parse_line(ln) is not None]
                write_atomic(path.with_name(path.name + ".torn"), raw)
                write_atomic(path, b"".join(keep))
        self._index = None
        return torn

    def record_changes(self, commit_id: str, changes: list[tuple[str, str]]) -> None:
        """The paths a commit changed (written once: at commit time, or on first `show`)."""
        self._mkdirs()
        payload = _dump([[kind, path] for kind, path in changes])
        write_atomic(self.changes_dir / f"{commit_id}.json", payload)

    def changes(self, commit_id: str) -> list[tuple[str, str]] | None:
        path = self.changes_dir / f"{commit_id}.json"
        try:
            return [(k, p) for k, p in json.loads(path.read_bytes())]
        except (OSError, ValueError):
            return None

    def record_packages(
        self, commit_id: str, version: int, packages: dict[str, dict[str, str]]
    ) -> None:
        """A commit's installed packages (`diff --packages`), as read by reader ``version``:
        an image's content never changes, so they are read from the engine once per commit."""
        self._mkdirs()
        payload = _dump({"version": version, "packages": packages})
        write_atomic(self.changes_dir / f"{commit_id}.packages.json", payload)

    def packages(self, commit_id: str, version: int) -> dict[str, dict[str, str]] | None:
        try:
            data = json.loads((self.changes_dir / f"{commit_id}.packages.json").read_bytes())
            if data["version"] != version:
                return None
            return {
                str(m): {str(k): str(v) for k, v in dict(pkgs).items()}
                for m, pkgs in dict(data["packages"]).items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def forget_commit_files(self, commit_id: str) -> None:
        for name in (f"{commit_id}.json", f"{commit_id}.packages.json"):
            with contextlib.suppress(OSError):
                (self.changes_dir / name).unlink()

    # -- helpers ----------------------------------------------------------------------------

    def _append_lines(self, path: Path, rows: list[dict[str, Any]]) -> None:
        """Append whole lines or nothing (callers hold the store lock).

        A file that does not end in a newline holds a torn last line (a crash or a full disk
        mid-append): start on a fresh line so the new lines are not glued onto it. A short
        write is continued; a failed one is cut back to where the file ended.
        """
        data = b"".join(_dump_line(r) for r in rows)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error(exc, path) from exc
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise _os_error(exc, path) from exc
        finally:
            os.close(fd)


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
        # A torn line (crash or full disk mid-append) is skipped, never fatal; the appender
        # starts the next line after it, so nothing after it is lost. fsck reports it.
        data = _parse_line(line)
        if data is not None:
            yield data


def _last_line(path: Path) -> dict[str, Any] | None:
    """The last whole line of a JSONL file, reading only its tail (runs pay for this)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    return _parse_line(lines[-1]) if lines else None


def _parse_line(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
