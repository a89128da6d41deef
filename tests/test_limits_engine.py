"""Limits, ports and GPUs of a run on the real engine (docs/limits.md): what the container
gets, where a port is published, and the one line a port clash or a missing GPU gets."""

from __future__ import annotations

import socket
import time

import docker
import pytest
from conftest import Pienv

pytestmark = pytest.mark.engine

CGROUP = (
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
    "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running(p: Pienv, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    api = docker.from_env().api
    sid = p.refs()["store_id"] if (p.home / "refs.json").exists() else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in api.containers(filters={"label": "dev.pienv.store"}):
            labels = c.get("Labels") or {}
            if (sid is None or labels.get("dev.pienv.store") == sid) and (
                labels.get("dev.pienv.workspace") == str(p.repo)
            ):
                return api.inspect_container(c["Id"])  # type: ignore[no-any-return]
        time.sleep(0.3)
        if sid is None and (p.home / "refs.json").exists():
            sid = p.refs()["store_id"]
    raise AssertionError("the run's container never ran")


def test_limits_reach_the_container_and_a_port_is_published_on_loopback_only(
    pienv: Pienv,
) -> None:
    r = pienv("run", "--no-commit", "--memory", "300m", "--pids", "123", "--", "sh", "-c", CGROUP)
    memory, pids = r.out.split()
    assert (int(memory), pids) == (300 * 2**20, "123")
    port = free_port()
    first = pienv.popen(
        "run", "--no-commit", "--cpus", "1", "-p", f"{port}:80", "--", "sleep", "60"
    )
    try:
        info = running(pienv)
        host = info["HostConfig"]
        assert (host["NanoCpus"], host["PidsLimit"]) == (10**9, 4096)
        assert host["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        deadline = time.monotonic() + 30
        while "port " not in (status := pienv("status").out) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert f"127.0.0.1:{port}->80/tcp (branch main)" in status
        # A second agent asking for the same host port: one line, no traceback, nothing kept.
        clash = pienv("run", "-b", "other", "-p", f"{port}:80", "--", "true", check=False)
        assert clash.code == 1, clash.err
        errors = [line for line in clash.err.splitlines() if "error" in line]
        assert len(errors) == 1 and f"cannot publish host port {port}" in errors[0], clash.err
    finally:
        docker.from_env().api.stop(info["Id"], timeout=1)
        first.communicate(timeout=60)


def test_a_run_killed_for_memory_says_so(pienv: Pienv) -> None:
    # the shell holds the whole substitution in memory: it grows until the limit kills it
    r = pienv(
        "run",
        "--no-commit",
        "--memory",
        "32m",
        "--",
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
        check=False,
    )
    assert r.code != 0
    # Podman 4.3 sets no OOMKilled: its dialect reads the container's memory cgroup instead
    said = "the command was killed for using more than its 32 MiB of memory"
    assert said in r.err, r.err


def test_an_interactive_run_killed_for_memory_says_so(pienv: Pienv) -> None:
    """On a terminal (the docker CLI's attach), the same line as a piped run: on Podman too,
    whose dialect must find the container's memory cgroup without pienv's own start."""
    grow = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"
    proc = pienv.in_terminal(
        "run", "--no-commit", "--memory", "32m", "--", "sh", "-c", grow, timeout=120
    )
    assert proc.returncode != 0
    said = "the command was killed for using more than its 32 MiB of memory"
    assert said in proc.stdout, proc.stdout


def test_gpus_are_a_device_request_and_refused_clearly_without_a_gpu(pienv: Pienv) -> None:
    # Docker: its create takes the DeviceRequests and the start fails without a GPU driver;
    # Podman: refused before the create (its API would give no GPU)
    r = pienv("run", "--no-commit", "--gpus", "all", "--", "true", check=False)
    assert r.code == 1 and "Traceback" not in r.err
    assert "cannot pass GPUs through" in r.err, r.err
