"""The ``Store``: one store directory (refs, reflog, commit index, changes) behind one lock.

Every write follows one protocol (docs/architecture.md, "Store writes"): under the store lock
a transaction appends the commit index, then the reflog, then replaces refs.json; appends are
whole lines or nothing, and readers skip a torn line without losing the lines after it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pienv.store.home as homemod
from pienv.errors import StoreError
from pienv.model import SCHEMA, Commit
from pienv.store.crash import crashpoint
from pienv.store.files import Disk, Files, dump, dump_lines, os_error, parse_line
from pienv.store.index import IndexMixin
from pienv.store.reflog import ReflogEntry
from pienv.store.refs import REFS, Refs, Transaction, pending_rename

_REPAIR = "`pienv fsck --repair` rebuilds it from image labels"


class Store(IndexMixin):
    def __init__(self, home: Path | None = None, files: Files | None = None) -> None:
        self.home = home or homemod.default_home()
        self.files: Files = files or Disk()
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
        return self.files.exists(self.refs_path)

    def init(self, base: str | None = None) -> Refs:
        """Create an empty store (no commits yet). Idempotent under the store lock."""
        self._mkdirs()
        with self._store_lock():
            if self.files.exists(self.refs_path):
                return self.load_refs()
            if self._has_commits():
                # Commits exist but the refs are gone: a fresh store would orphan them all.
                raise StoreError(
                    f"{self.refs_path} is missing but the store has commits",
                    hint="`pienv fsck --repair` rebuilds it from image labels",
                )
            refs = Refs(store_id=os.urandom(6).hex(), base=base)
            self.files.write(self.refs_path, dump(refs.to_json()))
            return refs

    def _has_commits(self) -> bool:
        try:
            return bool(self.files.read(self.index_path).strip())
        except OSError:
            return False

    def _mkdirs(self) -> None:
        try:
            self.files.mkdirs((self.home, self.changes_dir, self.locks_dir, self.runs_dir))
        except OSError as exc:
            raise os_error(exc, self.home) from exc

    # -- refs -------------------------------------------------------------------------------

    def load_refs(self) -> Refs:
        try:
            raw = self.files.read(self.refs_path)
        except FileNotFoundError:
            raise StoreError(
                f"no pienv store at {self.home} yet",
                hint="`pienv run` creates it; `pienv fsck --repair` rebuilds a lost refs.json",
            ) from None
        except OSError as exc:
            raise self._corrupt(exc.__class__.__name__) from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise self._corrupt(exc.__class__.__name__) from exc
        if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
            raise self._corrupt("no schema version")
        if data["schema"] > SCHEMA:
            raise StoreError(
                f"store {self.home} has schema {data['schema']}, newer than this pienv "
                f"understands ({SCHEMA}); it was left untouched",
                hint="upgrade pienv",
            )
        try:
            return Refs.from_json(data)
        except KeyError as exc:
            raise self._corrupt(f"missing {exc}") from exc
        except (TypeError, AttributeError) as exc:
            raise self._corrupt(str(exc)) from exc

    def _corrupt(self, why: str) -> StoreError:
        return StoreError(
            f"store {self.refs_path} is corrupt ({why}); it was left untouched", hint=_REPAIR
        )

    def _store_lock(self) -> contextlib.AbstractContextManager[None]:
        """The store lock (flock on refs.lock); re-entrant within one process."""
        self._mkdirs()
        return self.files.lock(self.home)

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
                self.files.append(self.reflog_path, dump_lines(e.to_json() for e in txn.entries))
                if txn.commits:
                    crashpoint("reflogged")
            self.files.write(self.refs_path, dump(txn.refs.to_json()))
            if txn.commits:
                crashpoint("moved")

    def pending_rename(self) -> tuple[str, str] | None:
        """A `branch -m` killed after its reflog write and before refs.json (fsck reports it;
        the next transaction completes it): (old, new), else None."""
        return self._pending_rename(self.load_refs())

    def _pending_rename(self, refs: Refs) -> tuple[str, str] | None:
        return pending_rename(self._last_line(self.reflog_path), refs)

    def _last_line(self, path: Path) -> dict[str, Any] | None:
        """The last whole line of a JSONL file, reading only its tail (runs pay for this)."""
        try:
            tail = self.files.tail(path, 65536)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        return parse_line(lines[-1]) if lines else None

    def write_refs_unchecked(self, refs: Refs, entries: list[ReflogEntry]) -> None:
        """Replace refs wholesale (fsck --repair only)."""
        self._mkdirs()
        with self._store_lock():
            if entries:
                self.files.append(self.reflog_path, dump_lines(e.to_json() for e in entries))
            self.files.write(self.refs_path, dump(refs.to_json()))

    # -- reflog -----------------------------------------------------------------------------

    def reflog(self, ref: str | None = None) -> list[ReflogEntry]:
        """Entries oldest first; ``ref`` filters to one ref name."""
        out = []
        for data in self._read_jsonl(self.reflog_path):
            try:
                entry = ReflogEntry(**data)  # type: ignore[arg-type]
            except TypeError:
                continue
            if not entry.valid():
                continue  # a line of the wrong types is skipped, as a torn one is
            if ref is None or entry.ref == ref:
                out.append(entry)
        return out

    def rewrite_reflog(self, entries: list[ReflogEntry]) -> None:
        """Replace the whole reflog (branch rename, prune expiry). Caller holds the lock."""
        self.files.write(self.reflog_path, dump_lines(e.to_json() for e in entries))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._store_lock():
            yield
