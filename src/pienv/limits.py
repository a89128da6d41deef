"""Limits, ports and GPUs of a run, as values: what a user writes (`--memory 2g`,
`[run] cpus = 2`, `-p 3000`, `--gpus all`) -> what the engine is asked for. Pure, so the
run's container plan can take these values as fields; not wired to the command line yet.

Defaults keep the host usable when an agent's build runs away: all cores but one, three
quarters of the memory, 4,096 processes. `0` (or "none") lifts a limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pienv.errors import UsageError

DEFAULT_PIDS = 4096
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class Limits:
    cpus: float | None = None  # cores; None: no limit
    memory: int | None = None  # bytes
    pids: int | None = None


def parse_memory(text: str) -> int:
    """'512m', '2g', '1.5G', '1048576' -> bytes (binary units, as Docker reads them)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"bad memory size {text!r}: a number and k, m, g or t (e.g. 2g)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def default_limits(cpus: int, memory: int) -> Limits:
    """What a run gets with no `[run]` limits on a host with ``cpus`` cores and ``memory``
    bytes: enough to work, with a core and a quarter of the memory left to the host."""
    return Limits(cpus=max(cpus - 1, 1), memory=memory * 3 // 4, pids=DEFAULT_PIDS)


def host_defaults() -> Limits:
    import os

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return Limits(pids=DEFAULT_PIDS)
    return default_limits(len(os.sched_getaffinity(0)), memory)


def _lifted(value: Any) -> bool:
    return str(value).strip().lower() in ("0", "none")


def resolve(defaults: Limits, config: Mapping[str, Any], options: Mapping[str, Any]) -> Limits:
    """The run's limits: each of ``options`` (the command line) over ``config`` (`[run]`)
    over ``defaults``; 0 or "none" lifts one."""
    out = {}
    for key in ("cpus", "memory", "pids"):
        given = options.get(key, config.get(key))
        if given is None:
            out[key] = getattr(defaults, key)
        elif _lifted(given):
            out[key] = None
        else:
            out[key] = _value(key, given)
    return Limits(**out)


def _value(key: str, given: Any) -> float | int:
    try:
        if key == "memory":
            return parse_memory(str(given))
        value = float(given) if key == "cpus" else int(given)
    except ValueError:
        value = -1
    if value <= 0:
        raise UsageError(f"bad --{key} {given!r}: a positive number (0 or none lifts it)")
    return value


def parse_port(text: str) -> tuple[int, int]:
    """'3000' or 'HOST:CONTAINER' -> (host port, container port); the host side is always
    127.0.0.1 (an address in the text is refused: nothing listens on other interfaces)."""
    parts = text.split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"bad port {text!r}: PORT or HOST_PORT:PORT (published on 127.0.0.1)")
    host, container = (int(parts[0]), int(parts[-1]))
    for port in (host, container):
        if not 1 <= port <= 65535:
            raise UsageError(f"bad port {text!r}: ports are 1-65535")
    return host, container


def gpu_request(text: str) -> dict[str, Any]:
    """`--gpus all|N` -> the DeviceRequests entry Docker's API takes (as `docker run --gpus`
    sends it)."""
    text = text.strip().lower()
    if text == "all":
        count = -1
    elif text.isdigit() and int(text) > 0:
        count = int(text)
    else:
        raise UsageError(f"bad --gpus {text!r}: all or a number of GPUs")
    return {"Driver": "", "Count": count, "Capabilities": [["gpu"]]}


def killed_for_memory(exit_code: int, oom: bool, memory: int | None) -> str | None:
    """The line a run killed by the kernel for memory gets. ``oom`` is the engine's
    OOMKilled; Podman 4.3 never sets it when the killed process is not the container's first
    (pienv runs an init), so a SIGKILL (exit 137) under a memory limit gets a hedged line."""
    if exit_code == 0 or not (oom or (exit_code == 137 and memory)):
        return None
    if not memory:
        limit = "the memory it could get"
    elif memory < 2**30:  # "0.0 GiB" for a 32m limit said nothing
        limit = f"its {memory / 2**20:.0f} MiB of memory"
    else:
        limit = f"its {memory / 2**30:.1f} GiB of memory"
    if not oom:
        return (
            f"the command was killed (SIGKILL); if it ran out of memory, its limit is {limit[4:]}"
            " (--memory, [run] memory)"
        )
    return f"the command was killed for using more than {limit} (--memory, [run] memory)"
