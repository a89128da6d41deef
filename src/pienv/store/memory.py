"""The in-memory twin of the store directory, for unit tests of refs, transactions and
revisions: ``MemoryStore()`` is a ``Store`` whose files live in a dict, so the same
transaction, CAS and reflog code runs without a disk (and without an engine)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from pienv.store.repo import Store


class Memory:
    """Files by path, with ``files.Disk``'s methods and semantics (atomic by construction)."""

    def __init__(self) -> None:
        self.files: dict[Path, bytes] = {}
        self._lock = threading.RLock()

    def read(self, path: Path) -> bytes:
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", str(path)) from None

    def tail(self, path: Path, size: int) -> bytes:
        return self.read(path)[-size:]

    def exists(self, path: Path) -> bool:
        return path in self.files

    def write(self, path: Path, data: bytes) -> None:
        self.files[path] = bytes(data)

    def append(self, path: Path, data: bytes) -> None:
        old = self.files.get(path, b"")
        if old and not old.endswith(b"\n"):
            data = b"\n" + data  # as Disk: never glue a line onto a torn one
        self.files[path] = old + data

    def unlink(self, path: Path) -> None:
        self.files.pop(path, None)

    def mkdirs(self, dirs: Iterable[Path]) -> None:
        pass

    @contextlib.contextmanager
    def lock(self, home: Path) -> Iterator[None]:
        with self._lock:
            yield


def MemoryStore(home: Path = Path("/memory/pienv")) -> Store:
    """A fresh, empty in-memory store (call ``init()`` to create its refs)."""
    return Store(home, files=Memory())
