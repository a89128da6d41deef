"""A full store disk during a commit, the engine lost mid-run, a container that cannot start,
locks, and status without an engine (and the tmpfs proof)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from conftest import REQUIRE_ENGINE, Pienv, _cleanup, engine_socket
from test_crash import assert_consistent, run_containers, wait_for

pytestmark = pytest.mark.engine


def fill(path: Path) -> None:
    """Write ``path`` until the file system has not one page left."""
    with open(path, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


@pytest.mark.sampled
@pytest.mark.parametrize("commit", ["foreground", "background"])
def test_store_disk_full_during_a_commit_keeps_the_change(
    pienv: Pienv, tmp_path: Path, commit: str
) -> None:
    """In the background the exit code is the command's (pienv returned before the commit):
    the error reaches pienv's stderr, as one line, from the finalizer."""
    if os.geteuid() != 0:
        reason = "mounting the small tmpfs store needs root"
        if REQUIRE_ENGINE:
            pytest.fail(reason)
        pytest.skip(reason)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    p = Pienv(mnt / "store", pienv.repo, pienv.env["PIENV_BASE_IMAGE"])
    try:
        p("run", "--", "true")
        (p.home / "config.toml").write_text(f'[run]\ncommit = "{commit}"\n')
        before = p.head()
        index = (p.home / "commits.jsonl").read_bytes()
        if commit == "background":
            p.env["PIENV_TEST_COMMIT_DELAY"] = "2"  # the commit starts after the refill
        proc = p.popen("run", "--", "sh", "-c", "touch /precious; echo up; sleep 1")
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        fill(mnt / "filler")
        if commit == "background":
            proc.wait(60)
            fill(mnt / "filler2")  # the page pienv freed by removing the run's env file
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == (1 if commit == "foreground" else 0), err
        assert "disk full" in err and "pienv recover" in err
        assert err.count("pienv: error: ") == 1, err
        # The branch did not move. The index may hold the run's commit line (the index is
        # written first and may fit where the reflog no longer does): the protocol allows an
        # indexed, unreferenced commit, which `recover` completes (docs/architecture.md).
        assert p.head() == before and (p.home / "commits.jsonl").read_bytes().startswith(index)
        (mnt / "filler").unlink()
        if commit == "background":
            (mnt / "filler2").unlink()
            del p.env["PIENV_TEST_COMMIT_DELAY"]
        [orphan] = run_containers(p)
        out = p("recover", orphan["Id"][:12]).out
        assert "committed as" in out and "on 'main'" in out
        assert p("run", "--", "ls", "/precious").out == "/precious\n"
        assert_consistent(p, commits=2)
    finally:
        _cleanup(p)
        subprocess.run(["umount", str(mnt)], check=False)


def test_engine_lost_mid_run_says_what_was_kept(pienv: Pienv, tmp_path: Path) -> None:
    pienv("run", "--", "true")
    sock = tmp_path / "engine.sock"
    proxy = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{sock},fork", f"UNIX-CONNECT:{engine_socket()}"],
        start_new_session=True,
    )
    try:
        wait_for(sock.exists)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pienv", "run", "--", "sh", "-c", "touch /x; sleep 3"],
            cwd=pienv.repo,
            env={**pienv.env, "DOCKER_HOST": f"unix://{sock}"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: [c["State"] for c in run_containers(pienv)] == ["running"])
        time.sleep(0.5)
        os.killpg(proxy.pid, signal.SIGKILL)  # the engine is gone for pienv
        _, err = proc.communicate(timeout=120)
    finally:
        if proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGKILL)
    assert proc.returncode == 1
    [c] = run_containers(pienv)
    assert f"container {c['Id'][:12]} is kept" in err and f"pienv recover {c['Id'][:12]}" in err
    wait_for(lambda: run_containers(pienv)[0]["State"] == "exited")
    assert "committed as" in pienv("recover", c["Id"][:12]).out
    assert pienv("run", "--", "ls", "/x").out == "/x\n"


def test_engine_lost_before_the_background_commit_says_what_was_kept(
    pienv: Pienv, tmp_path: Path
) -> None:
    """The command ran and pienv returned; the engine goes before the finalizer commits: its
    error names the kept container and `pienv recover` (the next run commits it, too)."""
    pienv("run", "--", "true")
    before = pienv.head()
    sock = tmp_path / "engine.sock"
    proxy = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{sock},fork", f"UNIX-CONNECT:{engine_socket()}"],
        start_new_session=True,
    )
    try:
        wait_for(sock.exists)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pienv", "run", "--", "sh", "-c", "touch /bg; exit 4"],
            cwd=pienv.repo,
            env={**pienv.env, "DOCKER_HOST": f"unix://{sock}", "PIENV_TEST_COMMIT_DELAY": "3"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # pienv returns once the command's exit code is in and the commit is handed over
        # (Podman shows the container exited before its wait answers: not a sign of that).
        wait_for(lambda: proc.poll() is not None)
        os.killpg(proxy.pid, signal.SIGKILL)  # the engine is gone for the finalizer
        _, err = proc.communicate(timeout=120)
    finally:
        if proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGKILL)
    assert proc.returncode == 4
    [c] = run_containers(pienv)
    assert "background commit" in err, err
    assert f"container {c['Id'][:12]} is kept" in err and f"pienv recover {c['Id'][:12]}" in err
    assert pienv("run", "--", "ls", "/bg").out == "/bg\n"
    assert pienv.head() != before and run_containers(pienv) == []


def test_container_that_cannot_start_is_not_left_behind(pienv: Pienv, base_image: str) -> None:
    pienv("run", "--", "true")
    # Joining the network of a container that is not running: both engines create the run's
    # container and refuse to start it (a missing one, Podman refuses at create already).
    api = docker.from_env().api
    idle = api.create_container(base_image, "true", labels={"pienv-test": "idle"})["Id"]
    try:
        (pienv.home / "config.toml").write_text(f'[run]\nnetwork = "container:{idle}"\n')
        r = pienv("run", "--", "true", check=False)
    finally:
        api.remove_container(idle, force=True)
    assert r.code == 1 and "could not start" in r.err, r.err
    assert run_containers(pienv) == []
    assert json.loads(pienv("orphans", "--json").out) == []


@pytest.mark.one_engine
def test_unlock_never_breaks_a_live_lock(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    holder = pienv.popen("run", "--", "sh", "-c", "echo up; sleep 3")
    assert holder.stdout is not None and holder.stdout.readline() == "up\n"
    r = pienv("unlock", "main", "--force", check=False)
    assert r.code == 1 and "cannot be broken" in r.err and f"kill {holder.pid}" in r.err
    second = pienv("run", "--", "true", check=False)
    assert second.code != 0 and "busy" in second.err  # still one run per branch
    holder.wait(30)
    r = pienv("unlock", "nosuch", check=False)
    assert r.code == 1 and "no branch or lock named 'nosuch'" in r.err


@pytest.mark.one_engine
def test_status_without_engine_does_not_claim_zero_orphans(pienv: Pienv, tmp_path: Path) -> None:
    pienv("run", "--", "true")
    gone = {"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}
    status = json.loads(pienv("status", "--json", env=gone).out)
    assert status["orphans"] is None
    text = pienv("status", env=gone).out
    assert "unknown" in next(ln for ln in text.splitlines() if "orphans" in ln)


def test_status_size_after_reset_system_includes_the_base(pienv: Pienv) -> None:
    pienv("run", "--", "sh", "-c", "echo t > /home/agent/login")
    pienv("reset", "--system")
    base = docker.from_env().api.inspect_image(pienv.env["PIENV_BASE_IMAGE"])["Size"]
    status = json.loads(pienv("status", "--json").out)
    assert status["size"] >= base
    # prune counts only what the base does not hold: the old env's own layers
    r = json.loads(pienv("prune", "--older-than", "0s", "--dry-run", "--json").out)
    assert r["bytes_freed"] < base
