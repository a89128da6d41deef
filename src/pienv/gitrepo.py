"""The only module that imports dulwich: find the repo root, its HEAD, worktrees."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pienv.errors import UsageError


@dataclass(frozen=True)
class RepoInfo:
    root: Path  # the checkout's top directory (the worktree's, for a linked worktree)
    common_dir: Path  # the shared .git directory
    gitdir: Path  # this checkout's git dir (.git/worktrees/NAME for a linked worktree)
    # Why ``common_dir`` is not this checkout's real common git dir ("" when it is, or when
    # there is none). ``.git`` files and ``commondir`` are files anyone can write, so the
    # relation is checked before pienv trusts it with a mount.
    link_problem: str = ""

    @property
    def is_linked_worktree(self) -> bool:
        """A linked worktree whose relation to its common dir is real (see `_link_problem`)."""
        return self.gitdir != self.common_dir and not self.link_problem


def find(path: Path) -> RepoInfo | None:
    """The checkout containing ``path`` (any subdirectory, linked worktrees too), or None.

    Git's own discovery, by hand: the nearest directory, walking up from the physical path,
    whose ``.git`` is a git dir (has ``objects/``) or a ``gitdir:`` file. This is what
    dulwich's ``Repo.discover`` answers (tests/test_gitrepo.py checks both agree); it runs
    on every `pienv run`, where importing dulwich would cost 15-40 ms.
    """
    start = Path(os.path.realpath(path))
    for d in (start, *start.parents):
        dotgit = d / ".git"
        if (dotgit / "objects").is_dir():
            return RepoInfo(root=d, common_dir=dotgit, gitdir=dotgit)
        if dotgit.is_file():
            try:
                text = dotgit.read_text()
            except OSError:
                continue
            if not text.startswith("gitdir:"):
                continue
            gitdir = Path(os.path.realpath(d / text[len("gitdir:") :].strip()))
            common = gitdir
            with contextlib.suppress(OSError):
                common = Path(os.path.realpath(gitdir / (gitdir / "commondir").read_text().strip()))
            problem = _link_problem(dotgit, gitdir, common) if common != gitdir else ""
            return RepoInfo(root=d, common_dir=common, gitdir=gitdir, link_problem=problem)
    return None


def _link_problem(dotgit: Path, gitdir: Path, common: Path) -> str:
    """Why a ``.git`` file's (gitdir, commondir) pair is not a real linked worktree of a
    repository ("" when it is): git's own layout is ``<common>/worktrees/<name>``, whose
    ``gitdir`` file points back at this ``.git`` file, and ``<common>`` is a git directory.
    A forged pair (a downloaded tarball, an agent's earlier run) could name any host
    directory, e.g. /var/run or the home directory's parent."""
    if gitdir.parent != common / "worktrees":
        return f"{dotgit} names {gitdir}, which is not in {common}/worktrees"
    try:
        back = (gitdir / "gitdir").read_text().strip()
    except OSError:
        return f"{gitdir} has no gitdir file pointing back at {dotgit}"
    if Path(os.path.realpath(gitdir / back)) != Path(os.path.realpath(dotgit)):
        return f"{gitdir}/gitdir points at {back}, not at {dotgit}"
    if not all((common / n).is_dir() for n in ("objects", "refs")):
        return f"{common} is not a git directory"
    return ""


def gitlinks(gitdir: Path) -> list[str]:
    """The paths of the gitlinks (submodule entries, mode 160000) in ``gitdir``'s index.

    A host `git status` recurses into each populated one and runs git there with *that*
    repository's config and hooks. Cheap when there are none: the index bytes are searched
    for the gitlink mode before dulwich is imported (this runs after every run)."""
    try:
        data = (gitdir / "index").read_bytes()
    except OSError:
        return []
    if b"\x00\x00\xe0\x00" not in data:  # mode 0o160000, big-endian, in an entry
        return []
    if data[:4] == b"DIRC" and data[4:8] in (b"\x00\x00\x00\x02", b"\x00\x00\x00\x03"):
        return _gitlinks_v2(data)
    from dulwich.index import Index  # index v4 (prefix-compressed paths): rare

    try:
        index = Index(str(gitdir / "index"))
    except Exception:  # a torn index the agent left: git will say so
        return []
    return [
        bytes(path).decode(errors="surrogateescape")
        for path, entry in index.items()
        if getattr(entry, "mode", 0) == 0o160000
    ]


def _gitlinks_v2(data: bytes) -> list[str]:
    """Gitlinks of an index in format 2 or 3, read by hand: before a run in a repository
    with submodules, importing dulwich would cost 100+ ms."""
    count = int.from_bytes(data[8:12], "big")
    found = []
    pos = 12
    for _ in range(count):
        if pos + 62 > len(data):
            break
        mode = int.from_bytes(data[pos + 24 : pos + 28], "big")
        flags = int.from_bytes(data[pos + 60 : pos + 62], "big")
        start = pos + 62 + (2 if flags & 0x4000 else 0)  # v3 extended flags
        end = data.find(b"\x00", start)
        if end < 0:
            break
        if mode == 0o160000:
            found.append(data[start:end].decode(errors="surrogateescape"))
        pos += (end - pos + 8) // 8 * 8  # NUL-padded to a multiple of 8
    return found


def head_commit(root: Path) -> str:
    """The commit checked out at ``root`` ("" when unborn, or when ``root`` is not a repo's
    top directory).

    Read by hand (HEAD, loose refs, packed-refs), as git does: it is asked on every run that
    may commit, and importing dulwich costs 15-40 ms (tests/test_gitrepo.py checks both
    agree). Anything this reader does not know (e.g. a reftable repository) goes to dulwich.
    """
    info = find(root)
    if info is None or info.root != Path(os.path.realpath(root)):
        return ""
    try:
        value = (info.gitdir / "HEAD").read_text().strip()
        for _ in range(10):  # symbolic refs may chain; git gives up after 5
            if not value.startswith("ref:"):
                return value if _is_object_id(value) else _dulwich_head(root)
            value = _read_ref(info, value[len("ref:") :].strip())
            if value == "":
                return ""  # unborn branch
    except _Unknown:
        pass
    except OSError:
        return ""
    return _dulwich_head(root)


class _Unknown(Exception):
    """A ref store this reader does not handle."""


def _is_object_id(value: str) -> bool:
    return len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value)


def _read_ref(info: RepoInfo, name: str) -> str:
    """The value of ref ``name`` (a target id or ``ref: ...``); "" when it does not exist."""
    if not name.startswith("refs/") and name != "HEAD":
        raise _Unknown(name)
    per_worktree = name == "HEAD" or name.startswith(("refs/worktree/", "refs/bisect/"))
    loose = (info.gitdir if per_worktree else info.common_dir) / name
    try:
        return loose.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        pass
    try:
        packed = (info.common_dir / "packed-refs").read_text()
    except FileNotFoundError:
        return ""
    for line in packed.splitlines():
        if line[:1] in ("#", "^"):
            continue
        value, _, ref = line.partition(" ")
        if ref.strip() == name:
            return value.strip()
    return ""


def _dulwich_head(root: Path) -> str:
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return repo.head().decode()
    except (NotGitRepository, KeyError, OSError):
        return ""


def current_branch(root: Path) -> str:
    from dulwich.repo import Repo

    with Repo(str(root)) as repo:
        target = repo.refs.get_symrefs().get(b"HEAD", b"")  # type: ignore[call-overload]
    return bytes(target).decode().removeprefix("refs/heads/")


def add_worktree(repo_root: Path, path: Path, branch: str) -> bool:
    """Create a linked worktree at ``path`` on git branch ``branch``: the existing branch
    (`git worktree add PATH BRANCH`), else a new one from HEAD (`git worktree add -b`).
    True when the branch was new."""
    from dulwich.repo import Repo
    from dulwich.worktree import add_worktree as dulwich_add

    with Repo(str(repo_root)) as repo:
        ref: Any = b"refs/heads/" + branch.encode()  # dulwich types refs as a NewType
        existed = bool(repo.refs.as_dict().get(ref))
        try:
            repo.head()
        except KeyError as exc:
            raise UsageError(f"{repo_root} has no commit yet; commit something first") from exc
        _refuse_planted(Path(repo.controldir()))
        try:
            wt = dulwich_add(repo, str(path), branch=branch.encode())
        except (ValueError, KeyError) as exc:
            raise UsageError(f"cannot add worktree {path}: {exc}") from exc
        except OSError as exc:  # /proc/x, a read-only or full disk: nothing was made
            raise UsageError(f"cannot add worktree {path}: {exc.strerror}") from exc
        wt.close()
    return not existed


def _refuse_planted(gitdir: Path) -> None:
    """Refuse to write a worktree's admin files through a symlink planted among the git
    dir's entries (a run's agent can plant one: dulwich would follow it out of the repo)."""
    for name in ("worktrees", "commondir"):
        entry = gitdir / name
        if entry.is_symlink():
            raise UsageError(
                f"refusing to add a worktree: {entry} is a symlink (to "
                f"{os.readlink(entry)}); git makes none there, a run may have planted it",
                hint=f"check it, then remove it: rm {entry}",
            )


def is_dirty(path: Path) -> bool:
    """Whether a checkout has uncommitted changes (slow on huge trees: not for the hot path)."""
    from dulwich import porcelain

    status = porcelain.status(str(path), untracked_files="normal")
    staged = any(status.staged[k] for k in ("add", "delete", "modify"))
    return bool(staged or status.unstaged or status.untracked)


def remove_worktree(repo_root: Path, path: Path) -> None:
    """Remove a linked worktree (directory and its admin dir in .git/worktrees)."""
    from dulwich.repo import Repo
    from dulwich.worktree import remove_worktree as dulwich_remove

    with Repo(str(repo_root)) as repo:
        dulwich_remove(repo, str(path), force=True)


def home_dir() -> Path:
    return Path(os.path.expanduser("~")).resolve()


# -- code recorded with env commits (issue 25) ----------------------------------------------
# Git plumbing (the git binary), not dulwich: a snapshot of a 10k-file tree with a copied
# index rehashes only what changed (stat data), which dulwich's index code cannot match; a
# machine without git records the HEAD alone.

CODE_REF_PREFIX = "refs/pienv/code/"
# Host git run on a tree the agent wrote: no hooks, no fsmonitor, no submodule recursion,
# no pager; the repository's config stays (it is read-only inside a run, rule 6). No replace
# refs: the agent writes `refs/` in a run, and a `refs/replace/<id>` would make a recorded
# commit id read as another commit of its choosing (the code `--with-code` brings back).
_SAFE = (
    "--no-replace-objects",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "submodule.recurse=false",
    "-c",
    "core.pager=cat",
)
_IDENTITY = {
    "GIT_AUTHOR_NAME": "pienv",
    "GIT_AUTHOR_EMAIL": "pienv@localhost",
    "GIT_COMMITTER_NAME": "pienv",
    "GIT_COMMITTER_EMAIL": "pienv@localhost",
}


@dataclass(frozen=True)
class CodeSnapshot:
    head: str  # the checkout's HEAD commit ("" unborn)
    code: str  # a commit of HEAD + everything uncommitted and untracked; == head when clean


def _git(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> str:
    import subprocess

    proc = subprocess.run(
        ["git", *_SAFE, *args],
        cwd=root,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise UsageError(
            f"git {' '.join(args[:2])} failed in {root}: {proc.stderr.strip().splitlines()[-1:]}"
        )
    return proc.stdout.rstrip("\n")


def has_git() -> bool:
    import shutil

    return shutil.which("git") is not None


def snapshot_code(root: Path, message: str = "pienv: code snapshot") -> CodeSnapshot | None:
    """Record ``root``'s code without touching its index or working tree: HEAD, and when the
    tree is dirty a commit (parent HEAD) of the tracked changes and untracked files (ignored
    ones excluded, as `git stash -u`), kept alive by ``refs/pienv/code/<id>``. None when
    ``root`` is not a repository's top directory with a commit, or git is missing."""
    import shutil
    import tempfile

    head = head_commit(root)
    info = find(root)
    if not head or info is None or info.link_problem or not has_git() or git_dir_hazard(info):
        # (A forged `.git` file, a planted `commondir` or symlink could point host git at a
        # config the agent wrote or make it write outside the repository.)
        return None
    with tempfile.TemporaryDirectory(prefix="pienv-code-") as tmp:
        index = Path(tmp) / "index"
        # The user's index as a start: its stat data spare rehashing unchanged files.
        with contextlib.suppress(OSError):
            shutil.copyfile(info.gitdir / "index", index)
        env = {"GIT_INDEX_FILE": str(index)}
        # Untracked files go in unless they are huge (a build tree nobody ignored): hashing
        # gigabytes into the user's object store is no snapshot's business.
        tracked_only = _untracked_bytes(root, UNTRACKED_CAP) > UNTRACKED_CAP
        # Bounded: a commit waits for it (record_code falls back to HEAD alone).
        _git(root, "add", "-u" if tracked_only else "-A", "--", ".", env=env, timeout=SNAPSHOT_WAIT)
        tree = _git(root, "write-tree", env=env)
        if tracked_only:
            message += f" (untracked files left out: over {UNTRACKED_CAP >> 20} MiB)"
    if tree == _git(root, "rev-parse", f"{head}^{{tree}}"):
        return CodeSnapshot(head=head, code=head)
    code = _git(root, "commit-tree", tree, "-p", head, "-m", message, env=_IDENTITY)
    _git(root, "update-ref", CODE_REF_PREFIX + code, code)
    return CodeSnapshot(head=head, code=code)


SNAPSHOT_WAIT = 120.0  # seconds a snapshot's `git add` may take before it is given up
UNTRACKED_CAP = 64 << 20  # bytes of untracked (not ignored) files a snapshot takes in


# What git writes in a git dir when pienv snapshots or restores code (refs, reflogs, the
# index, objects): a symlink in their place, which git never makes, is followed by git's
# writes, to anywhere on the host. (hooks/ is not read: core.hooksPath=/dev/null.)
_WRITTEN = ("HEAD", "ORIG_HEAD", "index", "packed-refs", "config", "objects", "worktrees")
_WALKED = ("refs", "logs")


def git_dir_hazard(info: RepoInfo) -> str:
    """Why host git must not be run for pienv in ``info``'s checkout ("" when it may): a
    ``commondir`` in a common git dir (git never writes one; it points git at a config
    of the writer's choosing, and its filters run on the host), or a symlink where git
    writes. The agent can plant both in a workspace's ``.git`` (rule 6)."""
    if os.path.lexists(info.common_dir / "commondir"):
        return f"{info.common_dir / 'commondir'} redirects git to another config"
    for d in dict.fromkeys((info.gitdir, info.common_dir)):
        for name in (*_WRITTEN, *_WALKED):
            if os.path.islink(d / name):
                return f"{d / name} is a symlink"
        with contextlib.suppress(OSError):
            for entry in os.scandir(d / "objects"):
                if entry.is_symlink():
                    return f"{entry.path} is a symlink"
        for name in _WALKED:
            for top, dirs, files in os.walk(d / name):
                for n in (*dirs, *files):
                    if os.path.islink(os.path.join(top, n)):
                        return f"{os.path.join(top, n)} is a symlink"
    return ""


def _check_git_dir(root: Path) -> None:
    info = find(root)
    problem = git_dir_hazard(info) if info is not None else ""
    if problem:
        raise UsageError(
            f"pienv will not run git in {root}: {problem}",
            hint="a run may have planted it; check it and move it aside",
        )


def _untracked_bytes(root: Path, stop_at: int) -> int:
    """The size of the untracked, not ignored files (counting stops past ``stop_at``)."""
    out = _git(root, "ls-files", "-z", "--others", "--exclude-standard")
    total = 0
    for name in out.split("\0"):
        if name:
            with contextlib.suppress(OSError):
                total += os.lstat(root / name).st_size
            if total > stop_at:
                break
    return total


def has_commit(root: Path, commit: str) -> bool:
    # A recorded id (a pulled branch's label) is never an option or revision expression.
    ok = _is_object_id(commit)
    return ok and bool(_git(root, "cat-file", "-t", commit, check=False) == "commit")


def dirty_paths(root: Path) -> list[str]:
    """What `git status` would list (tracked changes and untracked files, not ignored ones)."""
    out = _git(root, "status", "--porcelain", "--untracked-files=normal", "--ignore-submodules")
    return [line[3:] for line in out.splitlines() if line]


_OPERATIONS = (
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "BISECT_LOG",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
)


def operation_in_progress(root: Path) -> str:
    """The git operation under way in the checkout ``root`` (a merge, rebase, cherry-pick,
    revert, bisect), "" when none: its commits-so-far live on a detached HEAD that a
    checkout would leave behind, even with a clean tree."""
    info = find(root)
    if info is None:
        return ""
    return next((n for n in _OPERATIONS if os.path.lexists(info.gitdir / n)), "")


def restore_code(root: Path, head: str, code: str) -> bool:
    """Bring the clean checkout ``root`` to ``head`` (detached) with ``code``'s uncommitted
    state in its working tree (untracked files untracked again); False, nothing changed, when
    that would overwrite a file (an ignored one: git's checkout replaces those silently). The
    caller checked that ``root`` is clean and no operation is under way."""
    _check_git_dir(root)
    for rev in (head, code):
        _check_object_id(rev)
    try:
        _git(root, "checkout", "-q", "--no-overwrite-ignore", "--detach", code or head)
    except UsageError:  # git checks before it writes: the checkout is as it was
        return False
    if code and code != head:
        _git(root, "reset", "-q", head)  # index back to HEAD, the tree keeps the snapshot
    return True


def _check_object_id(rev: str) -> None:
    # Recorded in image labels (a pulled branch's too): never an option or a revision
    # expression for git.
    if rev and not _is_object_id(rev):
        raise UsageError(f"the recorded code {rev[:40]!r} is not a git commit id")


def add_code_worktree(repo_root: Path, path: Path, head: str, code: str) -> None:
    """A new linked worktree at ``path``, detached at ``head``, holding ``code``'s state."""
    _check_git_dir(repo_root)
    for rev in (head, code):
        _check_object_id(rev)
    _git(repo_root, "worktree", "add", "-q", "--detach", str(path), code or head)
    if code and code != head:
        _git(path, "reset", "-q", head)


def export_tree(root: Path, commit: str, target: Path) -> None:
    """Write ``commit``'s files into the directory ``target`` (no .git; `git archive`)."""
    import subprocess
    import tarfile

    _check_object_id(commit)  # never an option (`--output=FILE`, `--remote=URL`)
    proc = subprocess.run(
        ["git", *_SAFE, "archive", "--format=tar", commit],
        cwd=root,
        capture_output=True,
    )
    if proc.returncode != 0:
        raise UsageError(f"cannot read commit {commit[:12]} in {root}: it is not there")
    import io

    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        # "tar", not "data": links may point anywhere (they are not followed), paths may not.
        tar.extractall(target, filter="tar")


def record_code(root: Path, message: str) -> tuple[str, str]:
    """(HEAD, code) to label an env commit with: the snapshot when it can be made, else the
    HEAD alone. Never raises: a commit is not lost for want of a code snapshot."""
    try:
        snap = snapshot_code(root, message)
    except Exception:  # a broken repository, git gone meanwhile: record what reads cheaply
        snap = None
    if snap is None:
        head = head_commit(root)
        return head, ""
    return snap.head, snap.code


def drop_code_ref(root: Path, code: str) -> bool:
    """Delete ``refs/pienv/code/<code>`` in the repository at ``root`` (True when it was
    there); a repository that is gone or broken is left alone."""
    info = find(root)
    if info is None or info.link_problem or not has_git() or git_dir_hazard(info):
        return False
    ref = CODE_REF_PREFIX + code
    if not _git(root, "rev-parse", "-q", "--verify", ref, check=False):
        return False
    _git(root, "update-ref", "-d", ref, check=False)
    return True
