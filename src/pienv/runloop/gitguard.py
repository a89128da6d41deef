"""git metadata as a boundary (rules 6 and 13): what of a workspace's git dirs is mounted
read-only or pre-made before a run, and what a run planted there is moved aside after it.

Whatever in a git dir makes the host's git read another path or run code is either made
(empty) and mounted read-only before the run (`hooks/`, `worktrees/`, `modules/`,
`config.worktree`, and `config`) or checked after it (a symlink among the git dir's
entries, a new `commondir`, a submodule's git config or hooks). pienv's own writes here
never follow a symlink (O_NOFOLLOW, mkdir, rename).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pienv.errors import UsageError
from pienv.gitrepo import RepoInfo
from pienv.runloop.sandbox import WORKSPACE, MountPolicy, _real, _within
from pienv.runloop.spec import Mount

Binds = dict[str, Mount]  # host path -> its mount (one mount per host path)
# What in a git dir makes git run code on the host (hooks, config: core.hooksPath,
# core.fsmonitor, aliases, includes, filters; config.worktree with extensions.worktreeConfig;
# worktrees/*/commondir, which redirects a linked worktree to another common dir).
_MAX_MODULES = 64


def git_mounts(
    root: Path, repo: RepoInfo | None, policy: MountPolicy, protect: bool
) -> tuple[Binds, list[str]]:
    """The git metadata mounts of a workspace at ``root``, and notes on what was left out.

    A linked worktree's common git dir is mounted (rw, at its host path) only when the
    relation is real and it passes the mount policy. With ``protect`` (the default) every
    file through which git makes the *host* run code is mounted read-only over the writable
    repository, and ``.git`` itself is a mount point, so it cannot be renamed or replaced.
    """
    binds: Binds = {}
    notes: list[str] = []
    if repo is None:
        return binds, notes
    dotgit = root / ".git"
    target = Path(WORKSPACE) / ".git"
    if repo.link_problem:
        notes.append(f"git metadata not mounted: {repo.link_problem}")
    if not protect:
        pass  # [run] protect_git = false: the user's explicit choice (docs/security.md)
    elif dotgit.is_symlink():
        notes.append(f"{dotgit} is a symlink: pienv does not make it read-only")
    elif dotgit.is_file():
        binds[str(dotgit)] = Mount(
            str(dotgit), str(target), True, "git: the .git file", directory=False
        )
        inner = _inner_gitdir(root, repo)
        if inner is not None:
            # `git init --separate-git-dir` into the tree: that git dir is the repo's, in
            # the writable workspace. A mount point of its own (it cannot be renamed and
            # replaced), with the same read-only files as a `.git` directory.
            inside = Path(WORKSPACE) / inner.relative_to(_real(root))
            binds[str(inner)] = Mount(
                str(inner), str(inside), False, "git: the repository's git dir"
            )
            _protect_gitdir(inner, inside, binds, notes)
    elif repo.gitdir == _real(dotgit):
        # A mount point: it cannot be renamed or replaced from inside.
        binds[str(dotgit)] = Mount(str(dotgit), str(target), False, "git: .git")
        _protect_gitdir(dotgit, target, binds, notes)
    if not repo.is_linked_worktree:
        return binds, notes
    try:
        common = policy.check(repo.common_dir, "the worktree's common git dir")
    except UsageError as exc:
        notes.append(f"git metadata not mounted: {exc.message}")
        return binds, notes
    # The worktree's .git file names host paths under the common dir: mount it at that same
    # path so git works inside.
    binds[str(common)] = Mount(str(common), str(common), False, "git: the common git dir")
    if protect:
        _protect_gitdir(common, common, binds, notes)
        gitdir = repo.gitdir
        # Over the read-only worktrees/.
        binds[str(gitdir)] = Mount(str(gitdir), str(gitdir), False, "git: this worktree's git dir")
        _claim_file(gitdir / "config.worktree", notes)  # git reads it with worktreeConfig
        for name in ("commondir", "gitdir", "config.worktree"):
            _read_only(gitdir / name, gitdir / name, binds, notes)
    return binds, notes


def planted_commondir(root: Path, repo: RepoInfo | None) -> Path | None:
    """The ``commondir`` file git would read in a main repository's ``.git``, if that is a
    directory. git never writes one there, and it cannot be mounted read-only before it
    exists: `run` checks it before and after the container, and moves aside one that appeared
    (it would point the host's git at a config of the agent's choosing)."""
    if repo is None:
        return None
    if repo.is_linked_worktree:
        # The common dir is mounted read-write (git needs it): a `commondir` written there
        # redirects the *main* checkout's git, which never reads one there either.
        return repo.common_dir / "commondir"
    if repo.gitdir != repo.common_dir:
        return None
    dotgit = root / ".git"
    if dotgit.is_file():
        inner = _inner_gitdir(root, repo)
        return inner / "commondir" if inner is not None else None
    return dotgit / "commondir" if dotgit.is_dir() and not dotgit.is_symlink() else None


def _inner_gitdir(root: Path, repo: RepoInfo) -> Path | None:
    """The git dir a main checkout's ``.git`` file names, when it lies inside the workspace."""
    if repo.gitdir != repo.common_dir or repo.link_problem:
        return None
    real_root = _real(root)
    gitdir = _real(repo.gitdir)
    return gitdir if gitdir != real_root and _within(gitdir, real_root) else None


def planted_submodules(
    root: Path, repo: RepoInfo | None, since: float, before: frozenset[str]
) -> list[Path]:
    """The ``.git`` of each gitlink (submodule entry in the index) under ``root`` that is
    not in ``before`` (the gitlinks when the run started: a nested repo made in an earlier
    run, gitlinked in this one), or whose git config or hooks were written since ``since``
    (a ctime: `touch -d` cannot backdate it).

    The host's `git status` at the top of the workspace recurses into every populated
    gitlink and runs git there with that repository's own config: an agent that creates a
    nested repo with `core.fsmonitor` and adds it to the index (`git update-index
    --cacheinfo 160000,...`) would make the host run its program. `run` moves these aside."""
    if repo is None or repo.link_problem:
        return []
    from pienv.gitrepo import gitlinks

    found = []
    for rel in gitlinks(repo.gitdir):
        dotgit = root / rel / ".git"
        if not os.path.lexists(dotgit) or not _under(dotgit, root):
            continue
        if rel not in before:
            found.append(dotgit)
            continue
        candidates = [dotgit] if dotgit.is_file() or dotgit.is_symlink() else []
        gitdir = dotgit
        if dotgit.is_file():
            with contextlib.suppress(OSError, ValueError):
                text = dotgit.read_text(errors="replace")
                if text.startswith("gitdir:"):
                    gitdir = Path(os.path.realpath(dotgit.parent / text[7:].strip()))
        for name in ("config", "config.worktree", "commondir", "hooks"):
            candidates.append(gitdir / name)
        hooks = gitdir / "hooks"
        with contextlib.suppress(OSError):
            if hooks.is_dir():
                candidates += list(hooks.iterdir())
        if any(_changed_since(c, since) for c in candidates):
            found.append(dotgit)
    return found


def quarantine_submodule(dotgit: Path) -> str:
    """Move a gitlink's ``.git`` aside, so the host's git no longer recurses into it."""
    aside = dotgit.with_name(".git.pienv-quarantined")
    what = (
        f"warning: the run wrote the git config or hooks of submodule {dotgit.parent}, "
        "which your `git status` would run"
    )
    try:
        os.replace(dotgit, aside)
    except OSError as exc:
        return f"{what}; remove {dotgit} before running git here ({exc.strerror})"
    return f"{what}; moved {dotgit.name} to {aside} (check it before moving it back)"


def _under(path: Path, root: Path) -> bool:
    return _within(Path(os.path.realpath(path.parent)), _real(root))


def _changed_since(path: Path, since: float) -> bool:
    try:
        return os.lstat(path).st_ctime >= since
    except OSError:
        return False


def quarantine(path: Path, to: Path | None = None) -> str:
    """Move an entry the agent planted in a git dir out of git's way (a rename: a symlink
    moves as itself, never followed) to ``to`` (default: beside it) + `.pienv-quarantined`;
    the note says where."""
    base = to or path
    aside = base.with_name(f"{base.name}.pienv-quarantined")
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = base.with_name(f"{base.name}.pienv-quarantined{n}")
    what = (
        f"warning: the run planted {path}, a symlink your git would follow"
        if path.is_symlink()
        else f"warning: the run created {path}, which points your git at another config"
    )
    try:
        os.rename(path, aside)
    except OSError as exc:
        return f"{what}; remove it before running git here ({exc.strerror})"
    return f"{what}; moved it to {aside if to else aside.name}"


# Entries of a git dir that make git read another path or run code when a run plants them:
# made before the run (empty) and mounted read-only, so nothing can be planted there.
CLAIMED_DIRS = ("hooks", "worktrees", "modules")
CLAIMED_FILES = ("config.worktree",)


def _claim_file(path: Path, notes: list[str]) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except FileExistsError:
        pass
    except OSError as exc:
        notes.append(f"cannot create {path} to protect it: {exc.strerror}")


def _claim(host: Path, notes: list[str]) -> None:
    """Make ``host``'s claimed entries that are missing (never through a symlink: a planted
    one was moved aside first, and mkdir/O_EXCL|O_NOFOLLOW never follow)."""
    for name in CLAIMED_DIRS:
        try:
            os.mkdir(host / name, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            notes.append(f"cannot create {host / name} to protect it: {exc.strerror}")
    for name in CLAIMED_FILES:
        _claim_file(host / name, notes)


def _protect_gitdir(host: Path, target: Path, binds: Binds, notes: list[str]) -> None:
    _claim(host, notes)
    for name in ("hooks", "config", "config.worktree", "worktrees"):
        _read_only(host / name, target / name, binds, notes)
    modules = host / "modules"
    if not modules.is_dir() or modules.is_symlink():
        return
    if not any(modules.iterdir()):
        _read_only(modules, target / "modules", binds, notes)  # nothing to grow into
        return
    # A mount point of its own (it cannot be renamed or replaced from inside), writable for
    # the submodules' objects; each submodule's hooks and config read-only in it.
    binds[str(modules)] = Mount(str(modules), str(target / "modules"), False, "git: modules")
    # Submodules' git dirs: the host's `git status` recurses into them.
    found = 0
    for dirpath, dirnames, filenames in os.walk(modules):
        if "HEAD" in filenames and "objects" in dirnames:
            sub = Path(dirpath)
            rel = sub.relative_to(host)
            for name in ("hooks", "config", "config.worktree"):
                _read_only(sub / name, target / rel / name, binds, notes)
            dirnames[:] = ["modules"] if "modules" in dirnames else []
            found += 1
            if found >= _MAX_MODULES:
                notes.append(f"more than {_MAX_MODULES} submodule git dirs: the rest unprotected")
                return


# Not walked for symlinks: objects (huge; git reads objects by name, and what it could
# follow there only reads), and the git dirs mounted read-only into the run.
_UNWALKED = frozenset({"objects", "lfs", "worktrees", "modules"})


def planted_links(gitdir: Path) -> list[Path]:
    """Symlinks among a git dir's entries, at any depth (`logs/HEAD`, `refs/heads/x`,
    `packed-refs`, ...): git makes none there, and through one the host's git (gc, worktree
    prune, status, a loose ref read) reads or deletes where the link points. Entries pienv
    moved aside are not counted again."""
    out: list[Path] = []
    for here, dirnames, filenames in os.walk(gitdir, onerror=None):
        top = here == str(gitdir)
        kept = []
        for name in dirnames + filenames:
            path = Path(here) / name
            if ".pienv-quarantined" in name:
                continue
            if path.is_symlink():
                out.append(path)
            elif name in dirnames and not (top and name in _UNWALKED):
                kept.append(name)
        dirnames[:] = kept
    return sorted(out)


def quarantine_link(path: Path, repo: RepoInfo | None) -> str:
    """``quarantine`` for a planted symlink: one deeper than the git dir's top is moved to
    the top, where git reads no entry it does not know (`refs/heads/x` aside within `refs/`
    would still be a ref git reads through the link)."""
    for gitdir in (repo.gitdir, repo.common_dir) if repo is not None else ():
        if path.parent != gitdir and _within(path, gitdir):
            rel = str(path.relative_to(gitdir)).replace("/", "_")
            return quarantine(path, gitdir / rel)
    return quarantine(path)


def links_of(repo: RepoInfo | None) -> frozenset[Path]:
    """The symlinks among the entries of a workspace's git dirs (before a run: the user's
    own, e.g. a shared hooks dir, are kept; new ones are moved aside after it)."""
    if repo is None or repo.link_problem:
        return frozenset()
    return frozenset(p for d in {repo.gitdir, repo.common_dir} for p in planted_links(d))


def planted_alternates(repo: RepoInfo | None, since: float) -> list[Path]:
    """`objects/info/alternates` written during the run: the host's git would read (and
    `git repack -a` copy in) objects of another repository of the agent's choosing."""
    if repo is None or repo.link_problem:
        return []
    out = []
    for gitdir in dict.fromkeys((repo.gitdir, repo.common_dir)):
        alt = gitdir / "objects" / "info" / "alternates"
        with contextlib.suppress(OSError):
            if os.lstat(alt).st_ctime >= since:
                out.append(alt)
    return out


def suspicious(repo: RepoInfo | None) -> list[str]:
    """What in a workspace's git dirs a run may have planted and a killed run left (`pienv
    status`, `pienv doctor`): symlinks among their entries, a `commondir` in a main git dir,
    entries pienv moved aside."""
    if repo is None:
        return []
    out = []
    for gitdir in dict.fromkeys((repo.gitdir, repo.common_dir)):
        out += [f"{p} is a symlink (git makes none there)" for p in planted_links(gitdir)]
        with contextlib.suppress(OSError):
            out += [f"{e} was moved aside by pienv: check it" for e in sorted(gitdir.iterdir())
                    if e.name.endswith(".pienv-quarantined")]  # fmt: skip
    if repo.gitdir == repo.common_dir and os.path.lexists(repo.gitdir / "commondir"):
        out.append(f"{repo.gitdir / 'commondir'} exists (git never writes one there)")
    return out


def _read_only(host: Path, target: Path, binds: Binds, notes: list[str]) -> None:
    if host.is_symlink():
        notes.append(f"{host} is a symlink: pienv does not make it read-only")
    elif host.exists():
        why = f"git: {host.name}, read-only"
        binds[str(host)] = Mount(str(host), str(target), True, why, directory=host.is_dir())
