"""After a run, nothing privileged it planted survives on the host (rule 13).

Root in the container is root on the host's files: through the workspace bind mount (and a
worktree's common git dir) the agent can leave setuid/setgid files, file capabilities, device
nodes and trees of another uid, which work on the host. Docker's API cannot mount them
`nosuid,nodev` (docs/security.md), and `CapDrop` only stops device nodes (MKNOD) and new file
capabilities (SETFCAP). So every run is swept after the command, before its commit:

- ``scan`` (on the host, as the user: lstat only, nothing followed): every entry whose ctime
  is at or after the run's start (the agent cannot set a ctime back without CAP_SYS_TIME) that
  is setuid/setgid (not a directory), a device node, owned by another uid, or a regular file
  with a ``security.capability`` attribute; a directory of another uid is reported whole;
- ``fix``: in a throwaway container of the store's *base* image (the agent can change its own
  image, never the base), as root with only CHOWN/FOWNER/DAC_OVERRIDE and no network: device
  nodes are removed, setuid/setgid bits stripped, and everything found given to the user
  (`chown` as root also drops file capabilities). Data is kept. When pienv itself runs as
  root it does the same in-process.

It costs one lstat per file of the workspace (see docs/performance.md for 100k files); the
fix container starts only when something was found. In the background commit it runs in the
finalizer, off the user's wait.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pienv.runloop.helpers import SWEEP
from pienv.store.crash import crashpoint

if TYPE_CHECKING:
    from pienv.engine import Engine

SUID = stat.S_ISUID | stat.S_ISGID
SCRIPT = (
    'u=$1; shift; cd /pienv-sweep || exit 1; for p in "$@"; do '
    '[ -e "$p" ] || [ -L "$p" ] || continue; '
    'find "$p" -xdev \\( -type b -o -type c \\) -exec rm -f {} +; '
    'find "$p" -xdev ! -type l ! -type d -perm /6000 -exec chmod ug-s {} +; '
    'chown -hR "$u" "$p"; [ -d "$p" ] && [ ! -L "$p" ] && chmod u+rwx "$p"; done'
)


@dataclass(frozen=True)
class Finding:
    root: Path
    rel: str
    kinds: tuple[str, ...]  # "setuid", "setgid", "capabilities", "device", "owner N"

    def __str__(self) -> str:
        return f"{self.rel} ({', '.join(self.kinds)})"


def _kinds(path: str, st: os.stat_result, uid: int) -> list[str]:
    kinds = []
    mode = st.st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kinds.append("device")
    elif not stat.S_ISDIR(mode):
        if mode & stat.S_ISUID:
            kinds.append("setuid")
        if mode & stat.S_ISGID:
            kinds.append("setgid")
    if uid and st.st_uid != uid:
        kinds.append(f"owner {st.st_uid}")
    if stat.S_ISREG(mode):
        try:
            os.getxattr(path, "security.capability", follow_symlinks=False)
            kinds.append("capabilities")
        except OSError:
            pass
    return kinds


def scan(root: Path, since: float, uid: int, skip: Iterable[str] = ()) -> list[Finding]:
    """What under ``root`` changed since ``since`` and is privileged (see the module)."""
    found: list[Finding] = []
    skipped = set(skip)
    stack = [(str(root), False)]
    top = len(str(root)) + 1
    while stack:
        here, recent = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            # A directory the run made unreadable (`chmod 000`) may hide anything: the fix
            # container (root) opens it up and sweeps inside.
            if recent:
                found.append(Finding(root, here[top:], ("unreadable",)))
            continue
        for e in entries:
            if e.path in skipped:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            kinds = _kinds(e.path, st, uid) if st.st_ctime >= since else []
            if kinds:
                found.append(Finding(root, e.path[top:], tuple(kinds)))
                if is_dir:
                    continue  # fixed whole (chown -R)
            if is_dir:
                stack.append((e.path, st.st_ctime >= since))
    return found


def fix_here(findings: Iterable[Finding]) -> list[Finding]:
    """pienv runs as root: strip, remove and keep in-process; what could not be fixed."""
    failed = []
    for f in findings:
        path = str(f.root / f.rel)
        try:
            st = os.lstat(path)
            if "device" in f.kinds:
                os.unlink(path)
                continue
            if "capabilities" in f.kinds:
                os.removexattr(path, "security.capability", follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & SUID and not stat.S_ISDIR(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~SUID)
        except OSError:
            failed.append(f)
    return failed


def summary(findings: list[Finding], failed: list[Finding], limit: int = 20) -> str:
    """The one line that says what was found and done."""
    shown = ", ".join(str(f) for f in findings[:limit])
    more = f" and {len(findings) - limit} more" if len(findings) > limit else ""
    text = (
        "warning: the run left privileged files on the host, defused (setuid/setgid "
        f"stripped, capabilities dropped, devices removed, given to you): {shown}{more}"
    )
    if failed:
        text += f"; NOT fixed, remove them as root: {', '.join(str(f) for f in failed[:limit])}"
    return text


@dataclass(frozen=True)
class Sweep:
    """What the finalizer (or the foreground run) sweeps after the command."""

    roots: tuple[str, ...]  # the run's writable host mounts: workspace, common git dir, ...
    since: float  # the run's start (a ctime margin included)
    uid: int
    gid: int
    base: str  # the image the fix container starts from (the store's base)
    fifo_dir: str  # where the fix container's script FIFO is made (the store's runs dir)


def sweep(engine: Engine, job: Sweep) -> str:
    """Scan, fix what was found; the one line that says so ("" when nothing was found)."""
    found = [f for root in job.roots for f in scan(Path(root), job.since, job.uid)]
    if not found:
        return ""
    failed = fix_here(found) if os.getuid() == 0 else fix_in_container(engine, job, found)
    return summary(found, failed)


def fix_in_container(engine: Engine, job: Sweep, found: list[Finding]) -> list[Finding]:
    """Fix ``found`` as root in a throwaway container of the base image, its mounts
    verified before the script runs (runloop.pin); what could not be fixed."""
    from pienv.errors import PienvError
    from pienv.runloop.launch import create
    from pienv.runloop.pin import Gate
    from pienv.runloop.sandbox import ENV_FILE
    from pienv.runloop.spec import ContainerSpec, Mount

    roots = sorted({f.root for f in found})
    mounts = [Mount(str(r), f"/pienv-sweep/{i}", False, "swept") for i, r in enumerate(roots)]
    paths = [f"{roots.index(f.root)}/{f.rel}" for f in found]
    fifo = Path(job.fifo_dir) / f"sweep-{os.getpid()}-{os.urandom(4).hex()}"
    gate = Gate.make(fifo, SCRIPT.encode(), mounts)
    spec = ContainerSpec(
        image=job.base,
        name="",
        entrypoint=("/bin/sh", "-c", '. "$0"', ENV_FILE, f"{job.uid}:{job.gid}", *paths),
        user="0:0",
        workdir="/",
        env={},
        env_file=str(fifo),
        mounts=(*mounts, Mount(str(fifo), ENV_FILE, True, "the sweep's script", directory=False)),
        info=None,
        network="none",
        cap_drop=("ALL",),
        cap_add=("CHOWN", "FOWNER", "DAC_OVERRIDE", "DAC_READ_SEARCH"),
        no_new_privileges=True,
        # The store, the kind and the pid that made it: a pienv killed before it removed the
        # container leaves one `pienv orphans` names and `clean-orphans` removes.
        extra_labels=engine.helper_labels(SWEEP) if engine.helper_labels is not None else {},
    )
    cid = ""
    try:
        cid = create(engine, spec)
        crashpoint("created-sweep")
        gate.open(lambda: _pid(cid))
        for _ in engine.run_streaming(cid, None):
            pass
        code = engine.wait(cid)
    except PienvError:
        code = -1
    finally:
        gate.close()
        if cid:
            with contextlib.suppress(PienvError):
                engine.remove_container(cid, force=True)
    if code != 0 or gate.problems:
        return found
    return [f for f in found if _still(f, job.uid)]


def _pid(cid: str) -> int:
    from pienv.engine import Engine

    state = Engine().inspect_container(cid)
    return state.pid if state else 0


def _still(f: Finding, uid: int) -> bool:
    """Whether ``f`` is still privileged after the fix."""
    path = str(f.root / f.rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False  # a device node, removed
    except OSError:
        return True
    return bool(_kinds(path, st, uid))
