"""Filesystem and package differences between two images, read from their exported tars.

One streamed `docker export` per image gives every path's metadata (no file is extracted)
and the few files that list installed packages: dpkg's status file, pip's *.dist-info
directories and the package.json of each globally installed npm package.
"""

from __future__ import annotations

import contextlib
import re
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any

from pienv.engine import Engine

DPKG_STATUS = "var/lib/dpkg/status"
_DIST_INFO = re.compile(r"(?:^|/)(?:site|dist)-packages/([^/]+)-([^/-]+)\.dist-info/METADATA$")
_NPM_GLOBAL = re.compile(r"(?:^|/)lib/node_modules/((?:@[^/]+/)?[^/@][^/]*)/package\.json$")


@dataclass
class Snapshot:
    files: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    packages: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"dpkg": {}, "pip": {}, "npm": {}}
    )


def scan(engine: Engine, image: str) -> Snapshot:
    cid = engine.create_stopped(image)
    try:
        return _read_tar(_ChunkReader(engine.export_stream(cid)))
    finally:
        engine.remove_container(cid, force=True)


class _ChunkReader:
    """A read()-able view of an iterator of byte chunks (tarfile's stream mode needs one)."""

    def __init__(self, chunks: Any) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data


def _read_tar(stream: IO[bytes] | _ChunkReader) -> Snapshot:
    snap = Snapshot()
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            path = "/" + member.name.lstrip("./").rstrip("/")
            snap.files[path] = (
                member.type,
                member.size,
                int(member.mtime),
                member.mode,
                member.uid,
                member.gid,
                member.linkname,
            )
            name = member.name.lstrip("./")
            if name == DPKG_STATUS and member.isfile():
                fh = tar.extractfile(member)
                if fh is not None:
                    snap.packages["dpkg"] = parse_dpkg_status(fh.read().decode("utf-8", "replace"))
                continue
            m = _DIST_INFO.search(name)
            if m:
                snap.packages["pip"][m.group(1).lower().replace("_", "-")] = m.group(2)
                continue
            m = _NPM_GLOBAL.search(name)
            if m and member.isfile() and "/node_modules/" not in name[: m.start(1) - 1]:
                fh = tar.extractfile(member)
                if fh is not None:
                    import json

                    with contextlib.suppress(ValueError):
                        data = json.loads(fh.read())
                        snap.packages["npm"][m.group(1)] = str(data.get("version", "?"))
    return snap


def parse_dpkg_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            arch = fields.get("Architecture", "")
            name = fields["Package"]
            out[name if arch in ("", "all", "amd64", "arm64") else f"{name}:{arch}"] = fields.get(
                "Version", "?"
            )
    return out


def compare_files(a: Snapshot, b: Snapshot) -> tuple[list[str], list[str], list[str]]:
    added = sorted(p for p in b.files if p not in a.files)
    deleted = sorted(p for p in a.files if p not in b.files)
    changed = sorted(p for p in b.files if p in a.files and a.files[p] != b.files[p])
    return added, changed, deleted


def package_changes(
    old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]
) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for mgr in ("dpkg", "pip", "npm"):
        o, n = old.get(mgr, {}), new.get(mgr, {})
        out[mgr] = {
            "added": sorted(f"{k} {n[k]}" for k in n if k not in o),
            "removed": sorted(f"{k} {o[k]}" for k in o if k not in n),
            "upgraded": sorted(f"{k} {o[k]} -> {n[k]}" for k in n if k in o and o[k] != n[k]),
        }
    return out
