"""What pienv sends the engine, beside what it gets back (records.py): request bodies and
queries built from plain values, and the reading of the engine's answers to them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def mounts(binds: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """A container's HostConfig.Mounts for ``binds`` ({host: {"bind": target, "mode":
    "ro"|"rw"}}). The Mounts form, not "Binds" strings: a host path may hold ':' or ',', and
    a missing source is an error instead of a root-owned directory on the host. A source
    that is not an absolute path is a named volume, as in "Binds"."""
    return [
        {
            "Type": "bind" if host.startswith("/") else "volume",
            "Source": host,
            "Target": b["bind"],
            "ReadOnly": b["mode"] == "ro",
        }
        for host, b in binds.items()
    ]


def resources(
    *,
    cpus: float | None = None,
    memory: int | None = None,
    pids: int | None = None,
    ports: Sequence[tuple[int, int]] = (),
    tmpfs: Sequence[str] = (),
    gpus: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """HostConfig fields for a run's limits, ports (published on 127.0.0.1 only: an agent's
    dev server is never reachable from the network unless asked), tmpfs and GPUs."""
    out: dict[str, Any] = {}
    if cpus:
        out["NanoCpus"] = int(cpus * 1e9)
    if memory:
        # No swap beyond the limit: a run over its memory is killed, not thrashing the host.
        out["Memory"] = memory
        out["MemorySwap"] = memory
    if pids:
        out["PidsLimit"] = pids
    if ports:
        out["PortBindings"] = {
            f"{container}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host)}]
            for host, container in ports
        }
    if tmpfs:
        # sticky and world-writable, as /tmp always is; exec allowed (agents run from /tmp)
        out["Tmpfs"] = {path: "rw,exec,nosuid,nodev,mode=1777" for path in tmpfs}
    if gpus:
        out["DeviceRequests"] = [dict(g) for g in gpus]
    return out


def port_clash(message: str) -> bool:
    """Whether an engine's start error says a published host port is taken. Docker: "Bind
    for 127.0.0.1:3000 failed: port is already allocated"; Podman, the kernel's "address
    already in use"."""
    low = message.lower()
    return "port is already allocated" in low or "address already in use" in low


def filters(**filters: list[str]) -> dict[str, str]:
    return {"filters": json.dumps(filters)}


def missing_source(config: Mapping[str, Any], message: str) -> str:
    """The bind source an engine's create error says does not exist, or "". Docker says
    "bind source path does not exist"; Podman tries to make a missing source ("making volume
    mountpoint for volume PATH: mkdir PATH: permission denied" when rootless)."""
    low = message.lower()
    if not any(s in low for s in ("does not exist", "no such file", "making volume mountpoint")):
        return ""
    host = config.get("HostConfig") or {}
    for mount in host.get("Mounts") or ():
        source = str(mount.get("Source") or "")
        if mount.get("Type") == "bind" and source and source in message:
            return source
    for bind in host.get("Binds") or ():  # "source:target:options" (Podman's dialect)
        source = str(bind).split(":", 1)[0]
        if source.startswith("/") and source in message:
            return source
    return ""


def has_labels(labels: Mapping[str, str], filters: list[str]) -> bool:
    """Docker's label filter: "key" (present) or "key=value"."""
    for f in filters:
        key, eq, value = f.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def commit_conf(image_config: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """An image's own config with ``labels`` set, safe against Docker's commit merge.

    Docker merges the run container's config into a commit: env entries, labels and (when the
    image has none) entrypoint/cmd of the container survive unless the commit names them.
    Callers pass *every* pienv label; here an empty Entrypoint list (not null) stops the run
    wrapper from becoming the image's entrypoint.
    """
    conf = dict(image_config)
    merged = dict(conf.get("Labels") or {})
    merged.update(labels)
    conf["Labels"] = merged
    if not conf.get("Entrypoint"):
        conf["Entrypoint"] = []
    conf.pop("Image", None)
    return conf
