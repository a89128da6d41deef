"""The host user's part of a prepared root: what makes any base usable by the host uid:gid.

pienv runs the agent as the host user (design rule 5) with ``HOME=/home/agent``. A stock image
knows nothing of that uid: no passwd entry (``whoami``, ssh, sudo and some installers fail), no
home (npm: ``EACCES mkdir '/home/agent'``). The root commit pienv makes from any base
(``PIENV_BASE_IMAGE``, `base build`, `reset --system/--all`) therefore gets one small layer,
built here as a tar and written into the never-started container before it is committed:

- a passwd/group entry for the host uid/gid, unless one exists: then that user is reused, as the
  devcontainers CLI's ``updateRemoteUserUID`` reuses the image's user (only its ids matter);
- ``/home/agent`` owned by the host user, with the agent state and cache directories pienv
  mounts volumes on, so that a new volume starts owned by the user (Docker copies the image
  directory's owner into an empty volume on first mount);
- ``/etc/sudoers.d/pienv-agent`` (passwordless) when the image has sudo, so the agent can
  ``sudo apt-get install``;
- with shared caches on, Debian's ``docker-clean`` apt hook disarmed (it deletes downloaded
  packages, which are now kept in the store's cache volume, outside every commit).
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pienv.config import ALL_STATE_DIRS, CACHES
from pienv.engine import Engine

HOME = "/home/agent"
SUDOERS = "/etc/sudoers.d/pienv-agent"
DOCKER_CLEAN = "/etc/apt/apt.conf.d/docker-clean"


@dataclass(frozen=True)
class HostUser:
    uid: int
    gid: int
    user: str  # the passwd name the uid has (reused or added)
    group: str
    added_user: bool
    added_group: bool
    sudo: bool
    paths: tuple[str, ...]  # what the layer writes (for the commit's change list)
    tar: bytes


def home_dirs(extra: Iterable[str] = ()) -> list[str]:
    """Dirs under the home made for the host user: every preset's state dir, the caches under
    the home, and the usual per-user install prefixes (npm -g and pip --user go to ~/.local)."""
    rel = [*ALL_STATE_DIRS, *extra, ".local/bin", ".config"]
    rel += [path[2:] for _, path in CACHES if path.startswith("~/")]
    out: list[str] = []
    for r in rel:
        parts = r.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in out:
                out.append(d)
    return out


def _read_file(engine: Engine, cid: str, path: str) -> tuple[bytes, tarfile.TarInfo] | None:
    """A regular file's content and tar header (owner, mode), or None."""
    if not engine.path_exists(cid, path):
        return None
    data = engine.read_archive(cid, path)
    if not data:
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                fh = tar.extractfile(m)
                return (fh.read(), m) if fh else None
    return None  # a directory or a symlink: leave it alone


def _text(found: tuple[bytes, tarfile.TarInfo] | None) -> str:
    return found[0].decode("utf-8", "replace") if found else ""


def _appended(text: str, line: str) -> bytes:
    return (text if text.endswith("\n") or not text else text + "\n").encode() + line.encode()


def _entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _free_name(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}{n}"
    return name


def _name_for(entries: list[list[str]], num: int, fallback: str = "") -> tuple[str, bool]:
    """(name, added): the name ``num`` has in passwd/group ``entries``, or a new one."""
    found = [e for e in entries if len(e) >= 3 and e[2] == str(num)]
    if found:
        return found[0][0], False
    return fallback or _free_name("agent", {e[0] for e in entries}), True


def prepare_host_user(
    engine: Engine, cid: str, uid: int, gid: int, caches: bool, state: Iterable[str] = ()
) -> HostUser:
    """The tar that prepares container ``cid`` (never started) for ``uid``:``gid``."""
    passwd_file = _read_file(engine, cid, "/etc/passwd")
    group_file = _read_file(engine, cid, "/etc/group")
    passwd, group = _text(passwd_file), _text(group_file)
    users = _entries(passwd)
    groups = _entries(group)
    now = int(time.time())
    buf = io.BytesIO()
    paths: list[str] = []

    def add(path: str, *, data: bytes | None = None, mode: int = 0o755, owner: int = 0,
            gowner: int = 0) -> None:  # fmt: skip
        info = tarfile.TarInfo(path.lstrip("/"))
        info.mtime, info.mode, info.uid, info.gid = now, mode, owner, gowner
        if data is None:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        paths.append(path)

    group_name, added_group = _name_for(groups, gid, "root" if gid == 0 else "")
    user_name, added_user = _name_for(users, uid)
    shell = "/bin/bash" if engine_has(engine, cid, "/bin/bash") else "/bin/sh"
    sudo = engine_has(engine, cid, "/etc/sudoers")
    # PAM's account check (sudo) wants a shadow entry too; "*": no password, not locked.
    shadow_file = _read_file(engine, cid, "/etc/shadow") if added_user else None

    def keep(found: tuple[bytes, tarfile.TarInfo] | None, mode: int) -> dict[str, int]:
        if found is None:
            return {"mode": mode}
        m = found[1]
        return {"mode": m.mode, "owner": m.uid, "gowner": m.gid}

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if added_group:
            line = f"{group_name}:x:{gid}:\n"
            add("/etc/group", data=_appended(group, line), **keep(group_file, 0o644))
        if added_user:
            line = f"{user_name}:x:{uid}:{gid}:pienv agent:{HOME}:{shell}\n"
            add("/etc/passwd", data=_appended(passwd, line), **keep(passwd_file, 0o644))
            shadow = _text(shadow_file)
            if shadow_file is not None and not any(e[0] == user_name for e in _entries(shadow)):
                line = f"{user_name}:*:::::::\n"
                add("/etc/shadow", data=_appended(shadow, line), **keep(shadow_file, 0o640))
        add(HOME, owner=uid, gowner=gid)
        for rel in home_dirs(state):
            add(f"{HOME}/{rel}", owner=uid, gowner=gid)
        if sudo:
            # By uid: whatever the user is called in this image.
            add(SUDOERS, data=f"#{uid} ALL=(ALL) NOPASSWD:ALL\n".encode(), mode=0o440)
        if caches and engine_has(engine, cid, DOCKER_CLEAN):
            note = (
                b"// Disarmed by pienv: downloaded packages stay in the store's apt cache\n"
                b"// volume (never in an env commit), so a second branch downloads nothing.\n"
            )
            add(DOCKER_CLEAN, data=note, mode=0o644)
    return HostUser(
        uid=uid,
        gid=gid,
        user=user_name,
        group=group_name,
        added_user=added_user,
        added_group=added_group,
        sudo=sudo,
        paths=tuple(paths),
        tar=buf.getvalue(),
    )


def engine_has(engine: Engine, cid: str, path: str) -> bool:
    """Whether ``path`` exists in the container (a HEAD on its archive: nothing is copied)."""
    return engine.path_exists(cid, path)
