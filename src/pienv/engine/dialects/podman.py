"""Podman's Docker-compatible API (measured on 4.3): what it does differently, and what pienv
sends so that a user sees the same on both engines (docs/engines.md has the table)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pienv.engine import oomwatch
from pienv.engine.dialects.base import Calls, Dialect
from pienv.errors import EngineError

_PATH_STAT = "x-docker-container-path-stat"  # the archive API's stat of the path asked for
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._/-]*")


class Podman(Dialect):
    name = "Podman"
    # Its catatonit for Init=true, and the files it bind-mounts into every container. It makes
    # their mount points in the container's own layer (Docker keeps them in a layer it never
    # commits), so a run that changed nothing shows "C /etc" there.
    own_mounts = (
        "/run/podman-init",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/run/.containerenv",
    )
    # The targets of the files it bind-mounts into every container, and its /etc/mtab link:
    # its commit keeps them, so a commit that holds them keeps a no-op run's layer empty.
    made_paths = (
        ("/etc/hosts", ""),
        ("/etc/hostname", ""),
        ("/etc/resolv.conf", ""),
        ("/run/.containerenv", ""),
        ("/etc/mtab", "/proc/mounts"),
    )

    default_network = "podman"
    # Podman refuses size= on a tmpfs volume ("Filesystem does not support Project Quota"):
    # its tmpfs takes the kernel's default size there.
    tmpfs_volume_options = "mode=0700"
    # Its image removal takes an image a kept commit builds on: the image goes, and prune's
    # dry run counts it as freed, as the real prune does (measured on 4.3).
    removes_built_on = True
    watches_starts = True

    def __init__(self) -> None:
        self._oom: dict[str, oomwatch.Watch] = {}

    def started(self, engine: Calls, cid: str) -> None:
        # Podman 4.3 sets no OOMKilled (oomwatch.py says what was measured): on this
        # machine, watch the container's memory cgroup while it runs.
        if not engine.local:
            return
        try:
            state = (engine._call("GET", f"/containers/{cid}/json") or {}).get("State") or {}
        except EngineError:
            # A command that ended at once: Podman's inspect can fail reading the gone
            # process's cgroup ("read /proc/N/cgroup: no such process"). Nothing to watch;
            # the run's own wait and inspect tell how it ended.
            return
        pid = int(state.get("Pid") or 0)
        path = oomwatch.counter_file(pid) if pid else None
        if path is not None and path.is_file():
            self._oom[cid] = oomwatch.Watch(path)

    def oom_killed(self, cid: str) -> bool:
        watch = self._oom.get(cid)
        return watch is not None and watch.killed()

    def label_filters(self, filters: list[str]) -> list[str]:
        # Podman 4.3 answers nothing when given two label filters: send the first.
        return filters[:1]

    def build_line(self, text: str) -> str:
        """ "STEP 2/4: RUN x" -> "Step 2/4 : RUN x", "--> 2bd1a37478b" -> " ---> 2bd1a37478b"
        (its ids and "Using cache" lines too), so what pienv shows and parses is the same on
        both engines."""
        step = re.match(r"STEP (\d+/\d+): ", text)
        if step:
            return f"Step {step.group(1)} : {text[step.end() :]}"
        if text.startswith("--> "):
            return " ---> " + text[4:]
        return text

    def build_step_runs(self, line: str) -> bool | None:
        # Podman names no step container: every step but FROM makes an image, unless it says
        # "Using cache" before its id.
        if not line.startswith("Step "):
            return None
        return not line.partition(" : ")[2].upper().startswith("FROM ")

    def check_mounts(self, sources: Iterable[str]) -> None:
        for host in sources:
            if "," in host:
                # Podman 4.3 turns Mounts back into "a,b=c" option text and fails.
                raise EngineError(
                    f"Podman cannot mount {host}: its path holds a ','",
                    hint="rename or move the directory, or use Docker",
                )

    def prepare_create(self, engine: Calls, config: dict[str, Any]) -> None:
        # Only the image's own variables, as on Docker: Podman would add TERM and
        # container=podman, and its commit would bake them into the image.
        if (config.get("HostConfig") or {}).get("DeviceRequests"):
            # Podman's Docker API takes DeviceRequests and gives no GPU (it passes GPUs as
            # CDI devices only): refused rather than a run that silently has none.
            raise EngineError(
                "Podman cannot pass GPUs through pienv (--gpus, [run] gpus)",
                hint="use Docker with the NVIDIA Container Toolkit, or run without --gpus",
            )
        _nosuid_binds(config.get("HostConfig") or {})
        image = engine.inspect_image(str(config["Image"]))
        config["UnsetEnvAll"] = True
        config["Env"] = list((image.config.get("Env") if image else None) or [])
        if engine.rootless:
            # Rootless: container uids other than root are subordinate ids on the host, so
            # the run user (the host user's uid) could not write /workspace and its files
            # would not be the host user's (rule 5). keep-id maps the service user's uid to
            # itself.
            config.setdefault("HostConfig", {})["UsernsMode"] = "keep-id"

    def commit_query(self, engine: Calls, cid: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        # Podman ignores the commit body's config: send it as `changes` instructions.
        have = engine._call("GET", f"/containers/{cid}/json").get("Config") or {}
        return {"changes": changes(conf, have)}

    def exists_after_404(self, headers: Mapping[str, str]) -> bool:
        # Podman follows a final symlink and answers 404 when its target is missing, yet
        # sends the link's own stat along: the path is there.
        return _PATH_STAT in headers


def _nosuid_binds(host_config: dict[str, Any]) -> None:
    """Bind mounts as ``Binds`` with ``nosuid,nodev`` (rule 13, prevented up front): Podman's
    compatible API passes these options through (Docker's refuses them, and its ``Mounts``
    form has no field for them), so a setuid file or a device node the agent makes in the
    workspace works neither in the container nor through the mount. A source or target
    holding ':' cannot be written as a ``Binds`` entry and stays in ``Mounts`` (the
    post-run sweep still covers it)."""
    mounts = host_config.get("Mounts") or []
    keep: list[dict[str, Any]] = []
    binds: list[str] = list(host_config.get("Binds") or [])
    for m in mounts:
        source, target = str(m.get("Source") or ""), str(m.get("Target") or "")
        if m.get("Type") != "bind" or ":" in source + target:
            keep.append(m)
            continue
        binds.append(f"{source}:{target}:{'ro' if m.get('ReadOnly') else 'rw'},nosuid,nodev")
    if binds:
        host_config["Mounts"] = keep
        host_config["Binds"] = binds


def changes(conf: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    """Instructions that give a Podman commit of a container whose config is ``have`` the
    config a Docker commit with body ``conf`` gets. Podman ignores the body and keeps the
    container's config (the run wrapper as Entrypoint, the run labels); Docker merges the
    body over the container's config (docker_merge). So: Docker's result, minus what Podman
    keeps anyway.

    `changes` are parsed like Dockerfile lines, so no value goes in raw: LABEL and ENV
    values are wrapped in double quotes (Podman strips exactly one pair and keeps `$`,
    backslashes and inner quotes verbatim, measured on 4.3); ENTRYPOINT, CMD and VOLUME are
    JSON. A line break cannot travel (Podman splits changes on it): such a label must
    already be on the container (run containers carry the run's message, command and
    workspace; fresh commits carry all their labels), or the commit is refused.
    """
    want = docker_merge(conf, have)
    out: list[str] = []
    have_labels = dict(have.get("Labels") or {})
    for key, value in want["Labels"].items():
        if have_labels.get(key) != value:
            value = _line_safe(f"label {key}", str(value))
            out.append(f'LABEL {_name_safe("label", key)}="{value}"')
    have_env = set(have.get("Env") or [])
    for entry in want["Env"]:
        if entry not in have_env:
            name, _, value = str(entry).partition("=")
            value = _line_safe(f"variable {name}", value)
            out.append(f'ENV {_name_safe("variable", name)}="{value}"')
    out.append(f"ENTRYPOINT {json.dumps(list(want['Entrypoint'] or []))}")
    out.append(f"CMD {json.dumps(list(want['Cmd'] or []))}")
    for key, instruction in (("User", "USER"), ("WorkingDir", "WORKDIR")):
        if want[key] and want[key] != (have.get(key) or ""):
            out.append(f"{instruction} {_line_safe(key, str(want[key]))}")
    for volume in want["Volumes"]:
        if volume not in (have.get("Volumes") or {}):
            out.append(f"VOLUME {json.dumps([volume])}")
    for port in want["ExposedPorts"]:
        if port not in (have.get("ExposedPorts") or {}):
            out.append(f"EXPOSE {_line_safe('a port', str(port))}")
    if want["StopSignal"] and want["StopSignal"] != (have.get("StopSignal") or ""):
        out.append(f"STOPSIGNAL {_line_safe('StopSignal', str(want['StopSignal']))}")
    return out


def _line_safe(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise EngineError(
            f"Podman cannot commit {what} with a line break in its value",
            hint="Podman's commit takes config as text lines; use one line",
        )
    return value


def _name_safe(what: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise EngineError(f"Podman cannot commit the {what} name {name!r}")
    return name


def docker_merge(conf: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The config Docker's commit gives an image: the body ``conf`` with its empty fields
    filled from the container's config (moby daemon/commit.go `merge`)."""
    env = list(conf.get("Env") or [])
    names = {e.partition("=")[0] for e in env}
    env += [e for e in container.get("Env") or [] if e.partition("=")[0] not in names]
    cmd, entrypoint = conf.get("Cmd"), conf.get("Entrypoint")
    if not entrypoint and not cmd:
        cmd, entrypoint = container.get("Cmd"), container.get("Entrypoint")
    return {
        "Labels": {**(container.get("Labels") or {}), **(conf.get("Labels") or {})},
        "Env": env,
        "Cmd": cmd,
        "Entrypoint": entrypoint,
        "User": conf.get("User") or container.get("User") or "",
        "WorkingDir": conf.get("WorkingDir") or container.get("WorkingDir") or "",
        "Volumes": {**(container.get("Volumes") or {}), **(conf.get("Volumes") or {})},
        "ExposedPorts": {
            **(container.get("ExposedPorts") or {}),
            **(conf.get("ExposedPorts") or {}),
        },
        "StopSignal": conf.get("StopSignal") or container.get("StopSignal") or "",
    }
