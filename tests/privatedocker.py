"""A private dockerd for tests that prune, remove or restart images (never the shared engine).

Its own data root, exec root, socket and pidfile under a temporary directory, and a bridge of
its own made with `ip link add NAME type bridge` (`--bridge=none` would delete the shared
engine's docker0 at start-up). One per test module (start-up costs about two seconds).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def private_dockerd(root: Path) -> Iterator[str]:
    """Start dockerd under ``root``; yield its DOCKER_HOST; stop it and remove its bridge."""
    dockerd = shutil.which("dockerd")
    ip = shutil.which("ip")
    if os.getuid() != 0 or not dockerd or not ip:
        message = "a private dockerd needs root, dockerd and ip"
        if os.environ.get("CI") or os.environ.get("PIENV_REQUIRE_ENGINE"):
            pytest.fail(message)  # in CI a missing engine fails, never skips
        pytest.skip(message)
    bridge = f"pvt{os.getpid() % 100000}br"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([ip, "link", "add", bridge, "type", "bridge"], check=True)
    sock = root / "docker.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 (kept open for the daemon)
    proc = subprocess.Popen(
        [
            dockerd,
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--host=unix://{sock}",
            f"--pidfile={root / 'docker.pid'}",
            f"--bridge={bridge}",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    host = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 60
        while True:
            ok = subprocess.run(
                ["docker", "-H", host, "version"], capture_output=True, check=False
            ).returncode
            if ok == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "dockerd.log").read_text()[-3000:])
            time.sleep(0.2)
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run([ip, "link", "delete", bridge], check=False)
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def copy_image(ref: str, host: str) -> None:
    """Copy ``ref`` from the test engine (Docker or Podman) into the private one, under the
    same name (Podman saves it as localhost/NAME)."""
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    loaded = subprocess.run(
        ["docker", "-H", host, "load"],
        stdin=save.stdout,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert save.wait() == 0
    name = loaded.strip().splitlines()[-1].split(": ", 1)[-1]
    if name != ref:
        subprocess.run(["docker", "-H", host, "tag", name, ref], check=True)
