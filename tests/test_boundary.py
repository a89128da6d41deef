"""The sandbox boundary against the real engine and the real host git: what the
agent or a cloned repository controls must not widen what the container gets, nor make the
host run code. Each test reproduces an escape first found by adversarial testing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest
from conftest import NonrootPienv, Pienv, git, make_repo, on_podman

pytestmark = pytest.mark.engine


def run_containers(p: Pienv) -> list[dict]:  # type: ignore[type-arg]
    sid = p.refs()["store_id"]
    return docker.from_env().api.containers(
        all=True, filters={"label": [f"dev.pienv.store={sid}", "dev.pienv.role=run"]}
    )


# -- 1. a .git file naming a "common dir" ---------------------------------------------------


@pytest.mark.sampled
@pytest.mark.parametrize("common", ["/var/run", "home's parent"])
def test_forged_git_file_mounts_no_host_directory(
    pienv: Pienv, tmp_path: Path, common: str
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id").write_text("SECRET-KEY\n")
    ws = tmp_path / "tarball"
    (ws / ".g").mkdir(parents=True)
    # What a downloaded tarball (or the agent's previous run) can hold.
    target = "/var/run" if common == "/var/run" else str(tmp_path)
    (ws / ".g" / "commondir").write_text(target + "\n")
    (ws / ".git").write_text("gitdir: .g\n")
    env = {"HOME": str(home)}
    script = (
        "ls /run/docker.sock /var/run/docker.sock 2>/dev/null && echo SOCKET; "
        f"cat {home}/.ssh/id 2>/dev/null; echo done"
    )
    r = pienv("run", "--", "sh", "-c", script, cwd=ws, env=env)
    assert "SOCKET" not in r.out and "SECRET-KEY" not in r.out and r.out.endswith("done\n")
    assert "git metadata not mounted" in r.err and "not in" in r.err
    status = json.loads(pienv("status", "--json", cwd=ws, env=env).out)
    assert any("mount no git metadata" in w for w in status["warnings"])


def test_git_file_whose_admin_dir_does_not_point_back_is_not_mounted(
    pienv: Pienv, tmp_path: Path
) -> None:
    # A real repository's worktrees/NAME, claimed by a directory that is not that worktree.
    git(pienv.repo, "worktree", "add", "-q", "-b", "wt", str(tmp_path / "wt"))
    admin = pienv.repo / ".git" / "worktrees" / "wt"
    thief = tmp_path / "thief"
    thief.mkdir()
    (thief / ".git").write_text(f"gitdir: {admin}\n")
    r = pienv("run", "--", "sh", "-c", f"ls {pienv.repo}/.git/config || echo hidden", cwd=thief)
    assert "hidden" in r.out
    assert "points at" in r.err and "not at" in r.err


def test_real_linked_worktree_git_works_and_cannot_plant_code(pienv: Pienv, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    git(pienv.repo, "worktree", "add", "-q", "-b", "wtb", str(wt))
    marker = tmp_path / "pwned"
    common = pienv.repo / ".git"
    script = (
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > {common}/hooks/pre-commit; "
        f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' >> {common}/config; "
        f"echo /workspace/evil > {common}/worktrees/wt/commondir; "
        "echo 'gitdir: /workspace/evil' > .git; "
        "echo x > f && git add f && git commit -q -m agent-in-wt && echo COMMITTED"
    )
    r = pienv("run", "--", "sh", "-c", script, cwd=wt)
    assert "COMMITTED" in r.out, r.err
    assert git(wt, "log", "-1", "--format=%s") == "agent-in-wt"
    git(wt, "status")
    git(wt, "commit", "-q", "--allow-empty", "-m", "host")
    git(pienv.repo, "status")
    assert not marker.exists()
    assert (wt / ".git").read_text().startswith(f"gitdir: {common}/worktrees/wt")


# -- 4. hooks and config written from the container ------------------------------------------


PLANT = (
    "git config core.fsmonitor 'touch {m}'; "
    "printf '[core]\\n\\tfsmonitor = touch {m}\\n\\thooksPath = /workspace/h\\n' >> .git/config; "
    "printf '#!/bin/sh\\ntouch {m}\\n' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; "
    "echo x > f && git add f && git commit -q -m agent && git branch agent-branch "
    "&& echo COMMITTED"
)


def test_hooks_and_fsmonitor_from_the_container_never_run_on_the_host(
    pienv: Pienv, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    r = pienv("run", "--", "sh", "-c", PLANT.format(m=marker))
    assert "COMMITTED" in r.out, r.err
    # git works inside: the commit and the branch are there, made by the agent.
    assert git(pienv.repo, "log", "-1", "--format=%an %s") == "pienv agent agent"
    assert "agent-branch" in git(pienv.repo, "branch")
    # ...and the host's git runs nothing the agent wrote.
    git(pienv.repo, "status")
    git(pienv.repo, "commit", "-q", "--allow-empty", "-m", "host")
    assert not marker.exists()
    assert "fsmonitor" not in (pienv.repo / ".git" / "config").read_text()
    assert not (pienv.repo / ".git" / "hooks" / "pre-commit").exists()


def test_separate_git_dir_inside_the_workspace_is_protected(pienv: Pienv, tmp_path: Path) -> None:
    # `git init --separate-git-dir` into the tree: `.git` is a file naming `.realgit`, whose
    # config and hooks were writable from the container, and the host's git ran them.
    ws = tmp_path / "sep"
    git(tmp_path, "init", "-q", "-b", "main", f"--separate-git-dir={ws}/.realgit", str(ws))
    git(ws, "commit", "-q", "--allow-empty", "-m", "init")
    marker = tmp_path / "pwned"
    script = (
        f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' >> .realgit/config; "
        f"printf '#!/bin/sh\\ntouch {marker}\\n' > .realgit/hooks/pre-commit; "
        "chmod +x .realgit/hooks/pre-commit; mv .realgit .moved && echo MOVED; echo END"
    )
    # (git itself fails inside: `.git` names the git dir by its absolute host path.)
    r = pienv("run", "--", "sh", "-c", script, cwd=ws)
    assert "END" in r.out and "MOVED" not in r.out, r.err
    git(ws, "status")
    git(ws, "commit", "-q", "--allow-empty", "-m", "host")
    assert not marker.exists()
    assert "fsmonitor" not in (ws / ".realgit" / "config").read_text()


def test_linked_worktree_run_cannot_redirect_the_main_checkout(
    pienv: Pienv, tmp_path: Path
) -> None:
    # The common dir is mounted read-write for a linked worktree: a `commondir` written into
    # it sent the *main* checkout's git to a config of the agent's making.
    wt = tmp_path / "wt"
    git(pienv.repo, "worktree", "add", "-q", "-b", "wtb", str(wt))
    common = pienv.repo / ".git"
    marker = tmp_path / "pwned"
    script = (
        "mkdir -p evil/objects evil/refs evil/hooks && echo 'ref: refs/heads/main' > evil/HEAD "
        f"&& printf '[core]\\n\\tfsmonitor = touch {marker}\\n' > evil/config "
        f"&& echo {wt}/evil > {common}/commondir && echo PLANTED"
    )
    r = pienv("run", "--", "sh", "-c", script, cwd=wt)
    assert "PLANTED" in r.out, r.err
    subprocess.run(["git", "status"], cwd=pienv.repo, capture_output=True)
    assert not marker.exists()
    assert not (common / "commondir").exists() and "pienv-quarantined" in r.err


@pytest.mark.sampled
@pytest.mark.parametrize(
    "layout", ["nested .git dir", ".git file into .git/modules", "nested repo of an earlier run"]
)
def test_submodule_planted_from_the_container_never_runs_on_the_host(
    pienv: Pienv, tmp_path: Path, layout: str
) -> None:
    # The host's `git status` at the top recurses into every populated gitlink of the index
    # and runs git there with that repository's own config: a nested repo with
    # core.fsmonitor, gitlinked from inside, ran the agent's program on the host.
    marker = tmp_path / "pwned"
    if layout == "nested .git dir":
        make = "git init -q sub && G=sub/.git"
    elif layout == "nested repo of an earlier run":
        # Run 1 makes the repo (no gitlink: nothing to see); run 2 only gitlinks it.
        pienv(
            "run",
            "--",
            "sh",
            "-c",
            "git init -q sub && git -C sub commit -q --allow-empty -m s && "
            f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' >> sub/.git/config",
        )
        time.sleep(1.5)
        make = "mkdir -p /tmp/x && G=/tmp/x"
    else:  # where `git submodule add` keeps it; .git/modules did not exist before the run
        make = (
            "mkdir -p .git/modules sub && git init -q --bare .git/modules/sub "
            "&& echo 'gitdir: ../.git/modules/sub' > sub/.git "
            "&& git --git-dir=.git/modules/sub config core.worktree ../../../sub "
            "&& git --git-dir=.git/modules/sub config core.bare false && G=.git/modules/sub"
        )
    script = (
        f"{make} && git -C sub commit -q --allow-empty -m s2 "
        f"&& printf '[core]\\n\\tfsmonitor = touch {marker}\\n' >> $G/config "
        "&& git update-index --add --cacheinfo 160000,$(git -C sub rev-parse HEAD),sub "
        "&& echo PLANTED"
    )
    r = pienv("run", "--", "sh", "-c", script, check=layout != ".git file into .git/modules")
    if layout == ".git file into .git/modules":
        # .git/modules did not exist: pienv made it empty and read-only (rule 6).
        assert "PLANTED" not in r.out and "Read-only file system" in r.err, r.err
        git(pienv.repo, "status")
        assert not marker.exists()
        return
    assert "PLANTED" in r.out, r.err
    assert "160000" in git(pienv.repo, "ls-files", "-s", "sub")
    git(pienv.repo, "status")
    assert not marker.exists()
    assert "submodule" in r.err and "pienv-quarantined" in r.err


def test_untouched_submodule_is_left_alone(pienv: Pienv, tmp_path: Path) -> None:
    sub = make_repo(tmp_path / "subsrc")
    git(pienv.repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "s")
    git(pienv.repo, "commit", "-q", "-m", "sub")
    # The run counts as "written during the run" any ctime from 1 s before it starts (a margin
    # for filesystems with whole-second times): a submodule added within that second is
    # quarantined too (safe side, documented). Step past the margin, as a user's next run does.
    time.sleep(1.2)
    r = pienv("run", "--", "sh", "-c", "git -C s log -1 --format=%s && echo x > s/new")
    assert "init" in r.out, r.err
    assert "quarantined" not in r.err and (pienv.repo / "s" / ".git").is_file()


def test_dot_git_cannot_be_replaced_from_the_container(pienv: Pienv, tmp_path: Path) -> None:
    # Moving .git aside and writing a new one (with hooks and a config of the agent's
    # choosing) would bypass every read-only file inside it.
    marker = tmp_path / "pwned"
    script = (
        "mv .git .realgit && echo MOVED; rm -rf .git 2>/dev/null; "
        "mkdir -p evil/hooks && cp -r .git/objects .git/refs .git/HEAD evil/ 2>/dev/null; "
        f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' > evil/config; "
        "ls .git/config >/dev/null && echo STILL"
    )
    r = pienv("run", "--", "sh", "-c", script)
    assert "MOVED" not in r.out and "STILL" in r.out, r.err
    assert (pienv.repo / ".git").is_dir() and not (pienv.repo / ".realgit").exists()


def test_commondir_planted_in_dot_git_is_moved_aside(pienv: Pienv, tmp_path: Path) -> None:
    # git reads <gitdir>/commondir in any git dir; it cannot be claimed before it exists, so
    # the run moves aside one that appeared while it ran.
    marker = tmp_path / "pwned"
    script = (
        "mkdir -p evil/objects evil/refs evil/hooks && cp .git/HEAD evil/ && "
        f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' > evil/config && "
        "echo ../evil > .git/commondir && echo PLANTED"
    )
    r = pienv("run", "--", "sh", "-c", script)
    assert "PLANTED" in r.out
    assert "points your git at another config; moved it to commondir.pienv-quarantined" in r.err
    subprocess.run(["git", "status"], cwd=pienv.repo, capture_output=True)
    assert not marker.exists()
    # One that was there before the run (a tarball, an unprotected run) is reported, not moved.
    (pienv.repo / ".git" / "commondir").write_text(".\n")
    r = pienv("run", "--", "true")
    assert "commondir exists (git never writes one there)" in r.err
    assert (pienv.repo / ".git" / "commondir").exists()


def test_missing_hooks_dir_is_protected_too(pienv: Pienv, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(pienv.repo / ".git" / "hooks")
    marker = tmp_path / "pwned"
    pienv("run", "--", "sh", "-c", PLANT.format(m=marker))
    git(pienv.repo, "commit", "-q", "--allow-empty", "-m", "host")
    assert not marker.exists()
    assert list((pienv.repo / ".git" / "hooks").iterdir()) == []


def test_repository_created_in_a_plain_workspace_is_reported(pienv: Pienv, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    r = pienv("run", "--", "sh", "-c", "git init -q . && echo made", cwd=plain)
    assert "made" in r.out
    assert f"the run created {plain}/.git; its config and hooks are the agent's" in r.err
    assert "the run created" not in pienv("run", "--", "true", cwd=plain).err


def test_protect_git_false_lets_the_agent_write_hooks(pienv: Pienv) -> None:
    pienv.home.mkdir(parents=True, exist_ok=True)
    (pienv.home / "config.toml").write_text("[run]\nprotect_git = false\n")
    pienv("run", "--", "sh", "-c", "echo hi > .git/hooks/post-commit")
    assert (pienv.repo / ".git" / "hooks" / "post-commit").read_text() == "hi\n"


# -- 2. the store and the config inside the workspace ----------------------------------------


@pytest.mark.sampled
@pytest.mark.parametrize("where", ["PIENV_HOME", "PIENV_CONFIG"])
def test_store_or_config_inside_the_workspace_is_refused(
    pienv: Pienv, base_image: str, where: str
) -> None:
    env = {"PIENV_HOME": str(pienv.repo / ".pienv")}
    if where == "PIENV_CONFIG":
        env = {"PIENV_CONFIG": str(pienv.repo / "pienv.toml")}
        (pienv.repo / "pienv.toml").write_text('[agent]\npassthrough = ["*"]\n')
    r = pienv("run", "--", "true", env=env, check=False)
    assert r.code == 1 and len(r.err.splitlines()) <= 2, r.err
    assert r.err.startswith("pienv: error: refusing to mount")
    assert "pienv store" in r.err or "pienv config file" in r.err


# -- 3. one mount policy --------------------------------------------------------------------


@pytest.mark.sampled
@pytest.mark.parametrize(
    "spec, rule",
    [
        ("/run:/x", "socket"),
        ("/proc:/p", "system tree"),
        ("{tmp}/link-to-run:/x", "socket"),
        ("{home}/..:/h", "home directory or an ancestor"),
        ("{tmp}/missing:/m", "does not exist"),
        ("relative/dir:/r", "relative host path"),
    ],
)
def test_configured_mounts_refused_at_run(
    pienv: Pienv, tmp_path: Path, spec: str, rule: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.symlink("/run", tmp_path / "link-to-run")
    pienv.home.mkdir(parents=True, exist_ok=True)
    spec = spec.format(tmp=tmp_path, home=home)
    (pienv.home / "config.toml").write_text(f"[run]\nmounts = [{json.dumps(spec)}]\n")
    r = pienv("run", "--", "true", env={"HOME": str(home)}, check=False)
    assert r.code == 1 and r.err.startswith("pienv: error: refusing to mount"), r.err
    assert rule in r.err and "Traceback" not in r.err
    assert not (tmp_path / "missing").exists()


@pytest.mark.sampled
@pytest.mark.parametrize("workdir", ["/var/run", "HOME/..", "link-to-etc"])
def test_workspace_refusals(pienv: Pienv, tmp_path: Path, workdir: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.symlink("/etc", tmp_path / "link-to-etc")
    w = workdir.replace("HOME", str(home))
    if w == "link-to-etc":
        w = str(tmp_path / w)
    r = pienv("run", "-w", w, "--", "true", env={"HOME": str(home)}, check=False)
    assert r.code == 1 and r.err.startswith("pienv: error: refusing to mount"), r.err
    assert "the workspace" in r.err


def test_workspace_path_with_colon_and_comma_runs(pienv: Pienv, tmp_path: Path) -> None:
    ws = make_repo(tmp_path / "a:b,c")
    if on_podman():  # Podman 4.3 cannot mount a path with ',': one line, before any container
        r = pienv("run", "--", "true", cwd=ws, check=False)
        assert r.code == 1 and "Podman cannot mount" in r.err and "','" in r.err, r.err
        ws = make_repo(tmp_path / "a:b")
    r = pienv("run", "--", "sh", "-c", "cat README; touch made", cwd=ws)
    assert r.out == "hello\n", r.err
    assert (ws / "made").exists()


# -- 5. env files -----------------------------------------------------------------------------


def orphan_a_run(p: Pienv) -> str:
    """Start a run, SIGKILL pienv *and* its forked finalizer; the container's id. The run
    waits for the test's go-ahead in the workspace: after a fixed sleep, a loaded machine's
    finalizer had committed and removed the container before the test found it."""
    go = p.repo / ".pienv-test-go"
    wait = f"while [ ! -e /workspace/{go.name} ]; do sleep 0.1; done"
    proc = p.popen("run", "-e", "SECRET_KEY", "--", "sh", "-c", f"echo up; {wait}")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    cid = str(run_containers(p)[0]["Id"])
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    for pid in [*map(int, children.stdout.split()), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    go.touch()
    docker.from_env().api.wait(cid)
    go.unlink()
    return cid


@pytest.mark.sampled
@pytest.mark.parametrize("how", ["recover", "auto-recovery", "clean-orphans"])
def test_env_file_removed_after_kill_9(pienv: Pienv, how: str) -> None:
    pienv("run", "--", "true")
    pienv.env["SECRET_KEY"] = "sk-live"
    orphan_a_run(pienv)
    runs = pienv.home / "runs"
    assert [f.suffix for f in runs.iterdir()] == [".env"]  # what the bug left behind
    if how == "recover":
        pienv("recover", "--all")
    elif how == "auto-recovery":
        pienv("run", "--", "true")
    else:
        pienv("clean-orphans", "--yes")
    assert list(runs.iterdir()) == []


def test_env_file_removed_by_the_finalizer_when_pienv_is_killed(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    proc = pienv.popen("run", "--", "sh", "-c", "touch /x; echo up; sleep 2")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    os.kill(proc.pid, signal.SIGKILL)  # the forked finalizer lives on and commits
    proc.wait(30)
    end = time.monotonic() + 60
    while (pienv.head() == before or run_containers(pienv)) and time.monotonic() < end:
        time.sleep(0.2)
    assert pienv.head() != before
    assert list((pienv.home / "runs").iterdir()) == []


def test_doctor_reports_and_removes_stale_env_files(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    stale = pienv.home / "runs" / "0123456789ab.env"
    stale.write_text("ANTHROPIC_API_KEY=x\n")
    fresh = pienv.home / "runs" / "ba9876543210.env"  # a run that is starting right now
    fresh.write_text("ANTHROPIC_API_KEY=x\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    r = pienv("doctor", check=False)
    assert "removed 1 stale env file" in r.out and "0123456789ab.env" in r.out
    assert not stale.exists() and fresh.exists()


# -- 6. variables ---------------------------------------------------------------------------


def test_dropped_credential_named_once(pienv: Pienv) -> None:
    r = pienv(
        "run",
        "-e",
        "GITHUB_TOKEN",
        "--",
        "sh",
        "-c",
        "echo ${GITHUB_TOKEN:-none} $LC_SECRET",
        env={"GITHUB_TOKEN": "ghp_x", "LC_SECRET": "s", "LC_TIME": "C"},
    )
    assert r.out == "none\n"
    assert r.err.count("GITHUB_TOKEN") == 1
    assert "pienv: not passed: GITHUB_TOKEN (credential)\n" in r.err
    assert "LC_SECRET" not in r.err


# -- the same as a real non-root user, on the realistic base (Debian's git inside) -----------


@pytest.mark.nonroot
@pytest.mark.realistic
def test_nonroot_realistic_hooks_and_home_ancestors(nonroot_realistic: NonrootPienv) -> None:
    p = nonroot_realistic
    marker = p.repo.parent / "pwned"  # outside the workspace: only the host could create it
    r = p("run", "--", "sh", "-c", PLANT.format(m=marker), timeout=300)
    assert "COMMITTED" in r.out, r.err
    as_user = [p.command[0], "-u", "pienvtest", "--", "git", "-C", str(p.repo)]
    for args in (["status"], ["-c", "user.name=u", "-c", "user.email=u@u", "commit",
                              "--allow-empty", "-q", "-m", "host"]):  # fmt: skip
        subprocess.run([*as_user, *args], env=p.env, check=True, capture_output=True)
    assert not marker.exists()
    for w in ("/home", "/home/pienvtest"):
        r = p("run", "-w", w, "--", "true", check=False)
        assert r.code == 1 and r.err.startswith("pienv: error: refusing to mount"), r.err
