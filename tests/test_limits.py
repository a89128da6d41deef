"""Limits, ports and GPUs of a run: values as a user writes them -> what the engine gets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pienv.errors import UsageError
from pienv.limits import (
    Limits,
    default_limits,
    gpu_request,
    killed_for_memory,
    parse_memory,
    parse_port,
    resolve,
)


def test_memory_sizes() -> None:
    assert parse_memory("512m") == 512 * 2**20
    assert parse_memory("2g") == 2 * 2**30
    assert parse_memory("1.5G") == int(1.5 * 2**30)
    assert parse_memory("1048576") == 2**20
    for bad in ("", "lots", "-1g", "3x", "0"):
        with pytest.raises(UsageError):
            parse_memory(bad)


def test_defaults_keep_the_host_usable() -> None:
    d = default_limits(cpus=8, memory=16 * 2**30)
    assert d.cpus == 7  # one core left to the host
    assert d.memory == 12 * 2**30  # a quarter of the memory left
    assert d.pids == 4096
    one = default_limits(cpus=1, memory=2**30)
    assert one.cpus == 1 and one.memory == 3 * 2**28


def test_command_line_over_config_over_defaults() -> None:
    d = Limits(cpus=3, memory=2**30, pids=4096)
    assert resolve(d, {"cpus": 2.0}, {"cpus": "1.5", "memory": "512m"}) == Limits(
        cpus=1.5, memory=512 * 2**20, pids=4096
    )
    assert resolve(d, {"memory": "0"}, {}) == Limits(cpus=3, memory=None, pids=4096)
    with pytest.raises(UsageError, match="--cpus"):
        resolve(d, {}, {"cpus": "lots"})


def test_ports_bind_to_localhost_only() -> None:
    assert parse_port("3000") == (3000, 3000)
    assert parse_port("8080:3000") == (8080, 3000)
    for bad in ("0", "70000", "a", "0.0.0.0:3000:3000", "1:2:3"):
        with pytest.raises(UsageError):
            parse_port(bad)


def test_gpu_request_shape_the_engine_receives() -> None:
    assert gpu_request("all") == {"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}
    assert gpu_request("2") == {"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}
    with pytest.raises(UsageError):
        gpu_request("some")


def test_killed_for_memory_says_so() -> None:
    assert killed_for_memory(137, oom=True, memory=2**30) == (
        "the command was killed for using more than its 1.0 GiB of memory (--memory, [run] memory)"
    )
    assert "its 32 MiB of memory" in str(killed_for_memory(137, oom=True, memory=32 * 2**20))
    # no OOMKilled from the engine (Podman behind an init): a SIGKILL under a limit is hedged
    assert killed_for_memory(137, oom=False, memory=32 * 2**20) == (
        "the command was killed (SIGKILL); if it ran out of memory, its limit is 32 MiB of "
        "memory (--memory, [run] memory)"
    )
    assert killed_for_memory(137, oom=False, memory=None) is None
    assert killed_for_memory(1, oom=False, memory=2**30) is None
    assert killed_for_memory(0, oom=True, memory=2**30) is None


def test_oom_kill_count_is_read_from_either_cgroup_version(tmp_path: Path) -> None:
    from pienv.engine.oomwatch import counter_file, kills

    assert kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == 2  # v1 memory.oom_control
    assert kills("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n") == 1  # v2 memory.events
    assert kills("oom_kill_disable 0\n") == 0
    own = counter_file(os.getpid(), tmp_path)  # this process's own cgroup, under a fake root
    assert own is not None and own.name in {"memory.oom_control", "memory.events"}
    assert counter_file(2**22 + 1, tmp_path) is None  # no such process


def test_podman_watch_of_a_command_that_ended_at_once_is_no_error() -> None:
    """Podman's inspect of a container whose process just ended can fail reading its cgroup
    ("read /proc/N/cgroup: no such process"): a run of `touch /a` failed with that line in
    CI. The OOM watch then has nothing to watch, and the run goes on."""
    from pienv.engine.dialects.podman import Podman
    from pienv.errors import EngineError

    class Gone:
        local = True

        def _call(self, *args: object, **kwargs: object) -> object:
            raise EngineError("Podman: read /proc/5678/cgroup: no such process")

    podman = Podman()
    podman.started(Gone(), "c1")  # type: ignore[arg-type]
    assert podman.oom_killed("c1") is False
