"""Time travel attacked (issue 25 review): an unlucky user, a crash, a hostile agent. The
code snapshot and `--with-code` run host git in a workspace the agent wrote; they must never
lose a line of the user's code, run the agent's code or write outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Pienv, git

from pienv import gitrepo
from pienv.context import Context
from pienv.errors import UsageError
from pienv.model import Commit
from pienv.ops import codetravel
from pienv.store import Store


def test_a_planted_commondir_does_not_make_the_snapshot_run_the_agents_filter(
    repo: Path, tmp_path: Path
) -> None:
    """A run whose pienv died is committed by the finalizer (or `recover`) before anything
    moved `.git/commondir` aside: the snapshot must not follow it to the agent's config."""
    marker = tmp_path / "ran"
    evil = repo / "evil"
    evil.mkdir()
    for name in ("objects", "refs"):
        os.symlink(repo / ".git" / name, evil / name)
    (evil / "HEAD").write_text((repo / ".git" / "HEAD").read_text())
    (evil / "config").write_text(f'[filter "x"]\n\tclean = touch {marker}; cat\n')
    (repo / ".git" / "commondir").write_text("../evil\n")
    (repo / ".gitattributes").write_text("* filter=x\n")
    (repo / "README").write_text("changed\n")
    head, _code = gitrepo.record_code(repo, "run")
    assert not marker.exists()
    assert head == git(repo, "rev-parse", "HEAD")  # the HEAD is still recorded


def test_a_symlinked_ref_dir_does_not_make_the_snapshot_write_outside(
    repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo / ".git" / "refs" / "pienv")
    (repo / "README").write_text("changed\n")
    gitrepo.record_code(repo, "run")
    assert list(outside.iterdir()) == []


def test_restore_does_not_append_to_a_host_file_through_a_planted_reflog(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "u.txt").write_text("u\n")
    snap = gitrepo.snapshot_code(repo)
    assert snap is not None
    (repo / "u.txt").unlink()
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# mine\n")
    logs = repo / ".git" / "logs" / "HEAD"
    logs.unlink()
    os.symlink(bashrc, logs)  # the agent's, in a later run
    with pytest.raises(UsageError, match="symlink"):
        gitrepo.restore_code(repo, snap.head, snap.code)
    assert bashrc.read_text() == "# mine\n"
    with pytest.raises(UsageError, match="symlink"):
        gitrepo.add_code_worktree(repo, tmp_path / "wt", snap.head, snap.code)


def test_restore_never_overwrites_an_ignored_file(repo: Path) -> None:
    """git's checkout replaces ignored files silently: notes kept untracked when the code
    was recorded, ignored and edited since, must survive."""
    (repo / "notes.txt").write_text("v1\n")
    snap = gitrepo.snapshot_code(repo)
    assert snap is not None
    (repo / ".gitignore").write_text("notes.txt\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore notes")
    (repo / "notes.txt").write_text("v2, precious\n")
    assert gitrepo.dirty_paths(repo) == []
    assert gitrepo.restore_code(repo, snap.head, snap.code) is False
    assert (repo / "notes.txt").read_text() == "v2, precious\n"


def test_an_operation_in_progress_counts_as_not_clean(repo: Path) -> None:
    """Mid-rebase (an `edit` stop) the tree is clean, but the rebase's commits live on the
    detached HEAD: a checkout would leave them behind."""
    for i in range(3):
        (repo / "README").write_text(f"{i}\n")
        git(repo, "commit", "-qam", f"c{i}")
    assert gitrepo.operation_in_progress(repo) == ""
    env = {**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i 1s/^pick/edit/"}
    import subprocess

    subprocess.run(["git", "rebase", "-q", "-i", "HEAD~2"], cwd=repo, env=env, check=True)
    assert gitrepo.dirty_paths(repo) == []
    assert gitrepo.operation_in_progress(repo) == "rebase-merge"


def test_recorded_ids_are_never_options_to_git(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    for bad in ("--hard", "HEAD~1", f"{head}^"):
        with pytest.raises(UsageError, match="not a git commit id"):
            gitrepo.restore_code(repo, bad, head)


def test_code_worktree_of_a_separate_git_dir_repository(tmp_path: Path) -> None:
    """`git init --separate-git-dir`: the common dir's parent is no checkout."""
    root = tmp_path / "repo"
    (tmp_path / "store").mkdir()
    git(tmp_path, "init", "-q", f"--separate-git-dir={tmp_path / 'store' / 'p.git'}", str(root))
    (root / "a").write_text("1\n")
    git(root, "add", "a")
    git(root, "commit", "-qm", "c1")
    (root / "a").write_text("dirty\n")
    snap = gitrepo.snapshot_code(root)
    assert snap is not None
    store = Store(tmp_path / "home")
    store.init()
    ctx = Context(store=store)
    commit = Commit("a" * 64, (), "main", "m", "2026-01-01T00:00:00Z")
    target = tmp_path / "wt"
    done = codetravel._worktree(ctx, root, target, commit, "b", snap.head, snap.code, "b")
    assert done.worktree and (target / "a").read_text() == "dirty\n"
    assert (root / "a").read_text() == "dirty\n"


@pytest.mark.parametrize(
    "text",
    ['{"schema": 1}', "[1]", '{"schema": 1, "chain": [], "marks": {}}', '{"schema": 1, '],
)
def test_a_corrupt_bisect_state_is_one_line_not_a_traceback(tmp_path: Path, text: str) -> None:
    from pienv.ops import bisect

    store = Store(tmp_path / "home")
    store.init()
    ctx = Context(store=store)
    (store.home / bisect.STATE).write_text(text)
    for call in (lambda: bisect.log(ctx), lambda: bisect.mark(ctx, "good", None)):
        with pytest.raises(UsageError, match="unreadable"):
            call()
    assert bisect.reset(ctx)


def test_rebase_abort_after_its_branch_was_deleted_detaches_at_the_old_head(
    tmp_path: Path,
) -> None:
    import json

    from pienv.ops import rebase

    store = Store(tmp_path / "home")
    store.init()
    ctx = Context(store=store)
    old = "a" * 64
    state = {
        "schema": 1,
        **{"branch": "gone", "old_head": old, "onto": "x", "tip": "b" * 64, "todo": []},
        "head_before": {"branch": "gone", "detached": None},
    }
    (store.home / rebase.STATE).write_text(json.dumps(state))
    rebase.abort(ctx)
    refs = store.load_refs()
    assert refs.head_branch is None and refs.head_detached == old
    assert not (store.home / rebase.STATE).exists()


@pytest.mark.engine
def test_checkout_with_code_of_a_commit_twice_on_a_dirty_tree(pienv: Pienv) -> None:
    """A retry (after a crash, or just again) of `checkout --with-code ID` on a dirty tree:
    the `at-ID` env branch made the first time is reused, not refused."""
    repo = pienv.repo
    pienv("run", "-m", "env1", "--", "touch", "/env1")
    pienv("show", "HEAD")
    e1 = pienv.head()
    (repo / "README").write_text("mine\n")
    first = pienv("checkout", "--with-code", e1[:12])
    second = pienv("checkout", "--with-code", e1[:12], check=False)
    assert second.code == 0, second.err
    assert first.out != second.out  # a second worktree, named apart
    assert (repo / "README").read_text() == "mine\n"
    assert pienv.refs()["branches"][f"at-{e1[:12]}"] == e1


def test_recorded_code_with_symlinks_out_of_the_tree_is_exported_as_links(
    repo: Path, tmp_path: Path
) -> None:
    """bisect --with-code exports each commit's code: a repository's absolute or escaping
    symlink (common; or the agent's) is carried as a link, never followed by the export."""
    os.symlink("/etc/hostname", repo / "abs")
    os.symlink("../../../..", repo / "up")
    git(repo, "add", "abs", "up")
    git(repo, "commit", "-qm", "links")
    target = tmp_path / "out"
    target.mkdir()
    gitrepo.export_tree(repo, git(repo, "rev-parse", "HEAD"), target)
    assert os.readlink(target / "abs") == "/etc/hostname"
    assert os.readlink(target / "up") == "../../../.."
    assert (target / "README").read_text() == "hello\n"


def test_a_planted_replace_ref_does_not_change_the_recorded_code(
    repo: Path, tmp_path: Path
) -> None:
    """The agent writes `refs/` in a run: a `refs/replace/<id>` makes git read another commit
    for a recorded id, so `bisect run --with-code` would test (and `checkout --with-code`
    bring back) code of the agent's choosing. The code of a recorded id is that id's."""
    (repo / "README").write_text("recorded\n")
    snap = gitrepo.snapshot_code(repo)
    (repo / "README").write_text("agent's\n")
    other = gitrepo.snapshot_code(repo)
    assert snap is not None and other is not None and snap.code != other.code
    replace = repo / ".git" / "refs" / "replace"
    replace.mkdir(parents=True)
    (replace / snap.code).write_text(other.code + "\n")
    out = tmp_path / "out"
    out.mkdir()
    gitrepo.export_tree(repo, snap.code, out)
    assert (out / "README").read_text() == "recorded\n"
    git(repo, "checkout", "-q", "--", "README")
    assert gitrepo.restore_code(repo, snap.head, snap.code)
    assert (repo / "README").read_text() == "recorded\n"


def test_a_recorded_id_is_never_an_option_to_git_archive(repo: Path, tmp_path: Path) -> None:
    """The code label of a pulled branch is someone else's text: as `--output=FILE` it made
    `bisect run --with-code`'s export truncate a file of the user's (git opens it before it
    finds no tree-ish); as `--remote=URL` it would reach out with the user's ssh."""
    victim = tmp_path / "bashrc"
    victim.write_text("# mine\n")
    out = tmp_path / "out"
    out.mkdir()
    for bad in (f"--output={victim}", "--remote=/nonexistent", "HEAD~1"):
        with pytest.raises(UsageError, match="not a git commit id"):
            gitrepo.export_tree(repo, bad, out)
    assert victim.read_text() == "# mine\n"
