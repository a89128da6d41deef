"""An image's layers read from the overlay storage driver's own directories, when the engine
runs on this host and they are readable (root, or a rootless engine's own user): what
`docker save` hands out, without making the engine write out the whole image (5.6 s for the
470 MB realistic base under load, for a diff of 800 paths).

Only the layers above a shared base are walked in full; in the base layers only the paths
those touch are looked up (and the trees they delete), so a diff costs what it lists. The
entries are tar headers as in a layer tarball: whiteouts (overlayfs: a 0:0 character
device) become `.wh.NAME`, an opaque directory (xattr `trusted.overlay.opaque` or
`user.overlay.opaque` = "y") gets `.wh..wh..opq`.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable, Sequence

from pienv.ops.fsdiff import OPAQUE, WHITEOUT

Layer = list[tarfile.TarInfo]
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def read(
    dirs: Sequence[str], since: int, also: Iterable[str] = (), also_trees: Iterable[str] = ()
) -> list[Layer] | None:
    """The layers whose directories are ``dirs`` (base first): ``dirs[since:]`` in full,
    the others only for the paths those (and ``also``, ``also_trees``) touch. None when a
    directory cannot be read here (another host's engine, another user's storage)."""
    try:
        upper = [_walk(d) for d in dirs[since:]]
        needed, trees = touched(upper)
        needed |= set(also)
        trees |= set(also_trees)
        lower = [_sparse(d, needed, trees) for d in dirs[:since]]
    except OSError:
        return None
    return [*lower, *upper]


def touched(layers: Iterable[Layer]) -> tuple[set[str], set[str]]:
    """The paths ``layers`` hold (whiteouts as the path they delete) and the directories
    whose whole tree they delete or hide (whiteouts of a directory, opaque directories)."""
    paths: set[str] = set()
    trees: set[str] = set()
    for layer in layers:
        for member in layer:
            path = "/" + member.name.removeprefix("./").strip("/")
            parent, _, name = path.rpartition("/")
            if name == OPAQUE:
                trees.add(parent or "/")
            elif name.startswith(WHITEOUT):
                target = f"{parent}/{name[len(WHITEOUT) :]}"
                paths.add(target)
                trees.add(target)
            else:
                paths.add(path)
    return paths, trees


def _readable(top: str) -> None:
    """OSError unless ``top`` is a directory this process can list: a lookup that fails in
    an unreadable one must never pass for a path that is not there."""
    with os.scandir(top):
        pass


def _raise(exc: OSError) -> None:
    raise exc


def _walk(top: str) -> Layer:
    _readable(top)
    out: Layer = []
    for root, dirnames, filenames in os.walk(top, onerror=_raise):
        for name in dirnames + filenames:
            full = os.path.join(root, name)
            out.extend(_entries(full, "/" + os.path.relpath(full, top)))
    return out


def _sparse(top: str, paths: set[str], trees: set[str]) -> Layer:
    _readable(top)
    out: Layer = []
    seen_dirs: set[str] = set()
    for path in sorted(paths):
        # An opaque directory on the way hides what the layers below hold under it.
        for parent in _parents(path):
            if parent not in seen_dirs:
                seen_dirs.add(parent)
                full = top + parent
                if parent != "/" and os.path.isdir(full) and not os.path.islink(full):
                    out.extend(_entries(full, parent))
        full = top + path
        if os.path.lexists(full) and path not in seen_dirs:
            out.extend(_entries(full, path))
    for tree in sorted(trees):
        full = top + tree
        if os.path.isdir(full) and not os.path.islink(full):
            for member in _walk(full):
                member.name = "." + tree + member.name.removeprefix(".")
                out.append(member)
    return out


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _entries(full: str, path: str) -> Layer:
    st = os.lstat(full)
    parent, _, name = path.rpartition("/")
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return [tarfile.TarInfo(f".{parent}/{WHITEOUT}{name}")]
    info = tarfile.TarInfo("." + path)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    out = [info]
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        if _opaque(full):
            out.append(tarfile.TarInfo(f".{path}/{OPAQUE}"))
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(full)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    elif stat.S_ISCHR(st.st_mode):
        info.type = tarfile.CHRTYPE
    elif stat.S_ISBLK(st.st_mode):
        info.type = tarfile.BLKTYPE
    else:
        info.type = tarfile.FIFOTYPE
    return out


def _opaque(full: str) -> bool:
    for attr in _OPAQUE_XATTRS:
        try:
            if os.getxattr(full, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False
