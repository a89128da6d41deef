"""The egress boundary on the engine: the store's proxy container, its slots, a run's
registration and audit.

Layout (per store, named by its store id, started on demand and replaced when gone or
out of date):

- container ``pienv-egress-SID``: the proxy (netproxy/), on the engine's default network (the
  way out) and on no other; it serves the runs on a unix socket, not on any network. All
  capabilities dropped, read-only root.
- slots ``pienv-egress-SID.N`` (N = 0, 1, ...), one per run at a time, made when every slot
  is busy and kept for the next runs: a holder container of that name with no network at all
  (``NetworkMode: none``: loopback only), whose relay passes 127.0.0.1:3128 to the proxy's
  socket and answers DNS on 127.0.0.1:53 with REFUSED. A run's container joins the holder's
  namespace (``NetworkMode: container:HOLDER``): it has no route, no address but loopback,
  no bridge, no gateway, so it reaches neither the host's services nor another run nor
  anything but the proxy, on every engine alike (rootful Podman has no internal bridge
  without a host address; an internal network's embedded resolver forwards queries, as
  CVE-2024-29018). Joining a namespace also costs the engine less than attaching to a network
  (measured: 0.12 s against 0.30 s for a busybox `docker run --rm` on an internal network,
  0.25 s on the default bridge). A run claims its slot with a lock file in the store
  (``egress-slots/N.lock``), held until its container has exited; a slot whose lock is free
  but whose run container still runs (its pienv and finalizer killed) is passed over.
- volume ``pienv-egress-SID``: a tmpfs-backed local volume at /run/pienv in the proxy, where
  pienv writes each run's registration (policy, injected keys) and reads its audit through the
  engine's archive API, which works on remote engines too. (The archive API cannot write into
  a container's own tmpfs mount, it can into a volume; tmpfs keeps keys off the disk.)
- volume ``pienv-egress-SID-socket``: the proxy's socket, shared with the holders only (they
  never see the registrations).

Only the engine layer knows Docker: this module speaks the engine's REST calls through
Engine and is to move into the engine package's dialects with the structure split.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
from pienv.locks import held
from pienv.netproxy import quick_tag

PORT = 3128
ADDRESS = "127.0.0.1"  # where a run finds the proxy: its slot's relay, on loopback
MOUNT = "/run/pienv"
SOCKET_MOUNT = "/run/pienv-socket"  # netproxy/proxy.py SOCKET's directory
PREFIX = "pienv-egress-"
LABEL = "dev.pienv.egress-proxy"


SLOT_LABEL = "dev.pienv.egress-slot"  # on a slot's holder and on the runs in it
IMAGE_LABEL = "dev.pienv.egress-image"  # the holder's: the proxy image it runs (quick_tag)
MAX_SLOTS = 64  # runs of one store with a policy at once


@dataclass(frozen=True)
class Proxy:
    container: str
    name: str  # its container's name, the prefix of its slots


@dataclass
class Slot:
    """A run's own network namespace: its holder container (named ``name``), whose relay the
    run finds at ``address``. ``fd`` is the claim (-1 once released)."""

    name: str
    holder: str
    address: str = ADDRESS
    fd: int = -1
    # target in the container -> the file pienv wrote for it (slot_files): read-only over
    # the holder's own, which every run of the slot would otherwise share writable.
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return f"container:{self.holder}"

    def proxy_url(self, token: str) -> str:
        return f"http://pienv:{token}@{self.address}:{PORT}"

    def route_url(self, token: str, provider: str) -> str:
        return f"http://{self.address}:{PORT}/_pienv/{token}/{provider}"

    def release(self) -> None:
        """The run's container has exited: the slot is free for the next run."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass
class RunNetwork:
    """What a run's container gets: its slot's network namespace (loopback only; the relay
    its only resolver, which answers nothing) and the proxy variables."""

    token: str
    network: str  # NetworkMode: container:HOLDER
    dns: tuple[str, ...]  # () : a container joining a namespace takes no --dns of its own
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


def _proxy_of(state: Mapping[str, Any], name: str) -> Proxy:
    return Proxy(str(state["Id"]), name)


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
        if running and current:
            return _proxy_of(state, name)
    tag = ensure_image(engine)
    if state is not None:
        with contextlib.suppress(HTTPError):
            engine._request("DELETE", f"/containers/{state['Id']}", {"force": "1", "v": "0"})
    outside = _inspect(engine, "networks", _outside_network(engine)) or {}
    _ensure_volume(engine, name, store_id)
    _ensure_volume(engine, name + "-socket", store_id)
    # The proxy also refuses every network it is on (read from its routes as it connects);
    # the outside one is named here for engines whose routes it cannot read.
    blocked = " ".join(_subnets(outside))
    config: dict[str, Any] = {
        "Image": tag,
        "Labels": {"dev.pienv.store": store_id, LABEL: "proxy"},
        "Env": [f"PIENV_BLOCK_NETS={blocked}", f"PIENV_PROXY_PORT={PORT}"],
        "HostConfig": {
            "NetworkMode": _outside_network(engine),
            "Mounts": [
                {"Type": "volume", "Source": name, "Target": MOUNT},
                {"Type": "volume", "Source": name + "-socket", "Target": SOCKET_MOUNT},
            ],
            "CapDrop": ["ALL"],
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
    engine._request("POST", f"/containers/{cid}/start")
    return _wait_proxy(engine, name)


def _wait_proxy(engine: Engine, name: str) -> Proxy:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = _inspect(engine, "containers", name) or {}
        hostname = str((state.get("Config") or {}).get("Hostname", ""))
        if (state.get("State") or {}).get("Running") and engine.read_path(
            str(state["Id"]), f"{MOUNT}/ready.{hostname}"
        ) is not None:
            return _proxy_of(state, name)
        time.sleep(0.05)
    raise EngineError(f"the egress proxy {name} did not start (`docker logs {name}`)")


# -- slots -------------------------------------------------------------------------------


def slot_name(proxy: Proxy, index: int) -> str:
    return f"{proxy.name}.{index}"


def claim(engine: Engine, proxy: Proxy, store_id: str, locks: Path) -> Slot:
    """A slot of the store's proxy for one run, claimed (its lock held: ``Slot.release``
    when the run's container has exited): the first free one, made when none is."""
    locks.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_SLOTS):
        fd = os.open(locks / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # a run of this store is in it
            raise
        # (A fork shares the lock: the finalizer holds it too, until the container exits.
        # O_CLOEXEC keeps it from the programs pienv executes.)
        try:
            slot = _ready(engine, proxy, store_id, slot_name(proxy, index))
        except BaseException:
            os.close(fd)
            raise
        if slot is None:
            os.close(fd)
            continue
        slot.fd = fd
        try:
            slot.files = slot_files(locks, index, slot.address)
        except BaseException:
            slot.release()
            raise
        return slot
    raise EngineError(
        f"{MAX_SLOTS} runs of this store with an egress policy are running",
        hint="wait for one to end (`pienv status`), or run with --egress open",
    )


HOSTNAME = "pienv"  # a slot's holder's, and so every run's in it


def slot_files(locks: Path, index: int, address: str) -> dict[str, str]:
    """The resolver, hosts and hostname files of a slot's runs, written under its claim.
    A run joining the holder's namespace would get the holder's own files, writable and
    shared with every later run of the slot (root in one run could leave entries for the
    next); these are mounted read-only instead. The proxy is the only resolver."""
    texts = {
        "/etc/resolv.conf": f"nameserver {address}\n",
        "/etc/hosts": (
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{HOSTNAME}\n"
        ),
        "/etc/hostname": f"{HOSTNAME}\n",
    }
    out = {}
    for target, text in texts.items():
        path = locks / f"{index}.{target.rsplit('/', 1)[1]}"
        # Rewritten in place only when it differs: a bind mount holds the file's inode.
        try:
            same = path.read_text() == text
        except OSError:
            same = False
        if not same:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            os.replace(tmp, path)
        out[target] = str(path)
    return out


def _ready(engine: Engine, proxy: Proxy, store_id: str, name: str) -> Slot | None:
    """Slot ``name``, made or mended; None while a run container is still in it (its pienv
    and finalizer were killed: the lock is free, the namespace is not)."""
    holder = None
    for row in engine.containers([f"{SLOT_LABEL}={name}"]):
        if row.labels.get(LABEL) == "holder":
            if row.state in ("running", "paused") and row.name == name:
                holder = row
        elif row.state not in ("exited", "dead", "removing"):
            # Created counts too: a start pienv sent just before it was killed may still
            # be under way ("created" for a few hundred ms, then running). A run container
            # left created for good keeps the slot until `pienv orphans` removes it.
            return None
    if holder is not None and holder.labels.get(IMAGE_LABEL) == quick_tag():
        return Slot(name, holder.id)
    # Made now, or mended: the holder is gone, stopped, or of another pienv's proxy image.
    with contextlib.suppress(HTTPError):
        engine._request("DELETE", f"/containers/{name}", {"force": "1", "v": "1"})
    ready = f"{name}.{os.urandom(4).hex()}"
    config: dict[str, Any] = {
        "Image": quick_tag(),
        "Hostname": HOSTNAME,
        "Cmd": ["relay", ready],
        "Labels": {
            "dev.pienv.store": store_id,
            LABEL: "holder",
            SLOT_LABEL: name,
            IMAGE_LABEL: quick_tag(),
        },
        "HostConfig": {
            "NetworkMode": "none",
            "Mounts": [
                {"Type": "volume", "Source": proxy.name + "-socket", "Target": SOCKET_MOUNT}
            ],
            "CapDrop": ["ALL"],
            "CapAdd": ["NET_BIND_SERVICE"],  # DNS on 127.0.0.1:53
            "ReadonlyRootfs": True,
            "SecurityOpt": ["no-new-privileges"],
            "RestartPolicy": {"Name": "unless-stopped"},
        },
    }
    try:
        cid = str(engine._call("POST", "/containers/create", {"name": name}, config)["Id"])
    except HTTPError as exc:
        raise EngineError(f"cannot make the egress slot {name}: {exc.message}") from exc
    engine._request("POST", f"/containers/{cid}/start")
    deadline = time.monotonic() + 30
    while engine.read_path(cid, f"{SOCKET_MOUNT}/ready.{ready}") is None:
        if time.monotonic() > deadline:
            raise EngineError(f"the egress slot {name} did not start (`docker logs {name}`)")
        time.sleep(0.02)
    return Slot(name, cid)


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
    slot: Slot,
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
    url = slot.proxy_url(token)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = url
    for var in ("NO_PROXY", "no_proxy"):
        env[var] = f"{slot.address},localhost"
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
            env[var] = slot.route_url(token, provider)
    body = {"policy": policy.to_json(), "branch": branch, "routes": routes}
    tar = _tar({f"runs/{token}.json": json.dumps(body).encode()})
    net = RunNetwork(token, slot.mode, (), env)
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


def _slot_rows(engine: Engine, store_id: str) -> tuple[list[Any], list[Any]]:
    """(holders, run containers still running) of the store's slots."""
    prefix = names(store_id) + "."
    holders, runs = [], []
    for row in engine.containers([SLOT_LABEL]):
        if not row.labels.get(SLOT_LABEL, "").startswith(prefix):
            continue
        if row.labels.get(LABEL) == "holder":
            holders.append(row)
        elif row.state in ("running", "paused", "restarting", "created"):
            runs.append(row)
    return holders, runs


def _networks(engine: Engine, store_id: str) -> list[str]:
    """The store's networks: those an older pienv made (one internal network per store, or
    per slot), which `remove` takes away too."""
    rows = engine._call(
        "GET", "/networks", {"filters": json.dumps({"label": [f"dev.pienv.store={store_id}"]})}
    )
    prefix = names(store_id)
    return sorted(
        str(n["Name"])
        for n in rows or ()
        if str(n.get("Name", "")).startswith(prefix)
        and (n.get("Labels") or {}).get("dev.pienv.store") == store_id
    )


def claimed(locks: Path) -> bool:
    """Whether a run holds a slot of the store now (about to create its container, say)."""
    return any(held(path) for path in (locks.glob("*.lock") if locks.is_dir() else ()))


def remove(engine: Engine, store_id: str, locks: Path | None = None) -> bool:
    """Remove the store's proxy, its slots' holders, its volumes (and networks an older pienv
    made) when no run uses them (prune). False when a run's container is still in a slot, or
    a run holds one (``locks``: the store's slot locks)."""
    name = names(store_id)
    if locks is not None and claimed(locks):
        return False
    holders, runs = _slot_rows(engine, store_id)
    if runs:
        return False
    legacy = _inspect(engine, "networks", name)
    if legacy is not None:
        users = [c for c in legacy.get("Containers") or {} if not _is_proxy(engine, c, name)]
        if users:
            return False
    for row in holders:
        with contextlib.suppress(HTTPError):
            engine._request("DELETE", f"/containers/{row.id}", {"force": "1"})
    with contextlib.suppress(HTTPError):
        engine._request("DELETE", f"/containers/{name}", {"force": "1"})
    for network in _networks(engine, store_id):
        with contextlib.suppress(HTTPError):
            engine._request("DELETE", f"/networks/{network}")
    engine.remove_volume(name)
    engine.remove_volume(name + "-socket")
    return True


def state(engine: Engine, store_id: str) -> str | None:
    """What `pienv doctor` says of the store's proxy; None when there is none."""
    name = names(store_id)
    found = _inspect(engine, "containers", name)
    if found is None:
        return None
    holders, runs = _slot_rows(engine, store_id)
    status = "running" if (found.get("State") or {}).get("Running") else "stopped"
    image = str((found.get("Config") or {}).get("Image", ""))
    return (
        f"{name} {status} ({image}), {len(holders)} slot(s), {len(runs)} run(s) in them; "
        "`pienv prune` removes it when unused"
    )


def _is_proxy(engine: Engine, cid: str, name: str) -> bool:
    state = _inspect(engine, "containers", cid) or {}
    return str(state.get("Name", "")).lstrip("/") == name
