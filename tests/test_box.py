"""The box holds against a hostile agent: a red-team suite.

Each test is an attack from docs/security.md's threat table, played by code in the run
container (with the NOPASSWD sudo pienv's prepared root gives when the image has sudo),
against pienv run by the real non-root user pienvtest. After the run, the host must hold
nothing privileged (setuid/setgid files, file capabilities, device nodes, trees of another
uid), no git metadata that makes the host's git read another path or run code, and no mount
may come from a path the agent moved between pienv's check and the engine's mount.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import docker
import pytest
from conftest import NONROOT_UID, NonrootPienv, Pienv, _await_background_commits, on_podman
from conftest import git as _git

# Written by the agent with sudo: every way the issue found to plant privilege on the host.
# security.capability v2, effective, permitted = cap_dac_override (1) | cap_setuid (7).
CAPS = "bytes([1, 0, 0, 2, 0x82] + [0] * 15)"
PLANT = (
    "cd /workspace && sudo cp /bin/bash s && sudo chmod 4755 s && "
    "sudo cp /bin/bash g && sudo chgrp root g && sudo chmod 2755 g && "
    "sudo cp /bin/cat c && sudo python3 -c "
    f"\"import os; os.setxattr('c', 'security.capability', {CAPS})\" ; "
    "sudo mknod -m 444 rng c 1 8 ; sudo mknod -m 444 blk b 7 0 ; "
    "sudo mkdir -p rootdir/sub && sudo touch rootdir/sub/f && sudo chmod 700 rootdir ; "
    "sudo cp /bin/bash .git/s2 && sudo chmod 4755 .git/s2 ; "
    "mkdir -p mine && cp /bin/bash mine/own && chmod 4755 mine/own ; "
    "mkdir hid && sudo cp /bin/bash hid/s3 && sudo chmod 4755 hid/s3 && chmod 000 hid ; "
    "echo PLANTED"
)


RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"  # not on every PATH


def git(repo: Path, *args: str) -> None:
    """git as root in the user's repository (then given back to the user)."""
    _git(repo, "-c", "safe.directory=*", *args)
    subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(repo.parent)], check=True)


def privileged(top: Path, uid: int) -> list[str]:
    """What under ``top`` a non-root host user must not find after a run, walked as root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append(f"device {rel}")
            if not stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(f"setuid/setgid {rel}")
            if st.st_uid != uid:
                found.append(f"owner {st.st_uid} {rel}")
            if stat.S_ISREG(st.st_mode):
                try:
                    os.getxattr(path, "security.capability", follow_symlinks=False)
                    found.append(f"capabilities {rel}")
                except OSError:
                    pass
    return found


@pytest.mark.nonroot
@pytest.mark.realistic
def test_privilege_planted_through_the_workspace_does_not_survive_the_run(
    nonroot_realistic: NonrootPienv,
) -> None:
    p = nonroot_realistic
    r = p("run", "--", "sh", "-c", PLANT, timeout=600)
    assert "PLANTED" in r.out, r.err
    assert privileged(p.repo, NONROOT_UID) == []
    # Said in one line naming the paths (the user's own setuid file too: stripped, kept).
    lines = [line for line in r.err.splitlines() if "setuid" in line or "device" in line]
    assert len(lines) == 1, r.err
    for name in ("s", "g", "c", "mine/own", ".git/s2", "rootdir", "hid"):
        assert name in lines[0], lines[0]
    assert (p.repo / "s").read_bytes()[:4] == b"\x7fELF"  # stripped, its data kept
    subprocess.run(  # the user can delete what root made
        [RUNUSER, "-u", "pienvtest", "--", "rm", "-rf", str(p.repo / "rootdir")], check=True
    )


@pytest.mark.nonroot
@pytest.mark.realistic
def test_a_sweep_killed_with_its_pienv_leaves_a_container_orphans_names(
    nonroot_realistic: NonrootPienv,
) -> None:
    """The sweep's fix container was unlabelled: a pienv killed between its create and its
    removal left a Created container nothing named (seen twice after -m presets runs). It
    carries the store, kind and pid now: `orphans` lists it, `clean-orphans` removes it."""
    p = nonroot_realistic
    p("run", "--", "true")  # the root commit
    (p.home / "config.toml").write_text('[run]\ncommit = "foreground"\n')  # the sweep in pienv
    os.chown(p.home / "config.toml", NONROOT_UID, NONROOT_UID)
    plant = "cd /workspace && sudo cp /bin/bash s && sudo chmod 4755 s"
    crash = {"PIENV_TEST_CRASH_AT": "created-sweep"}
    r = p("run", "--", "sh", "-c", plant, env=crash, check=False, timeout=600)
    assert r.code in (-9, 137), (r.out, r.err)  # killed (through runuser: 128 + 9)
    rows = json.loads(p("orphans", "--json").out)
    assert ("sweep", "created", False) in {
        (o["kind"], o["state"], o["holder_alive"]) for o in rows
    }, rows
    assert "left by a killed sweep" in p("clean-orphans", "--yes").out
    assert [o for o in json.loads(p("orphans", "--json").out) if o["kind"] == "sweep"] == []
    # The finalizer takes the killed run over and sweeps again: whatever it leaves mounting
    # the workspace carries the store (an unlabelled fix container stayed after CI runs).
    _await_background_commits(p.home, timeout=120)
    sid = p.refs()["store_id"]
    client = docker.from_env()
    mounting = [
        c
        for c in client.containers.list(all=True)
        if any(m.get("Source", "").startswith(str(p.repo)) for m in c.attrs.get("Mounts", []))
    ]
    assert all(c.labels.get("dev.pienv.store") == sid for c in mounting), [
        (c.name, c.status, c.labels) for c in mounting
    ]


def test_helpers_of_an_engine_a_context_was_given_are_labelled(tmp_path: Path) -> None:
    """The finalizer opens its own engine for its Context: the helper containers it makes
    (the sweep's fix, a flatten, an install) must carry the store's labels all the same."""
    from pienv.context import Context
    from pienv.engine import Engine
    from pienv.store import Store

    given = Engine()
    assert Context(store=Store(tmp_path), _engine=given).engine().helper_labels is not None


@pytest.mark.nonroot
@pytest.mark.realistic
def test_sudo_installs_of_setuid_packages_still_work(nonroot_realistic: NonrootPienv) -> None:
    """Dropping MKNOD and SETFCAP costs apt nothing: openssh-client ships a setuid helper."""
    p = nonroot_realistic
    script = (
        "sudo apt-get update -qq >/dev/null 2>&1; "
        "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client "
        ">/dev/null 2>&1; stat -c %a /usr/lib/openssh/ssh-keysign; ssh -V 2>&1 | cut -c1-7"
    )
    r = p("run", "--", "sh", "-c", script, timeout=900)
    assert r.out.split() == ["4755", "OpenSSH"], r.err
    r = p("run", "--", "sh", "-c", "stat -c %a /usr/lib/openssh/ssh-keysign")
    assert r.out.strip() == "4755"  # committed with its setuid bit: in the image, not the host


@pytest.mark.nonroot
@pytest.mark.realistic
def test_sudo_false_gives_no_root(nonroot_realistic: NonrootPienv) -> None:
    p = nonroot_realistic
    config = p.repo.parent / "config.toml"
    config.write_text("[run]\nsudo = false\n")
    subprocess.run(["chown", f"{NONROOT_UID}:{NONROOT_UID}", str(config)], check=True)
    r = p("run", "--", "sh", "-c", "sudo id -u; echo rc=$?", env={"PIENV_CONFIG": str(config)})
    assert "rc=0" not in r.out and "rc=" in r.out, r.out


# -- git metadata ------------------------------------------------------------------------------

GIT_PLANT = (
    "cd /workspace/.git; "
    "ln -s ../.. worktrees 2>/dev/null || ln -s ../.. worktrees/x 2>/dev/null; "
    "ln -s ../.. modules 2>/dev/null || ln -s ../.. modules/x 2>/dev/null; "
    "printf '[core]\\n\\tfsmonitor = touch {m}\\n' > config.worktree 2>/dev/null; "
    "ln -s /etc planted 2>/dev/null; "
    "echo 'gitdir: ..' > commondir 2>/dev/null; "
    "echo {sibling}/.git/objects > objects/info/alternates; echo DONE"
)


@pytest.mark.nonroot
@pytest.mark.realistic
def test_git_metadata_planted_in_a_run_is_neither_followed_nor_run(
    nonroot_realistic: NonrootPienv,
) -> None:
    p = nonroot_realistic
    marker = p.repo.parent / "pwned"
    sibling = p.repo.parent / "sibling"
    sibling.mkdir()
    (sibling / "keep").write_text("x")
    r = p("run", "--", "sh", "-c", GIT_PLANT.format(m=marker, sibling=sibling), timeout=600)
    assert "DONE" in r.out, r.err
    dotgit = p.repo / ".git"
    links = [e.name for e in dotgit.iterdir() if e.is_symlink()]
    assert links == ["planted.pienv-quarantined"], links  # moved aside, as itself
    for name in ("worktrees", "modules"):
        assert (dotgit / name).is_dir() and not (dotgit / name).is_symlink()
        assert [e for e in (dotgit / name).iterdir() if e.is_symlink()] == []
    assert (dotgit / "config.worktree").read_text() == ""
    assert not (dotgit / "commondir").exists()
    assert not (dotgit / "objects" / "info" / "alternates").exists()
    assert "moved" in r.err and "planted" in r.err, r.err
    as_user = [RUNUSER, "-u", "pienvtest", "--", "git", "-C", str(p.repo)]
    env = {**p.env, "HOME": "/home/pienvtest"}
    for args in (["worktree", "prune"], ["gc", "-q", "--prune=now"], ["status"]):
        subprocess.run([*as_user, *args], env=env, check=True, capture_output=True)
    subprocess.run(
        [*as_user, "-c", "extensions.worktreeConfig=true", "status"], env=env, check=True,
        capture_output=True,
    )  # fmt: skip
    assert (sibling / "keep").exists() and not marker.exists()
    assert (dotgit / "objects").is_dir() and (dotgit / "HEAD").exists()


@pytest.mark.nonroot
def test_status_and_doctor_name_what_a_killed_run_left_in_the_git_dir(
    nonroot: NonrootPienv,
) -> None:
    p = nonroot
    p("run", "--", "true")
    # What a run killed with its finalizer would leave: the after-run check never came.
    os.symlink("/etc", p.repo / ".git" / "planted")
    os.lchown(p.repo / ".git" / "planted", NONROOT_UID, NONROOT_UID)
    assert "planted" in p("status").out + p("status").err
    r = p("doctor", check=False)
    assert "planted" in r.out + r.err


@pytest.mark.nonroot
def test_pienv_never_writes_through_a_planted_symlink(nonroot: NonrootPienv) -> None:
    p = nonroot
    outside = p.repo.parent / "outside"
    outside.mkdir()
    subprocess.run(["chown", f"{NONROOT_UID}:{NONROOT_UID}", str(outside)], check=True)
    git(p.repo, "config", "extensions.worktreeConfig", "true")
    os.symlink(outside / "created", p.repo / ".git" / "config.worktree")
    p("run", "--", "true", check=False)
    assert not (outside / "created").exists()
    os.unlink(p.repo / ".git" / "config.worktree")
    git(p.repo, "config", "--unset", "extensions.worktreeConfig")
    # `worktree add` through a planted .git/worktrees symlink: one clear error, nothing out.
    os.rmdir(p.repo / ".git" / "worktrees")  # pienv made it; a killed run's agent replaced it
    os.symlink(outside, p.repo / ".git" / "worktrees")
    r = p("worktree", "add", str(p.repo.parent / "wt"), check=False)
    assert r.code == 1 and r.err.startswith("pienv: error: "), r.err
    assert "Traceback" not in r.err and list(outside.iterdir()) == []


@pytest.mark.nonroot
@pytest.mark.realistic
def test_doctor_sweeps_what_a_run_killed_with_its_finalizer_planted(
    nonroot_realistic: NonrootPienv,
) -> None:
    """kill -9 of pienv and its finalizer right after the command: no sweep came; `pienv
    doctor` finds the unfinished run's workspace, defuses what it planted and names it."""
    p = nonroot_realistic
    plant = "cd /workspace && sudo cp /bin/bash s && sudo chmod 4755 s && echo PLANTED"
    r = p("run", "--", "sh", "-c", plant, env={"PIENV_TEST_CRASH_AT": "handed+all"}, check=False)
    assert "PLANTED" in r.out and (p.home / "crashed-at-handed").exists(), r.err
    assert privileged(p.repo, NONROOT_UID) == ["setuid/setgid s", "owner 0 s"]
    r = p("doctor", check=False)
    line = next(ln for ln in r.out.splitlines() if "privilege" in ln)
    assert str(p.repo) in line and "s (setuid, owner 0)" in line, r.out
    assert privileged(p.repo, NONROOT_UID) == []
    assert "nothing privileged" in p("doctor", check=False).out


@pytest.mark.nonroot
def test_a_symlink_planted_anywhere_in_the_git_dir_is_moved_aside(nonroot: NonrootPienv) -> None:
    """Not only top-level entries: a loose ref, a reflog, packed-refs as symlinks make the
    host's git read (or gc rewrite) where they point. The user's own links are kept."""
    p = nonroot
    dotgit = p.repo / ".git"
    os.symlink("/etc/hostname", dotgit / "info" / "mine")  # the user's own, before the run
    os.lchown(dotgit / "info" / "mine", NONROOT_UID, NONROOT_UID)
    plant = (
        "cd /workspace/.git && mkdir -p refs/heads/deep && ln -s /etc/passwd refs/heads/evil "
        "&& ln -s /etc/passwd refs/heads/deep/x && rm -f logs/HEAD && ln -s /etc/passwd "
        "logs/HEAD && ln -s /etc/passwd packed-refs && echo PLANTED"
    )
    r = p("run", "--", "sh", "-c", plant)
    assert "PLANTED" in r.out, r.err
    links = sorted(
        str(Path(d, n).relative_to(dotgit))
        for d, ds, fs in os.walk(dotgit)
        for n in ds + fs
        if os.path.islink(os.path.join(d, n)) and "pienv-quarantined" not in n
    )
    assert links == ["info/mine"], links
    for planted in ("refs/heads/evil", "refs/heads/deep/x", "logs/HEAD", "packed-refs"):
        assert planted in r.err, r.err
    assert (dotgit / "refs_heads_evil.pienv-quarantined").is_symlink()
    # The host's git reads no ref through them.
    out = subprocess.run(
        ["git", "-C", str(p.repo), "-c", "safe.directory=*", "for-each-ref"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "evil" not in out.stdout and "root:" not in out.stdout + out.stderr


# -- races: a path swapped between pienv's check and the engine's mount -----------------------


def _flipper(path: Path, target: Path, stop: threading.Event) -> None:
    """Agent A, in the workspace that holds ``path``: flip it between a directory and a
    symlink to ``target`` as fast as it can."""
    aside = path.with_name(path.name + ".d")
    while not stop.is_set():
        try:
            os.rename(path, aside)
            os.symlink(target, path)
            time.sleep(0.001)
            os.unlink(path)
            os.rename(aside, path)
            time.sleep(0.001)
        except OSError:
            pass


def _race(p: NonrootPienv, attempts: int, budget: float, args: list[str], secret: str) -> int:
    wins = tries = 0
    end = time.monotonic() + budget
    while tries < attempts and time.monotonic() < end:
        r = p(*args, check=False, timeout=120)
        tries += 1
        wins += secret in r.out
    assert tries >= min(attempts, 20), f"only {tries} attempts in {budget} s"
    print(f"race: {wins} wins in {tries} attempts")  # shown with -s (docs/security.md's numbers)
    return wins


def _standin_ssh(p: NonrootPienv) -> Path:
    """A stand-in ~/.ssh the policy refuses to mount, with a fake key in it."""
    ssh = Path("/home/pienvtest/.ssh")
    ssh.mkdir(exist_ok=True)
    (ssh / "id_standin").write_text("STANDIN-KEY\n")
    subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(ssh)], check=True)
    return ssh


# 40 per race in the default suite (~1-2 min each); PIENV_RACE_ATTEMPTS=300 for the long run.
RACE_ATTEMPTS = int(os.environ.get("PIENV_RACE_ATTEMPTS") or 40)


@pytest.mark.nonroot
def test_workspace_swapped_for_a_symlink_is_never_mounted(nonroot: NonrootPienv) -> None:
    p = nonroot
    ssh = _standin_ssh(p)
    sub = p.repo / "sub"
    sub.mkdir()
    (sub / "file").write_text("mine\n")
    subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(sub)], check=True)
    p("run", "-b", "other", "-w", str(sub), "--", "true")  # the branch's root: not raced
    stop = threading.Event()
    flip = threading.Thread(target=_flipper, args=(sub, ssh, stop), daemon=True)
    flip.start()
    try:
        args = ["run", "-b", "other", "-w", str(sub), "--", "cat", "/workspace/id_standin"]
        wins = _race(p, RACE_ATTEMPTS, 300, args, "STANDIN-KEY")
    finally:
        stop.set()
        flip.join()
    assert wins == 0


@pytest.mark.nonroot
def test_a_worktrees_common_dir_entry_swapped_for_a_symlink_is_never_mounted(
    nonroot: NonrootPienv,
) -> None:
    p = nonroot
    ssh = _standin_ssh(p)
    wt = p.repo.parent / "wt"
    git(p.repo, "worktree", "add", "-q", str(wt))
    hooks = p.repo / ".git" / "modules" / "x" / "hooks"
    for d in ("objects", "refs", "hooks"):
        (hooks.parent / d).mkdir(parents=True, exist_ok=True)
    (hooks.parent / "HEAD").write_text("ref: refs/heads/main\n")
    subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(p.repo.parent)], check=True)
    p("run", "-b", "other", "-w", str(wt), "--", "true", cwd=wt)
    stop = threading.Event()
    flip = threading.Thread(target=_flipper, args=(hooks, ssh, stop), daemon=True)
    flip.start()
    try:
        target = f"{p.repo}/.git/modules/x/hooks/id_standin"
        args = ["run", "-b", "other", "-w", str(wt), "--", "cat", target]
        wins = _race(p, RACE_ATTEMPTS, 300, args, "STANDIN-KEY")
    finally:
        stop.set()
        flip.join()
    assert wins == 0


# -- prevented up front, per engine ------------------------------------------------------------


def test_podman_dialect_mounts_binds_nosuid_nodev() -> None:
    """Podman's compatible API takes nosuid,nodev in Binds (Docker's has no way to say it):
    the dialect moves every bind mount there; a path with ':' stays in Mounts."""
    from pienv.engine.dialects.podman import _nosuid_binds

    host = {
        "Mounts": [
            {"Type": "bind", "Source": "/w", "Target": "/workspace", "ReadOnly": False},
            {"Type": "bind", "Source": "/g/hooks", "Target": "/h", "ReadOnly": True},
            {"Type": "bind", "Source": "/a:b", "Target": "/x", "ReadOnly": False},
            {"Type": "volume", "Source": "state", "Target": "/home/agent/.pi", "ReadOnly": False},
        ]
    }
    _nosuid_binds(host)
    assert host["Binds"] == ["/w:/workspace:rw,nosuid,nodev", "/g/hooks:/h:ro,nosuid,nodev"]
    assert [m["Source"] for m in host["Mounts"]] == ["/a:b", "state"]


@pytest.mark.engine
def test_workspace_is_nosuid_nodev_where_the_engine_takes_it(pienv: Pienv) -> None:
    """On Podman the workspace and git mounts are nosuid,nodev inside the container (a setuid
    file planted there gives nothing, in the container or through the mount); Docker's API
    cannot say it, there the sweep does the work (docs/security.md)."""
    r = pienv("run", "--no-commit", "--", "cat", "/proc/self/mountinfo")
    lines = [ln.split() for ln in r.out.splitlines() if ln.split()[4:5] == ["/workspace"]]
    assert lines, r.out
    options = set(lines[0][5].split(","))
    if on_podman():
        assert {"nosuid", "nodev"} <= options, lines[0]
    else:
        assert "nosuid" not in options, "Docker took nosuid: say so in docs/security.md"


def test_a_user_namespace_is_read_from_the_engines_security_options() -> None:
    from pienv.engine.records import EngineInfo

    def info(*options: str) -> EngineInfo:
        return EngineInfo.from_api({"SecurityOptions": list(options)})

    assert info("name=seccomp,profile=default", "name=userns").userns
    assert info("name=rootless").userns and info("name=rootless").rootless
    assert not info("name=seccomp,profile=default", "name=apparmor").userns


@pytest.mark.engine
def test_doctor_says_whether_container_root_is_host_root(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    line = next(
        ln for ln in pienv("doctor", check=False).out.splitlines() if "container root" in ln
    )
    assert "MKNOD and SETFCAP dropped" in line, line
    if on_podman():
        assert "nosuid,nodev" in line, line


# -- bisect probes and rebase replays: the same box as a run ---------------------------------

# What a probe's command does as root in the container (pienv run by root: the busybox base
# has no sudo): every kind of plant a run's box stops or undoes.
PROBE_PLANT = (
    "cd /workspace && cp /bin/busybox s && chmod 4755 s; mknod -m 444 rng c 1 8; "
    "printf '#!/bin/sh\\ntouch {m}\\n' > .git/hooks/post-checkout; "
    "chmod +x .git/hooks/post-checkout; printf '[core]\\n\\thooksPath = /tmp\\n' >> .git/config; "
    "ln -s /etc .git/planted; echo 'gitdir: ..' > .git/commondir; echo PLANTED; exit 0"
)


@pytest.mark.engine
def test_a_bisect_probe_gets_the_box_of_a_run(pienv: Pienv, tmp_path: Path) -> None:
    """`pienv bisect run` starts the agent's images with the workspace mounted read-write:
    its probes get a run's dropped capabilities, read-only git metadata, and its after-run
    sweep and quarantine."""
    pienv("run", "-m", "one", "--", "touch", "/one")
    pienv("run", "-m", "two", "--", "touch", "/two")
    config = (pienv.repo / ".git" / "config").read_text()
    marker = tmp_path / "hooked"
    pienv("bisect", "start", "main", "main~2")
    r = pienv("bisect", "run", "--", "sh", "-c", PROBE_PLANT.format(m=marker))
    dotgit = pienv.repo / ".git"
    assert privileged(pienv.repo, 0) == [], r.err
    assert not (dotgit / "hooks" / "post-checkout").exists(), r.err
    assert (dotgit / "config").read_text() == config
    assert not (dotgit / "planted").is_symlink()
    assert (dotgit / "planted.pienv-quarantined").is_symlink()
    assert not os.path.lexists(dotgit / "commondir"), r.err
    assert "setuid" in r.err and "planted" in r.err and "commondir" in r.err, r.err
    assert not marker.exists()


@pytest.mark.nonroot
def test_a_bisect_probe_of_a_non_root_user_is_swept_and_checked(nonroot: NonrootPienv) -> None:
    """The same as a non-root user (the sweep's fix container, not pienv, strips the bit)."""
    p = nonroot
    p("run", "-m", "one", "--", "touch", "/home/agent/one")
    p("run", "-m", "two", "--", "touch", "/home/agent/two")
    p("bisect", "start", "main", "main~2")
    plant = (
        "cd /workspace && cp /bin/busybox s && chmod 4755 s; echo x > .git/hooks/x; "
        "ln -s /etc .git/planted; echo PLANTED"
    )
    r = p("bisect", "run", "--", "sh", "-c", plant)
    dotgit = p.repo / ".git"
    assert privileged(p.repo, NONROOT_UID) == [], r.err
    assert (p.repo / "s").read_bytes()[:4] == b"\x7fELF"  # stripped, its data kept
    assert not (dotgit / "hooks" / "x").exists()
    assert (dotgit / "planted.pienv-quarantined").is_symlink() and "s (setuid)" in r.err


# Plants, says so, then lasts: the probe's pienv is killed while its command runs.
PROBE_STALL = (
    "cd /workspace && cp /bin/busybox s && chmod 4755 s; ln -s /etc .git/planted; "
    "touch started; sleep 300"
)


def _bisect_stalled(pienv: Pienv) -> subprocess.Popen[str]:
    """`pienv bisect run` whose probe has planted and is still running."""
    pienv("run", "-m", "one", "--", "touch", "/one")
    pienv("run", "-m", "two", "--", "touch", "/two")
    pienv("bisect", "start", "main", "main~2")
    proc = pienv.popen("bisect", "run", "--", "sh", "-c", PROBE_STALL)
    deadline = time.monotonic() + 90
    while not (pienv.repo / "started").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the probe never started"
        time.sleep(0.2)
    return proc


def _store_containers(pienv: Pienv) -> list[str]:
    store_id = pienv.refs()["store_id"]
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=dev.pienv.store={store_id}",
         "--filter", "label=dev.pienv.role=probe"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()


@pytest.mark.engine
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_bisect_probe_whose_pienv_is_signalled_is_swept_and_checked(
    pienv: Pienv, sig: signal.Signals
) -> None:
    """SIGTERM or SIGHUP (a closed terminal) while a probe's command runs: as for a run, its
    container is stopped, what it planted is defused, and pienv exits 128+n."""
    proc = _bisect_stalled(pienv)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert privileged(pienv.repo, 0) == [], err
    assert (pienv.repo / ".git" / "planted.pienv-quarantined").is_symlink(), err
    assert "setuid" in err and "planted" in err, err
    assert _store_containers(pienv) == []


@pytest.mark.engine
@pytest.mark.parametrize("cleaned", [False, True], ids=["doctor", "clean-orphans-first"])
def test_a_bisect_probe_killed_with_its_pienv_is_found_by_orphans_and_doctor(
    pienv: Pienv, cleaned: bool
) -> None:
    """kill -9 of pienv while its probe runs: nothing of it swept the workspace. `pienv
    orphans` lists the probe's container (its pienv is dead), and `pienv doctor` removes it
    (it still runs the agent's code in the workspace), moves aside what it planted in the git
    dir and sweeps the privilege it planted."""
    proc = _bisect_stalled(pienv)
    proc.kill()
    proc.communicate(timeout=60)
    assert privileged(pienv.repo, 0) == ["setuid/setgid s"]
    listed = json.loads(pienv("orphans", "--json").out)
    assert [o["kind"] for o in listed] == ["probe"], listed
    if cleaned:  # the container goes without its checks: doctor still does them
        assert "left by a killed probe" in pienv("clean-orphans", "--yes").out
    r = pienv("doctor", check=False)
    line = next(ln for ln in r.out.splitlines() if "privilege" in ln)
    assert str(pienv.repo) in line and "s (setuid" in line, r.out
    assert privileged(pienv.repo, 0) == []
    assert _store_containers(pienv) == [], r.out
    # Its after-run check, from the record the probe left in the store: moved aside.
    assert (pienv.repo / ".git" / "planted.pienv-quarantined").is_symlink(), r.out
    assert "planted" in next(ln for ln in r.out.splitlines() if "probes" in ln), r.out
    assert list((pienv.home / "runs").glob("*.watch.json")) == []


@pytest.mark.engine
def test_a_bisect_probe_refuses_a_workspace_the_mount_policy_refuses(pienv: Pienv) -> None:
    pienv("run", "-m", "one", "--", "touch", "/one")
    pienv("run", "-m", "two", "--", "touch", "/two")
    pienv("bisect", "start", "main", "main~2")
    r = pienv("bisect", "run", "-w", "/etc", "--", "true", check=False)
    assert r.code == 1 and "refusing to mount /etc" in r.err, r.err


@pytest.mark.engine
def test_a_rebase_replay_gets_the_capabilities_of_a_run(pienv: Pienv, base_image: str) -> None:
    """A replay runs a recorded command again: with no more than its run had (no MKNOD)."""
    from test_timetravel import ctx_of, second_base

    from pienv.ops import rebase

    cmd = "touch /ran; mknod /dev-node c 1 8 2>/dev/null && touch /made; true"
    pienv("run", "-m", "a", "--", "sh", "-c", cmd)
    assert pienv("run", "--", "sh", "-c", "ls /ran /made", check=False).code != 0
    out = rebase.start(ctx_of(pienv), second_base(base_image))
    assert not out.stopped_at, out.reason
    r = pienv("run", "--", "sh", "-c", "ls /ran /base2; ls /made /dev-node", check=False)
    assert "/ran" in r.out and "/base2" in r.out, r.out + r.err
    assert "/made" not in r.out and "/dev-node" not in r.out, r.out
