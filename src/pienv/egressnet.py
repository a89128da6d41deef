"""The egress boundary on the engine: the store's proxy container, its networks, a run's
registration and audit.

Layout (one per store, named by its store id, started on demand and replaced when gone or
out of date):

- network ``pienv-egress-SID``: ``--internal`` (no route out), and on Docker with
  ``com.docker.network.bridge.inhibit_ipv4``: the bridge gets no address on the engine host,
  so an agent cannot reach the host's own services through its gateway (measured on Docker
  20.10: without it, a container on an internal network connects to every host port bound to
  0.0.0.0). Agents are attached to this network only.
- container ``pienv-egress-SID``: the proxy (netproxy/), on the engine's default network (the
  way out) and on the internal one; all capabilities dropped but NET_BIND_SERVICE (DNS on 53),
  read-only root.
- volume ``pienv-egress-SID``: a tmpfs-backed local volume at /run/pienv in the proxy, where
  pienv writes each run's registration (policy, injected keys) and reads its audit through the
  engine's archive API, which works on remote engines too. (The archive API cannot write into
  a container's own tmpfs mount, it can into a volume; tmpfs keeps keys off the disk.)

Only the engine layer knows Docker: this module speaks the engine's REST calls through
Engine and is to move into the engine package's dialects with the structure split.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pienv.egress import PROVIDERS, Policy, Provider
from pienv.engine import Engine, HTTPError
from pienv.errors import EngineError
from pienv.netproxy import quick_tag

PORT = 3128
MOUNT = "/run/pienv"
PREFIX = "pienv-egress-"
LABEL = "dev.pienv.egress-proxy"


@dataclass(frozen=True)
class Proxy:
    container: str
    network: str
    address: str  # on the internal network

    def proxy_url(self, token: str) -> str:
        return f"http://pienv:{token}@{self.address}:{PORT}"

    def route_url(self, token: str, provider: str) -> str:
        return f"http://{self.address}:{PORT}/_pienv/{token}/{provider}"


@dataclass
class RunNetwork:
    """What a run's container gets: the internal network, the proxy as its only resolver
    (which answers nothing), and the proxy variables."""

    token: str
    network: str
    dns: tuple[str, ...]
    env: dict[str, str]
    # The registration's write, in flight (register(..., background=True)): join() it
    # before the agent starts. The proxy holds a connection whose run it does not know yet
    # for up to a second, then refuses it (fail closed).
    pending: threading.Thread | None = None
    failure: list[BaseException] = field(default_factory=list)

    def registered(self) -> None:
        """Wait for the registration; raise what it failed with."""
        if self.pending is not None:
            self.pending.join()
        if self.failure:
            raise self.failure[0]


def names(store_id: str) -> str:
    return PREFIX + store_id[:12]


def ensure_image(engine: Engine) -> str:
    """The proxy image's tag, built from this machine's Python if the engine lacks it."""
    tag = quick_tag()
    if engine.inspect_image(tag) is not None:
        return tag
    from pienv.netproxy import image as proxy_image

    recipe = proxy_image.recipe()
    arch = engine.version().arch
    if arch and not proxy_image.engine_arch_ok(arch):
        raise EngineError(
            f"the egress proxy is made from this machine's Python, and the engine runs {arch}",
            hint="run pienv on the engine's machine, or use --egress open",
        )
    with proxy_image.temporary_context(recipe) as tmp:
        engine.build(Path(tmp), tag, {})
    return tag


def _inspect(engine: Engine, kind: str, name: str) -> dict[str, Any] | None:
    try:
        data = engine._call(
            "GET", f"/{kind}/{name}/json" if kind == "containers" else f"/{kind}/{name}"
        )
    except HTTPError as exc:
        if exc.status == 404:
            return None
        raise
    return dict(data or {})


def _outside_network(engine: Engine) -> str:
    return engine.dialect.default_network


def _ensure_network(engine: Engine, name: str, store_id: str) -> dict[str, Any]:
    found = _inspect(engine, "networks", name)
    if found is not None:
        return found
    body: dict[str, Any] = {
        "Name": name,
        "Internal": True,
        "CheckDuplicate": True,
        "Labels": {"dev.pienv.store": store_id, LABEL: "network"},
    }
    if engine.dialect.internal_network_options:
        body["Options"] = dict(engine.dialect.internal_network_options)
    with contextlib.suppress(HTTPError):  # 409: a concurrent run made it first
        engine._call("POST", "/networks/create", body=body)
    found = _inspect(engine, "networks", name)
    if found is None:
        raise EngineError(f"cannot create the egress network {name}")
    return found


def _ensure_volume(engine: Engine, name: str, store_id: str) -> None:
    body = {
        "Name": name,
        "Driver": "local",
        # Its size where the engine takes one (dialects: Podman refuses size= here).
        "DriverOpts": {
            "type": "tmpfs",
            "device": "tmpfs",
            "o": engine.dialect.tmpfs_volume_options,
        },
        "Labels": {"dev.pienv.store": store_id, LABEL: "volume"},
    }
    engine._call("POST", "/volumes/create", body=body)  # idempotent for the same name


def _subnets(net: Mapping[str, Any]) -> list[str]:
    return [
        str(c["Subnet"]) for c in (net.get("IPAM") or {}).get("Config") or () if c.get("Subnet")
    ]


def _address(state: Mapping[str, Any], network: str) -> str:
    nets = (state.get("NetworkSettings") or {}).get("Networks") or {}
    return str((nets.get(network) or {}).get("IPAddress") or "")


def ensure_proxy(engine: Engine, store_id: str) -> Proxy:
    """The store's proxy, running and current: started on demand, replaced when it is gone,
    stopped or built from another recipe."""
    name = names(store_id)
    # The usual case is one call: the proxy runs, made from the image this pienv would make
    # (its tag is known without asking the engine).
    state = _inspect(engine, "containers", name)
    if state is not None:
        running = (state.get("State") or {}).get("Running")
        # Podman reports the name as it resolved it ("docker.io/library/NAME:TAG"): compared
        # as given, every policy run on Podman replaced the proxy (~1.8 s, and the connections
        # of the store's other runs cut).
        image = str((state.get("Config") or {}).get("Image", ""))
        current = image.removeprefix("docker.io/library/") == quick_tag()
        if running and current and _address(state, name):
            return Proxy(str(state["Id"]), name, _address(state, name))
    tag = ensure_image(engine)
    if state is not None:
        with contextlib.suppress(HTTPError):
            engine._request("DELETE", f"/containers/{state['Id']}", {"force": "1", "v": "0"})
    internal = _ensure_network(engine, name, store_id)
    outside = _inspect(engine, "networks", _outside_network(engine)) or {}
    _ensure_volume(engine, name, store_id)
    blocked = " ".join(_subnets(internal) + _subnets(outside))
    config: dict[str, Any] = {
        "Image": tag,
        "Labels": {"dev.pienv.store": store_id, LABEL: "proxy"},
        "Env": [f"PIENV_BLOCK_NETS={blocked}", f"PIENV_PROXY_PORT={PORT}"],
        "HostConfig": {
            "NetworkMode": _outside_network(engine),
            "Mounts": [{"Type": "volume", "Source": name, "Target": MOUNT}],
            "CapDrop": ["ALL"],
            "CapAdd": ["NET_BIND_SERVICE"],
            "ReadonlyRootfs": True,
            "SecurityOpt": ["no-new-privileges"],
            "RestartPolicy": {"Name": "unless-stopped"},
        },
    }
    try:
        cid = str(engine._call("POST", "/containers/create", {"name": name}, config)["Id"])
    except HTTPError as exc:
        if exc.status != 409:
            raise
        return _wait_proxy(engine, name)  # a concurrent run is starting it
    engine._request("POST", f"/networks/{name}/connect", body={"Container": cid})
    engine._request("POST", f"/containers/{cid}/start")
    return _wait_proxy(engine, name)


def _wait_proxy(engine: Engine, name: str) -> Proxy:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = _inspect(engine, "containers", name) or {}
        hostname = str((state.get("Config") or {}).get("Hostname", ""))
        if (
            (state.get("State") or {}).get("Running")
            and _address(state, name)
            and engine.read_path(str(state["Id"]), f"{MOUNT}/ready.{hostname}") is not None
        ):
            return Proxy(str(state["Id"]), name, _address(state, name))
        time.sleep(0.05)
    raise EngineError(f"the egress proxy {name} did not start (`docker logs {name}`)")


def _tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    import tarfile  # (~10 ms: on the run path only where a policy is)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def register(
    engine: Engine,
    proxy: Proxy,
    policy: Policy,
    branch: str,
    keys: Mapping[str, str] | None = None,
    providers: Mapping[str, Provider] = PROVIDERS,
    background: bool = False,
) -> RunNetwork:
    """Register a run with the proxy before it starts; ``keys``: provider name -> the real
    key (injection), which only the proxy's tmpfs ever holds."""
    token = os.urandom(20).hex()  # (secrets would add ~15 ms of imports to the run)
    routes = {}
    env: dict[str, str] = {}
    url = proxy.proxy_url(token)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = url
    for var in ("NO_PROXY", "no_proxy"):
        env[var] = proxy.address
    for provider, key in (keys or {}).items():
        spec = providers[provider]
        routes[provider] = {
            "upstream": spec.upstream,
            "header": spec.header,
            "prefix": spec.prefix,
            "key": key,
        }
        env[spec.key_env] = f"pienv-placeholder-{provider}"
        for var in spec.base_env:
            env[var] = proxy.route_url(token, provider)
    body = {"policy": policy.to_json(), "branch": branch, "routes": routes}
    tar = _tar({f"runs/{token}.json": json.dumps(body).encode()})
    net = RunNetwork(token, proxy.network, (proxy.address,), env)
    if not background:
        _put(engine, proxy.container, tar)
        return net

    def put() -> None:
        # The archive call costs ~70 ms (the engine mounts the container's filesystem): it
        # overlaps the agent container's create instead of adding to the run.
        try:
            _put(engine, proxy.container, tar)
        except BaseException as exc:  # handed to registered()
            net.failure.append(exc)

    net.pending = threading.Thread(target=put, name="pienv-egress-register", daemon=True)
    net.pending.start()
    return net


def _put(engine: Engine, container: str, tar: bytes) -> None:
    """Extract ``tar`` into the proxy's volume (on a local socket one raw call: no docker-py
    import on a run's path)."""
    try:
        engine.write_archive(container, MOUNT, tar)
    except EngineError as exc:
        raise EngineError(f"cannot register the run with the egress proxy: {exc}") from exc


def collect(engine: Engine, proxy: Proxy, token: str) -> bytes:
    """The run's audit lines, and its registration revoked (keys gone from the proxy)."""
    raw = engine.read_path(proxy.container, f"{MOUNT}/audit/{token}.jsonl")
    data = b""
    if raw:
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for member in tar:
                f = tar.extractfile(member)
                if f is not None:
                    data = f.read()
    with contextlib.suppress(EngineError, HTTPError):
        _put(engine, proxy.container, _tar({f"runs/{token}.json": b'{"revoked": true}'}))
    return data


def remove(engine: Engine, store_id: str) -> bool:
    """Remove the store's proxy, its network and volume (prune/doctor when no run uses them).
    False when a run's container is still on the network."""
    name = names(store_id)
    net = _inspect(engine, "networks", name)
    users = [c for c in ((net or {}).get("Containers") or {}) if not _is_proxy(engine, c, name)]
    if users:
        return False
    with contextlib.suppress(HTTPError):
        engine._request("DELETE", f"/containers/{name}", {"force": "1"})
    with contextlib.suppress(HTTPError):
        engine._request("DELETE", f"/networks/{name}")
    engine.remove_volume(name)
    return True


def state(engine: Engine, store_id: str) -> str | None:
    """What `pienv doctor` says of the store's proxy; None when there is none."""
    name = names(store_id)
    found = _inspect(engine, "containers", name)
    if found is None:
        return None
    net = _inspect(engine, "networks", name) or {}
    runs = [c for c in (net.get("Containers") or {}) if c != found.get("Id")]
    status = "running" if (found.get("State") or {}).get("Running") else "stopped"
    image = str((found.get("Config") or {}).get("Image", ""))
    return (
        f"{name} {status} ({image}), {len(runs)} run(s) on its network; "
        "`pienv prune` removes it when unused"
    )


def _is_proxy(engine: Engine, cid: str, name: str) -> bool:
    state = _inspect(engine, "containers", cid) or {}
    return str(state.get("Name", "")).lstrip("/") == name
