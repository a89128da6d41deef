"""Rootless Podman: `podman system service` run by the non-root user pienvtest
(uid 4321, subordinate ids 100000-165535) on a private socket and storage root, and pienv run
by that same user against it. In a rootless engine the container's root is the host user and
every other container uid is a subordinate id, so rule 5 (files the agent makes in
/workspace are the host user's) needs Podman's keep-id user namespace; see docs/engines.md.

This sandbox's /dev/net/tun is root's only (mode 0600), so slirp4netns, rootless Podman's
network, cannot start: the runs here use `[run] network = "none"`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import NONROOT_UID, NONROOT_USER, REQUIRE_ENGINE, NonrootPienv, nonroot_driver

pytestmark = [pytest.mark.engine, pytest.mark.nonroot]

SERVICE = Path(__file__).parent / "podman" / "service.sh"


def _as_user(*args: str) -> subprocess.CompletedProcess[str]:
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    # A clean environment: the user's own HOME, none of the test's XDG_* redirections.
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"HOME=/home/{NONROOT_USER}"]
    return subprocess.run(
        [runuser, "-u", NONROOT_USER, "--", *env, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def rootless_podman(nonroot_venv: Path, base_image: str) -> Iterator[str]:
    """The service's DOCKER_HOST, with the test base image loaded into its storage."""
    missing = [t for t in ("podman", "catatonit", "newuidmap") if not shutil.which(t)]
    if missing:
        why = f"rootless Podman needs {missing} (apt-get install podman catatonit uidmap)"
        if REQUIRE_ENGINE:
            pytest.fail(why)
        pytest.skip(why)
    top = Path(tempfile.mkdtemp(prefix="pienv-rootless-", dir="/var/tmp"))
    os.chown(top, NONROOT_UID, NONROOT_UID)
    svc = top / "svc"
    started = _as_user("bash", str(SERVICE), "start", str(svc))
    try:
        assert started.returncode == 0, started.stderr
        host = started.stdout.strip().splitlines()[-1]
        image = docker.from_env().api.get_image(base_image)
        docker.APIClient(base_url=host, timeout=300).load_image(b"".join(image))
        yield host
    finally:
        _as_user("bash", str(SERVICE), "stop", str(svc))
        # Rootless Podman re-executes itself in its user namespace and keeps a pause process
        # (catatonit -P) holding it: they outlive the stop. Only processes naming this
        # service's directory (command line or XDG_RUNTIME_DIR) are ended.
        for pid in _processes_naming(str(svc)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(top, ignore_errors=True)


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                named = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
                if text.encode() in named:
                    found.append(int(entry.name))
    return found


@pytest.fixture
def rootless(rootless_podman: str, base_image: str, nonroot_venv: Path) -> Iterator[NonrootPienv]:
    with nonroot_driver(base_image, nonroot_venv) as p:
        config = p.repo.parent / "config.toml"
        config.write_text('[run]\nnetwork = "none"\n')
        p.env.update({"DOCKER_HOST": rootless_podman, "PIENV_CONFIG": str(config)})
        yield p


def test_rootless_podman_run_commit_and_workspace_owner(rootless: NonrootPienv) -> None:
    rootless("run", "--", "true")
    engine = next(x for x in rootless("status").out.splitlines() if x.startswith("engine"))
    assert engine.split()[1] == "Podman" and ", rootless, at unix://" in engine, engine
    r = rootless(
        "run", "--", "sh", "-c", "id -u; echo made > /workspace/made; mkdir /workspace/d; "
        "touch /workspace/d/f ~/tool"
    )  # fmt: skip
    assert r.out == "4321\n" and "committed" in r.err
    # Rule 5: the host user's files, not a subordinate id's (100000 + n) nor root's.
    for path in ("made", "d", "d/f"):
        st = (rootless.repo / path).stat()
        assert (st.st_uid, st.st_gid) == (NONROOT_UID, NONROOT_UID), path
    # The change is committed and the next run starts from it; stdin reaches the command.
    assert rootless(
        "run", "--", "sh", "-c", "ls ~/tool >/dev/null && echo kept; wc -l", input="a\nb\n"
    ).out == ("kept\n2\n")
    assert "/tool" in rootless("show", "HEAD").out


def test_rootless_podman_over_tcp_refuses_a_workspace_it_cannot_see(
    rootless: NonrootPienv, rootless_podman: str
) -> None:
    """Podman reached over tcp from pienv in a private mount namespace (its workspace and
    store on a tmpfs the service cannot see): Podman tries to make the missing workspace
    ("making volume mountpoint ... permission denied"), which pienv names in one line."""
    if not shutil.which("socat") or not shutil.which("unshare"):
        if REQUIRE_ENGINE:
            pytest.fail("socat and unshare are needed (apt-get install socat util-linux)")
        pytest.skip("socat or unshare missing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            f"UNIX-CONNECT:{rootless_podman.removeprefix('unix://')}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        private = rootless.repo.parent / "private"
        private.mkdir()
        host = f"tcp://127.0.0.1:{port}"
        rootless.env.update({"DOCKER_HOST": host, "PIENV_HOME": str(private / "store")})
        rootless.command = [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs tmpfs "$0" && mkdir "$0/ws" && chown -R {NONROOT_UID} "$0" && '
            'cd "$0/ws" && exec "$@"',
            str(private), *rootless.command,
        ]  # fmt: skip
        r = rootless("run", "--", "sh", "-c", "echo ran", check=False)
        assert r.code == 1 and r.out == "", r.err
        line = r.err.strip().splitlines()[-1]
        assert line.startswith(f"pienv: error: the engine at {host} cannot see {private}/ws:")
        label = f"dev.pienv.workspace={private}/ws"
        api = docker.APIClient(base_url=rootless_podman)
        assert api.containers(all=True, filters={"label": [label]}) == []
    finally:
        proxy.terminate()
        proxy.wait(10)
