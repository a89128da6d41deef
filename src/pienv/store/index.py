"""The commit index (commits.jsonl: one Commit per line, so log and status need no engine
call) and the per-commit files under changes/ (paths changed, packages installed)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from pienv.errors import StoreError
from pienv.model import Commit
from pienv.store.files import Files, dump, dump_lines, parse_line, parse_lines


class IndexMixin:
    """The index and changes part of ``Store`` (see repo.py for the attributes it shares)."""

    files: Files
    home: Path
    index_path: Path
    reflog_path: Path
    changes_dir: Path
    _index: dict[str, Commit] | None

    def _store_lock(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _mkdirs(self) -> None:
        raise NotImplementedError

    def _read_jsonl(self, path: Path) -> Iterator[dict[str, object]]:
        try:
            raw = self.files.read(path)
        except FileNotFoundError:
            return iter(())
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
        return parse_lines(raw)

    def commits(self) -> dict[str, Commit]:
        """All indexed commits by full id (cached for this Store object)."""
        if self._index is None:
            index: dict[str, Commit] = {}
            for data in self._read_jsonl(self.index_path):
                try:
                    c = Commit.from_json(data)
                except (TypeError, ValueError, KeyError, AttributeError):
                    continue  # a line of the wrong types is skipped, as a torn one is
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
        self.files.append(self.index_path, dump_lines(c.to_json() for c, _ in rows))
        if self._index is not None:
            for commit, _ in rows:
                self._index[commit.id] = commit

    def rewrite_index(self, commits: list[Commit]) -> None:
        """Replace the index. Under the store lock, so a commit indexed meanwhile waits for it;
        callers must have read ``commits`` under the same lock (prune, fsck --repair)."""
        data = dump_lines(c.to_json() for c in commits)
        with self._store_lock():
            self.files.write(self.index_path, data)
        self._index = {c.id: c for c in commits}

    def torn_lines(self) -> list[tuple[Path, int]]:
        """Lines of the append-only files that are not whole JSON objects (file, 1-based)."""
        out = []
        for path in (self.index_path, self.reflog_path):
            try:
                raw = self.files.read(path)
            except OSError:
                continue
            for n, line in enumerate(raw.splitlines(), 1):
                if line.strip() and parse_line(line) is None:
                    out.append((path, n))
        return out

    def drop_torn_lines(self) -> list[tuple[Path, int]]:
        """Rewrite the append-only files without their torn lines (fsck --repair)."""
        torn = self.torn_lines()
        with self._store_lock():
            for path in {p for p, _ in torn}:
                raw = self.files.read(path)
                keep = [ln + b"\n" for ln in raw.splitlines() if parse_line(ln) is not None]
                self.files.write(path.with_name(path.name + ".torn"), raw)
                self.files.write(path, b"".join(keep))
        self._index = None
        return torn

    def record_changes(self, commit_id: str, changes: list[tuple[str, str]]) -> None:
        """The paths a commit changed (written once: at commit time, or on first `show`)."""
        self._mkdirs()
        payload = dump([[kind, path] for kind, path in changes])
        self.files.write(self.changes_dir / f"{commit_id}.json", payload)

    def changes(self, commit_id: str) -> list[tuple[str, str]] | None:
        path = self.changes_dir / f"{commit_id}.json"
        try:
            return [(k, p) for k, p in json.loads(self.files.read(path))]
        except (OSError, ValueError, TypeError):
            return None

    def record_packages(
        self, commit_id: str, version: int, packages: dict[str, dict[str, str]]
    ) -> None:
        """A commit's installed packages (`diff --packages`), as read by reader ``version``:
        an image's content never changes, so they are read from the engine once per commit."""
        self._mkdirs()
        payload = dump({"version": version, "packages": packages})
        self.files.write(self.changes_dir / f"{commit_id}.packages.json", payload)

    def packages(self, commit_id: str, version: int) -> dict[str, dict[str, str]] | None:
        try:
            path = self.changes_dir / f"{commit_id}.packages.json"
            data = json.loads(self.files.read(path))
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
            self.files.unlink(self.changes_dir / name)
