"""File primitives of the store: atomic replace, whole-line append, torn-line-safe reads.

``Disk`` is the store's view of its directory; ``memory.Memory`` is its in-memory twin with
the same methods, so the ref store's logic (transactions, CAS, the reflog) runs unchanged on
either.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from pienv.errors import StoreError

# Store lock depth per (process, store directory): flock is per open file, so a second
# open + flock by the same process would wait for itself.
_LOCK_DEPTH: dict[str, int] = {}


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
        raise os_error(exc, path) from exc
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error(exc: OSError, path: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {path}; the previous state is kept")
    return StoreError(f"cannot write {path}: {exc.strerror or exc}")


def lock_error(exc: OSError, path: Path) -> StoreError:
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(
            f"the store at {path.parent} is read-only here ({exc.strerror}): commands that "
            "only read it (log, show, status, branch, reflog) work, others need it writable"
        )
    return StoreError(
        f"cannot lock the store: {path} ({exc.strerror})",
        hint=f"{path} must be a file pienv can create: move away what is there",
    )


def append_lines(path: Path, data: bytes) -> None:
    """Append whole lines or nothing (callers hold the store lock).

    A file that does not end in a newline holds a torn last line (a crash or a full disk
    mid-append): start on a fresh line so the new lines are not glued onto it. A short
    write is continued; a failed one is cut back to where the file ended.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_error(exc, path) from exc
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
            raise os_error(exc, path) from exc
    finally:
        os.close(fd)


class Files(Protocol):
    """What the store needs of its directory: ``Disk`` or the twin ``memory.Memory``."""

    def read(self, path: Path) -> bytes: ...
    def tail(self, path: Path, size: int) -> bytes: ...
    def exists(self, path: Path) -> bool: ...
    def write(self, path: Path, data: bytes) -> None: ...
    def append(self, path: Path, data: bytes) -> None: ...
    def unlink(self, path: Path) -> None: ...
    def mkdirs(self, dirs: Iterable[Path]) -> None: ...
    def lock(self, home: Path) -> contextlib.AbstractContextManager[None]: ...


class Disk:
    """The store directory on disk (see ``memory.Memory`` for the twin)."""

    def read(self, path: Path) -> bytes:
        """The whole file; OSError (FileNotFoundError when absent) as Path.read_bytes."""
        return path.read_bytes()

    def tail(self, path: Path, size: int) -> bytes:
        """The last ``size`` bytes (runs read the reflog's last line, not the whole file)."""
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - size))
            return fh.read()

    def exists(self, path: Path) -> bool:
        return path.exists()

    def write(self, path: Path, data: bytes) -> None:
        write_atomic(path, data)

    def append(self, path: Path, data: bytes) -> None:
        append_lines(path, data)

    def unlink(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def mkdirs(self, dirs: Iterable[Path]) -> None:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, home: Path) -> Iterator[None]:
        """The store lock (flock on refs.lock); re-entrant within one process."""
        key = f"{os.getpid()}:{home}"  # a forked child does not hold its parent's lock
        if _LOCK_DEPTH.get(key):
            _LOCK_DEPTH[key] += 1
            try:
                yield
            finally:
                _LOCK_DEPTH[key] -= 1
            return
        path = home / "refs.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise lock_error(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _LOCK_DEPTH[key] = 1
            try:
                yield
            finally:
                _LOCK_DEPTH.pop(key, None)
        finally:
            os.close(fd)


def dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def dump_lines(rows: Iterable[Any]) -> bytes:
    return b"".join((json.dumps(r, separators=(",", ":")) + "\n").encode() for r in rows)


def parse_lines(raw: bytes) -> Iterator[dict[str, Any]]:
    for line in raw.splitlines():
        # A torn line (crash or full disk mid-append) is skipped, never fatal; the appender
        # starts the next line after it, so nothing after it is lost. fsck reports it.
        data = parse_line(line)
        if data is not None:
            yield data


def parse_line(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
