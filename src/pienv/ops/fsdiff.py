"""Filesystem and package differences between two images.

Files: one streamed `docker export` per image gives every path's metadata (no file is
extracted). Docker's per-container files (its init layer: /etc/hosts, /.dockerenv, ...) and
the mount points of runs are not the environment and are left out, so `diff X X` is empty.

Packages: only the package databases are read, through the engine's archive API (never the
whole image): dpkg's status file, the names of pip's *.dist-info directories, and the
package.json of each globally installed npm package, both system wide and in the agent's home
(where a run's `npm install -g` and `pip install --user` go).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pienv.engine import INIT_MOUNTS, ChunkReader, Engine
from pienv.runloop.sandbox import AGENT_HOME, ENV_FILE, WORKSPACE

# What `packages` reads: a list the store kept from another version of it is read again.
PACKAGES_VERSION = 1
DPKG_STATUS = "/var/lib/dpkg/status"
# Debian's own Python packages: only apt writes here (pip refuses it and installs into
# /usr/local), so with Debian's python3 they are dpkg's and read from dpkg's status alone.
PIP_DIR = "/usr/lib/python3/dist-packages"
# pip's own installs, for each Python version dpkg lists (or, without dpkg, a range): system
# wide in /usr/local (Debian's python says dist-packages, python.org builds site-packages),
# and `pip install --user` in the agent's home (a run's HOME). Only these directories, never
# the rest of /usr/local/lib/python3.X (a python.org image keeps its whole stdlib there).
PIP_VERSIONED = (
    "/usr/local/lib/python3.{}/dist-packages",
    "/usr/local/lib/python3.{}/site-packages",
    AGENT_HOME + "/.local/lib/python3.{}/site-packages",
)
# Global npm packages: the image's prefix (Debian's node, /usr/local), and the agent's home,
# where a run's `npm install -g` goes (runloop/sandbox.py's wrapper sets NPM_CONFIG_PREFIX unless
# the image sets its own, which is read too).
NPM_DIRS = (
    "/usr/local/lib/node_modules",
    "/usr/lib/node_modules",
    AGENT_HOME + "/.local/lib/node_modules",
)
_DIST_INFO = re.compile(r"(?:^|/)(?:site|dist)-packages/([^/]+)-([^/-]+)\.dist-info/?$")
_NPM_PACKAGE = re.compile(r"^node_modules/((?:@[^/]+/)?[^/@.][^/]*)/package\.json$")

# What Docker puts in every container (the init layer) and what runs mount: in no diff.
NOISE = frozenset(
    {
        "/.dockerenv",
        "/dev",
        "/dev/console",
        "/dev/pts",
        "/dev/shm",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/mtab",
        "/etc/resolv.conf",
        "/proc",
        "/sys",
    }
)
_NOISE_TREES = ("/dev/", "/proc/", "/sys/", WORKSPACE + "/")
MOUNT_POINTS = frozenset({WORKSPACE, ENV_FILE, *INIT_MOUNTS})


def is_noise(path: str, mount_points: Iterable[str] = ()) -> bool:
    if path in NOISE or path in MOUNT_POINTS or path.startswith(_NOISE_TREES):
        return True
    return any(path == m or path.startswith(m + "/") for m in mount_points)


@dataclass
class Snapshot:
    files: dict[str, tuple[Any, ...]] = field(default_factory=dict)


def scan(engine: Engine, image: str, mount_points: Iterable[str] = ()) -> Snapshot:
    """Every path's metadata in ``image`` (noise and mount points left out)."""
    cid = engine.create_stopped(image)
    try:
        return _read_tar(ChunkReader(engine.export_stream(cid)), set(mount_points))
    finally:
        engine.remove_container(cid, force=True)


def _member_path(name: str) -> str:
    # "./.dockerenv" -> "/.dockerenv" (not lstrip("./"), which also eats the dot of the name)
    name = name.removeprefix("./").lstrip("/").rstrip("/")
    return "/" + name if name not in ("", ".") else "/"


def _read_tar(stream: IO[bytes] | ChunkReader, mount_points: set[str]) -> Snapshot:
    snap = Snapshot()
    # Plain read mode: the forward-only reader skips each file's content.
    with tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[call-overload]
        for member in tar:
            path = _member_path(member.name)
            if path == "/" or is_noise(path, mount_points):
                continue
            # A directory's size and time say nothing (its entries do), as in `docker diff`;
            # here they also move whenever Docker sets up a container's /etc or /dev.
            plain = not member.isdir()
            snap.files[path] = (
                member.type,
                member.size if plain else 0,
                int(member.mtime) if plain else 0,
                member.mode,
                member.uid,
                member.gid,
                member.linkname,
            )
    return snap


# -- what layers hold -------------------------------------------------------------------------

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class LayerChanges:
    """Paths by kind: A added, C changed (content or metadata), D deleted, M a directory whose
    own metadata alone changed (its time, after files were made and removed in it)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)

    def reversed(self) -> LayerChanges:
        return LayerChanges(self.deleted, self.changed, self.added, self.metadata)

    def listing(self) -> list[tuple[str, str]]:
        kinds = zip("ACDM", (self.added, self.changed, self.deleted, self.metadata), strict=True)
        return sorted(((k, p) for k, paths in kinds for p in paths), key=lambda kp: kp[1])


def _meta(member: tarfile.TarInfo) -> tuple[Any, ...]:
    return (member.type, member.mode, member.uid, member.gid)


def layer_changes(
    layers: list[list[tarfile.TarInfo]], since: int, mount_points: Iterable[str] = ()
) -> LayerChanges:
    """What ``layers[since:]`` changed on the image ``layers[:since]`` makes: every path those
    layers hold is a change (the commit captured it, whatever its metadata says: a same-size
    rewrite within the second with its mtime put back included). A directory the layers hold
    only as the parent of other changes is not listed; one that holds nothing else changed
    its own metadata (``M``), unless its mode or owner changed (``C``)."""
    mounts = set(mount_points)
    before, tree, touched = apply_layers(layers, since)
    out = LayerChanges()
    listed = {p for p in touched if p != "/" and not is_noise(p, mounts)}
    holds_more = {parent for p in touched for parent in _ancestors(p)}
    for path in sorted(listed):
        old, new = before.get(path), tree.get(path)
        if old is None and new is None:
            continue  # made and removed again within the layers
        if old is None:
            out.added.append(path)
        elif new is None:
            out.deleted.append(path)
        elif old.isdir() and new.isdir() and _meta(old) == _meta(new):
            if path not in holds_more:
                out.metadata.append(path)
        else:
            out.changed.append(path)
    return out


Tree = dict[str, tarfile.TarInfo]


def apply_layers(layers: list[list[tarfile.TarInfo]], since: int) -> tuple[Tree, Tree, set[str]]:
    """The path trees ``layers[:since]`` and all ``layers`` make, and the paths
    ``layers[since:]`` touch (added, changed or deleted)."""
    tree: Tree = {}
    before: Tree = {}
    touched: set[str] = set()
    for i, layer in enumerate(layers):
        if i == since:
            before = dict(tree)
        record = i >= since
        # Deletions first: a layer's whiteouts apply to the layers below it, not to what the
        # same layer adds (tar order would put `.wh.b` after an added `a`).
        for member in layer:
            path = _member_path(member.name)
            parent, _, name = path.rpartition("/")
            if not name.startswith(WHITEOUT):
                continue
            if name == OPAQUE:  # the directory stays; what the layers below held in it goes
                gone, below = [], parent + "/"
            else:
                target = f"{parent}/{name[len(WHITEOUT) :]}"
                was = tree.get(target)
                gone, below = [target], target + "/" if was is not None and was.isdir() else ""
            if below:  # a whole tree: one walk of the paths (files are the common case)
                gone += [p for p in tree if p.startswith(below)]
            for p in gone:
                if tree.pop(p, None) is not None and record:
                    touched.add(p)
        for member in layer:
            path = _member_path(member.name)
            if path != "/" and not path.rpartition("/")[2].startswith(WHITEOUT):
                tree[path] = member
                if record:
                    touched.add(path)
    if since >= len(layers):
        before = dict(tree)
    return before, tree, touched


def _state(member: tarfile.TarInfo) -> tuple[Any, ...]:
    """What compare_files compares of a path (a directory's size and time say nothing)."""
    plain = not member.isdir()
    return (
        member.type,
        member.size if plain else 0,
        int(member.mtime) if plain else 0,
        member.mode,
        member.uid,
        member.gid,
        member.linkname,
    )


def compare_layers(
    a: list[list[tarfile.TarInfo]],
    b: list[list[tarfile.TarInfo]],
    common: int,
    mount_points: Iterable[str] = (),
) -> LayerChanges:
    """Paths from image ``a`` to image ``b``, two images sharing their first ``common``
    layers: only what their own layers touch can differ (compared as compare_files does)."""
    mounts = set(mount_points)
    _, tree_a, touched_a = apply_layers(a, common)
    _, tree_b, touched_b = apply_layers(b, common)
    out = LayerChanges()
    for path in sorted(touched_a | touched_b):
        if path == "/" or is_noise(path, mounts):
            continue
        old, new = tree_a.get(path), tree_b.get(path)
        if old is None and new is None:
            continue
        if old is None:
            out.added.append(path)
        elif new is None:
            out.deleted.append(path)
        elif _state(old) != _state(new):
            out.changed.append(path)
    return out


def _ancestors(path: str) -> Iterator[str]:
    while path := path.rpartition("/")[0]:
        yield path


# -- packages ---------------------------------------------------------------------------------


def packages(engine: Engine, image: str) -> dict[str, dict[str, str]]:
    """manager -> {package: version} for dpkg, pip and npm (global), read from the package
    databases alone: a few archive reads of one never-started container, made at once (each
    costs the engine a mount of the container's filesystem, mostly waiting)."""
    from concurrent.futures import ThreadPoolExecutor

    info = engine.inspect_image(image)
    env = [str(e) for e in ((info.config.get("Env") if info else None) or ())]
    prefix = next((e.partition("=")[2] for e in env if e.startswith("NPM_CONFIG_PREFIX=")), "")
    npm_dirs = list(NPM_DIRS)
    if prefix:
        npm_dirs.append(prefix.rstrip("/") + "/lib/node_modules")
    cid = engine.create_stopped(image)
    try:
        out: dict[str, dict[str, str]] = {"dpkg": {}, "pip": {}, "npm": {}}
        with ThreadPoolExecutor(4) as pool:
            dpkg = pool.submit(_read_dpkg, engine, cid)
            npm = [pool.submit(_read_npm, engine, cid, d) for d in dict.fromkeys(npm_dirs)]
            out["dpkg"] = dpkg.result()
            minors = {
                name[len("python3.") :]
                for name in out["dpkg"]
                if re.fullmatch(r"python3\.\d+", name)
            } or {str(n) for n in range(8, 15)}
            dirs = [d.format(m) for m in sorted(minors) for d in PIP_VERSIONED]
            if "python3" not in out["dpkg"]:
                dirs.insert(0, PIP_DIR)
            pip = [pool.submit(_read_pip, engine, cid, d) for d in dirs]
            for f in pip:
                out["pip"].update(f.result())
            for f in npm:
                out["npm"].update(f.result())
        return out
    finally:
        engine.remove_container(cid, force=True)


def _read_dpkg(engine: Engine, cid: str) -> dict[str, str]:
    for member, data in _archive(engine, cid, DPKG_STATUS, lambda n: True):
        if data is not None and member.isfile():
            return parse_dpkg_status(data.decode("utf-8", "replace"))
    return {}


def _read_pip(engine: Engine, cid: str, directory: str) -> dict[str, str]:
    # Only the names of the *.dist-info directories are needed: no file is read.
    out = {}
    for member, _ in _archive(engine, cid, directory, lambda n: False):
        m = _DIST_INFO.search(member.name)
        if m and member.isdir():
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _read_npm(engine: Engine, cid: str, directory: str) -> dict[str, str]:
    out = {}
    for member, data in _archive(engine, cid, directory, lambda n: bool(_NPM_PACKAGE.match(n))):
        m = _NPM_PACKAGE.match(member.name)
        if m and data is not None:
            with contextlib.suppress(ValueError, AttributeError):
                out[m.group(1)] = str(json.loads(data).get("version", "?"))
    return out


def package_diff(
    engine: Engine, old: str, new: str, known: dict[str, dict[str, dict[str, str]]] | None = None
) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, dict[str, str]]]]:
    """Package changes from image ``old`` to ``new``, and the package lists read. Lists in
    ``known`` (image id -> packages) are not read again; the others are read at once (the
    time is the engine's: each archive read mounts the container's filesystem)."""
    from concurrent.futures import ThreadPoolExecutor

    have = dict(known or {})
    missing = [image for image in dict.fromkeys((old, new)) if image not in have]
    with ThreadPoolExecutor(2) as pool:
        have.update(
            zip(missing, pool.map(lambda image: packages(engine, image), missing), strict=True)
        )
    return package_changes(have[old], have[new]), {i: have[i] for i in missing}


def _archive(
    engine: Engine, cid: str, path: str, wanted: Any
) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """(member, content if ``wanted(member.name)``) of the tar of ``path``; nothing if the
    path does not exist."""
    data = engine.read_path(cid, path)
    if data is None:
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            content = None
            if member.isfile() and wanted(member.name):
                fh = tar.extractfile(member)
                content = fh.read() if fh is not None else None
            yield member, content


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
