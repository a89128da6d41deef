"""The Engine: what pienv asks of an engine, over one connection (connect.py).

JSON calls (the whole run loop among them) go through one small REST layer,
`Connection._call`: on a local unix socket pienv's own HTTP/1.1 (http.py), elsewhere
docker-py's session. Streams (attach, build, export/import, push/pull, archives) live in
streams.py, request bodies in bodies.py, the records calls return in records.py. What differs
between engines is asked of the dialect (dialects/), chosen from the headers of the engine's
first answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pienv.engine.bodies as bodies
import pienv.engine.streams as streams
from pienv.engine.connect import Connection
from pienv.engine.dialects import INIT_MOUNTS
from pienv.engine.http import NO_TIMEOUT, HTTPError
from pienv.engine.records import (
    MAX_DEPTH,
    ContainerRow,
    ContainerState,
    EngineInfo,
    EngineVersion,
    ImageInfo,
    ImageRow,
    translated,
)
from pienv.errors import EngineError, MaxDepthExceeded
from pienv.model import LABEL, full_hex

if TYPE_CHECKING:
    import tarfile


class Engine(Connection):
    """A connection to one Docker engine (DOCKER_HOST or the current Docker context) and
    what pienv asks of it: each call returns ids, records (records.py) or plain values."""

    # Labels for a helper container of a kind (Context.engine sets it: runloop/helpers.py);
    # None: an engine with no store (its helpers are unlabelled).
    helper_labels: Callable[[str], dict[str, str]] | None = None

    # -- engine ----------------------------------------------------------------------------

    def version(self) -> EngineVersion:
        return EngineVersion.from_api(self._call("GET", "/version"))

    def info(self) -> EngineInfo:
        return EngineInfo.from_api(self._call("GET", "/info"))

    def describe(self) -> str:
        """One truthful line: product, version, API, storage driver, rootless, endpoint."""
        version, info = self.version(), self.info()
        mode = "rootless" if info.rootless else "rootful"
        return f"{version}, {info.driver}, {mode}, at {self.base_url}"

    def probe(self, image: str) -> list[tuple[str, str]]:
        """What pienv needs of an engine, tried for real on ``image`` (for `pienv doctor`):
        [(check, "" when it works, else what failed)]. Leaves nothing behind."""
        out: list[tuple[str, str]] = []
        labels = {"dev.pienv.probe": 'a "quoted" $value \\ ', "dev.pienv.probe-empty": ""}
        cid = new = ""
        try:
            cid = self.create(
                image,
                entrypoint=["/bin/sh", "-c", "echo ok > /probe"],
                labels={"dev.pienv.probe": "run"},
            )
            for _ in self.run_streaming(cid):
                pass
            code = self.wait(cid)
            out.append(("init binary", "" if code == 0 else f"the probe exited {code}"))
        except EngineError as exc:
            out.append(("init binary", str(exc)))
            return out
        try:
            like = self.inspect_image(image)
            new = self.commit(cid, like, labels)
            got = self.inspect_image(new)
            lost = {k: v for k, v in labels.items() if not got or got.labels.get(k) != v}
            out.append(("commit labels", f"labels changed on the way: {lost}" if lost else ""))
            data = self.read_archive(cid, "/probe")
            out.append(("archive API", "" if data else "GET /containers/{id}/archive gave nothing"))
        except EngineError as exc:
            out.append(("commit labels" if not new else "archive API", str(exc)))
        finally:
            self.remove_container(cid, force=True)
            if new:
                self.remove_image(new)
        return out

    # -- images ----------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> ImageInfo | None:
        try:
            return ImageInfo.from_api(self._call("GET", f"/images/{self._id(ref)}/json"))
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def images(self, label_filters: list[str]) -> list[ImageRow]:
        # /images/json, not docker-py's images.list(), which inspects every image (7x slower).
        # The dialect may send fewer filters; all of them are checked here (on every engine:
        # the same rule everywhere).
        sent = self.dialect.label_filters(label_filters)
        rows = self._call("GET", "/images/json", bodies.filters(label=sent)) or []
        return [
            r for r in map(ImageRow.from_api, rows) if bodies.has_labels(r.labels, label_filters)
        ]

    def images_in(self, repository: str) -> list[ImageRow]:
        """Images tagged ``repository:*`` (a store's commits fetched from another store keep
        that store's labels, but carry this store's tags)."""
        rows = (
            self._call("GET", "/images/json", bodies.filters(reference=[f"{repository}:*"])) or []
        )
        return list(map(ImageRow.from_api, rows))

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        self._call("POST", f"/images/{self._id(image_id)}/tag", {"repo": repository, "tag": tag})

    def untag(self, ref: str) -> None:
        with contextlib.suppress(HTTPError):
            self._call("DELETE", f"/images/{self._id(ref)}", {"noprune": "0"})

    @property
    def removes_built_on(self) -> bool:
        """Whether remove_image removes an image another image builds on (Podman) rather
        than refusing it (Docker: it stays, untagged)."""
        return self.dialect.removes_built_on

    def remove_image(self, image_id: str) -> bool:
        """Remove an image; False if a container or child still needs it."""
        try:
            self._call("DELETE", f"/images/{self._id(image_id)}", {"force": "0", "noprune": "0"})
        except HTTPError as exc:
            if exc.status == 404:
                return True
            if exc.status == 409:
                return False
            raise
        return True

    def build(
        self,
        context: Path,
        tag: str,
        buildargs: dict[str, str],
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        with translated(self.base_url):
            # forcerm: the container of a failed step goes too (rm only cleans on success).
            stream = self.api.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs,
                rm=True,
                forcerm=True,
                decode=True,
            )
            image_id = streams.read_build(stream, self.dialect, on_line, self.remove_image)
            if image_id is None:
                info = self.inspect_image(tag)
                if info is None:
                    raise EngineError("base build produced no image")
                image_id = info.id
        return full_hex(image_id)

    # -- containers ------------------------------------------------------------------------

    def create(
        self,
        image: str,
        *,
        entrypoint: list[str],
        user: str = "",
        workdir: str = "",
        binds: Mapping[str, Mapping[str, str]] | None = None,
        labels: dict[str, str] | None = None,
        tty: bool = False,
        stdin: bool = False,
        network: str = "bridge",
        hostname: str | None = None,
        name: str | None = None,
        dns: tuple[str, ...] = (),
        cap_drop: tuple[str, ...] = (),
        cap_add: tuple[str, ...] = (),
        no_new_privileges: bool = False,
        resources: Mapping[str, Any] | None = None,
    ) -> str:
        """``resources``: more HostConfig fields (bodies.resources: limits, ports, GPUs)."""
        self.dialect.check_mounts(binds or {})
        config: dict[str, Any] = {
            "Image": self._ref(image),
            "Entrypoint": entrypoint,
            # An explicit empty Cmd: the image's Cmd must not be appended to our argv.
            "Cmd": [],
            "Labels": labels or {},
            "Tty": tty,
            "OpenStdin": stdin,
            "StdinOnce": stdin,
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": {
                "Mounts": bodies.mounts(binds or {}),
                "NetworkMode": network,
                "Init": True,
                "Privileged": False,
            },
        }
        if user:
            config["User"] = user
        if workdir:
            config["WorkingDir"] = workdir
        if hostname:
            config["Hostname"] = hostname
        if dns:  # the egress proxy, the only resolver (it answers nothing): docs/network.md
            config["HostConfig"]["Dns"] = list(dns)
        if cap_drop:
            config["HostConfig"]["CapDrop"] = list(cap_drop)
        if cap_add:
            config["HostConfig"]["CapAdd"] = list(cap_add)
        if no_new_privileges:  # setuid (sudo) gains nothing: `[run] sudo = false`
            config["HostConfig"]["SecurityOpt"] = ["no-new-privileges"]
        if resources:
            config["HostConfig"].update(resources)
            if "PortBindings" in resources:
                config["ExposedPorts"] = {port: {} for port in resources["PortBindings"]}
        return self._create(config, name)

    def _create(self, config: dict[str, Any], name: str | None = None) -> str:
        self.dialect.prepare_create(self, config)
        query = {"name": name} if name else None
        try:
            created = self._call("POST", "/containers/create", query, config)
        except HTTPError as exc:
            if "init binary" in str(exc) or "catatonit" in str(exc):
                raise EngineError(
                    f"the engine has no init binary ({exc.message[:200]})",
                    hint="install catatonit (Debian/Ubuntu: `apt-get install catatonit`) or "
                    "set init_path in containers.conf",
                ) from exc
            missing = bodies.missing_source(config, str(exc))
            if missing and not self.local:
                # Every run mounts its env file, named by a fresh random token: an engine
                # that cannot find it does not share this machine's files, so the workspace
                # it would mount is not this one (a remote engine: ssh://, tcp://). Which
                # missing source an engine names is its own choice (Podman's is random), so
                # the workspace is named where the container has one.
                workspace = (config.get("Labels") or {}).get(LABEL + "workspace")
                raise self._cannot_see(workspace or missing) from exc
            raise
        return str(created["Id"])

    def _cannot_see(self, path: str) -> EngineError:
        return EngineError(
            f"the engine at {self.base_url} cannot see {path}: it runs on another machine, "
            "and the workspace must be on the engine's machine",
            hint="run pienv on that machine, or use a local engine "
            "(unset DOCKER_HOST, `docker context use default`)",
        )

    def create_stopped(
        self, image: str, labels: dict[str, str] | None = None, kind: str = "diff"
    ) -> str:
        """A container that is never started (for commits and exports of an image). Without
        ``labels`` it is a helper of ``kind``: labelled by ``helper_labels`` (the store, the
        kind, the pid that made it), so `pienv orphans` finds it if that pid is killed."""
        if labels is None and self.helper_labels is not None:
            labels = self.helper_labels(kind)
        cid = self._create({"Image": self._ref(image), "Cmd": ["true"], "Labels": labels or {}})
        from pienv.store.crash import crashpoint

        crashpoint(f"created-{kind}")
        return cid

    def run_streaming(
        self, cid: str, stdin_fd: int | None = None
    ) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Start ``cid`` and yield its (stdout, stderr) chunks until it exits.

        ``stdin_fd`` (the container must have been created with ``stdin=True``) is copied to
        the container until EOF, which closes the container's stdin, as `docker run -i`
        does, on every transport: the unix socket, tcp, TLS and ssh.

        The attach is made before the start: attaching to a container that already exited
        can block forever, and a short command may exit before a late attach arrives. No
        ``logs`` replay (as `docker run`): the engine answers the attach before it subscribes
        and reads the log, so output written in between would arrive twice.
        """
        if self._http is not None:

            def start() -> None:
                self._call("POST", f"/containers/{cid}/start")
                self.dialect.started(self, cid)

            yield from streams.attach_unix(self._http, cid, stdin_fd, start, self.base_url)
            return

        def unseen(message: str) -> EngineError | None:
            # Rootful Podman makes a missing bind source on its machine at create (an empty
            # directory), then fails to mount the env file it made a directory (at the
            # attach: Podman prepares the container there).
            path = re.search(r'error mounting "([^"]+)"', message)
            return self._cannot_see(path.group(1)) if path and not self.local else None

        yield from streams.attach_sdk(self.api, cid, stdin_fd, self.base_url, unseen)

    def attach_interactive(self, cid: str, detach_keys: str = "ctrl-^,ctrl-q") -> int:
        """Start and attach through the docker CLI (raw TTY, resize, signals): its exit code."""
        if self.dialect.watches_starts and self.local:
            threading.Thread(
                target=self._when_running, args=(cid,), name="pienv-started", daemon=True
            ).start()
        return streams.attach_interactive(self._cli_host, cid, detach_keys)

    def _when_running(self, cid: str, limit: float = 30.0) -> None:
        """Tell the dialect once the CLI has started ``cid`` (polled: the CLI says nothing).
        A container that ends first was never seen running: nothing to tell."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                state = (self._call("GET", f"/containers/{cid}/json") or {}).get("State") or {}
            except EngineError:
                return
            if state.get("Pid"):
                self.dialect.started(self, cid)
                return
            if state.get("Status") in ("exited", "dead"):
                return
            time.sleep(0.02)

    def wait(self, cid: str, timeout: int | None = None) -> int:
        result = self._call(
            "POST", f"/containers/{cid}/wait", timeout=NO_TIMEOUT if timeout is None else timeout
        )
        return int(result.get("StatusCode", 1))

    def stop(self, cid: str, timeout: int = 10) -> None:
        with contextlib.suppress(HTTPError):
            self._call("POST", f"/containers/{cid}/stop", {"t": timeout}, timeout=timeout + 60)

    def inspect_container(self, cid: str) -> ContainerState | None:
        try:
            state = ContainerState.from_api(self._call("GET", f"/containers/{cid}/json"))
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise
        if state.status == "exited" and not state.oom_killed and self.dialect.oom_killed(cid):
            state = dataclasses.replace(state, oom_killed=True)
        return state

    def containers(self, label_filters: list[str]) -> list[ContainerRow]:
        rows = self._call(
            "GET", "/containers/json", {"all": 1, **bodies.filters(label=label_filters)}
        )
        found = [ContainerRow.from_api(r) for r in rows or []]
        return [r for r in found if bodies.has_labels(r.labels, label_filters)]

    def container_size(self, cid: str) -> int:
        rows = self._call(
            "GET", "/containers/json", {"all": 1, "size": 1, **bodies.filters(id=[cid])}
        )
        return int(rows[0].get("SizeRw", 0)) if rows else 0

    def path_exists(self, cid: str, path: str) -> bool:
        """Whether ``path`` exists in container ``cid``'s filesystem (symlinks of its parent
        directories followed, as the engine does for mount targets; the path itself as lstat
        sees it, so a dangling symlink exists); needs no start."""
        try:
            self._call("HEAD", f"/containers/{cid}/archive", {"path": path})
        except HTTPError as exc:
            if exc.status == 404:
                return self.dialect.exists_after_404(exc.headers)
            raise
        return True

    def init_path(self) -> str:
        """Where this engine bind-mounts its init for ``Init: True`` (a run creates it in its
        writable layer unless the image holds it): Docker's tini or Podman's catatonit."""
        return self.dialect.init_path

    def made_paths(self) -> tuple[tuple[str, str], ...]:
        """Paths the engine itself writes into a started container's own layer, beyond its
        mount points, when the image lacks them: (path, symlink target, or "" for an empty
        file); Podman's are in dialects/podman.py. A commit that holds them keeps a no-op
        run's layer empty (design rule 3)."""
        return self.dialect.made_paths

    def commit(self, cid: str, like: ImageInfo | None, labels: Mapping[str, str]) -> str:
        """Commit container ``cid`` with ``like``'s image config and ``labels`` added to its
        labels (pass *every* pienv label: see bodies.commit_conf); the new image's id.

        Raises MaxDepthExceeded when the storage driver refuses another layer.
        """
        conf = bodies.commit_conf(like.config if like else {}, labels)
        query: dict[str, Any] = {"container": cid, **self.dialect.commit_query(self, cid, conf)}
        try:
            result = self._call("POST", "/commit", query, conf, timeout=NO_TIMEOUT)
        except EngineError as exc:
            if "max depth exceeded" in str(exc).lower():
                raise MaxDepthExceeded(
                    f"the engine refuses a layer past {MAX_DEPTH}: {exc.message}"
                ) from exc
            raise
        return full_hex(result["Id"])

    def remove_container(self, cid: str, force: bool = False) -> None:
        with contextlib.suppress(HTTPError):
            self._call("DELETE", f"/containers/{cid}", {"force": int(force), "v": 1})

    # -- volumes ---------------------------------------------------------------------------

    def remove_volume(self, name: str) -> bool:
        """Remove a named volume; False when there is none (a volume in use is an error)."""
        try:
            self._call("DELETE", f"/volumes/{name}")
        except HTTPError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def volumes(self, prefix: str) -> list[str]:
        """Names of the volumes whose name starts with ``prefix``."""
        data = self._call("GET", "/volumes", bodies.filters(name=[prefix])) or {}
        return sorted(
            str(v["Name"]) for v in data.get("Volumes") or () if str(v["Name"]).startswith(prefix)
        )

    # -- files and whole filesystems (streams.py) --------------------------------------------

    def read_path(self, cid: str, path: str) -> bytes | None:
        """A tar of ``path`` in the container (only that path is read, however big the
        image), or None if it does not exist. Over the local socket: no docker-py import."""
        try:
            return self._request("GET", f"/containers/{cid}/archive", {"path": path})
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def read_archive(self, cid: str, path: str) -> bytes | None:
        """A tar of ``path`` in the container, or None if it does not exist."""
        try:
            with translated(self.base_url):
                chunks, _ = self.api.get_archive(cid, path)
                return b"".join(chunks)
        except HTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def write_archive(self, cid: str, directory: str, data: bytes) -> None:
        """Extract a tar into ``directory`` of the container (modes kept; owners on Docker,
        while Podman gives the files the container user's ids). Over the local socket: no
        docker-py import (~60 ms)."""
        self._request("PUT", f"/containers/{cid}/archive", {"path": directory}, tar=data)

    def export_stream(self, cid: str) -> Iterator[bytes]:
        """The container's whole filesystem as a tar, streamed in 1 MiB chunks."""
        yield from streams.export(self.api, cid, self.base_url)

    def export_container(self, cid: str, on_bytes: Callable[[int], None] | None = None) -> str:
        """Stream container ``cid``'s whole filesystem into a new one-layer image (no config)."""
        return streams.import_export(self.api, cid, self.base_url, on_bytes)

    def image_layers(self, image: str) -> list[list[tarfile.TarInfo]]:
        """The entries (headers only: no file content is kept) of each of ``image``'s
        layers, base first, as the engine stores them: added and changed paths, whiteouts
        (`.wh.NAME`, `.wh..wh..opq`) for deletions. Read from the engine's image export
        (`docker save`), the only API that hands out single layers: the engine writes out
        the whole image, so this costs the image's size, once per commit shown."""
        return streams.image_layers(self.api, self._ref(image), self.base_url)

    # -- registry transfer (ops/push.py, ops/remote.py; streams.py) ----------------------------

    def push_image(
        self,
        image_id: str,
        name: str,
        tag: str,
        auth: Mapping[str, str] | None,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> str:
        """Push one image as ``name:tag`` (the engine skips layers the registry holds); the
        manifest digest the registry stored, as the engine reported it ("" if it did not).
        ``auth``: X-Registry-Auth fields (None: the engine client's own config). The local tag
        is removed again afterwards."""
        self.tag(image_id, name, tag)
        try:
            return streams.push(self.api, name, tag, auth, on_event, self.base_url)
        finally:
            self.untag(f"{name}:{tag}")

    def pull_image(
        self,
        reference: str,
        auth: Mapping[str, str] | None,
        on_event: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> str:
        """Pull ``NAME@DIGEST`` (or ``NAME:TAG``); the local image id (sha256:...)."""
        streams.pull(self.api, reference, auth, on_event, self.base_url)
        info = self.inspect_image(reference)
        if info is None:
            raise EngineError(f"the engine pulled {reference} but does not list it")
        return info.id

    def layer_dirs(self, image: str) -> list[str] | None:
        """The directories holding ``image``'s layers on this machine, base first (overlay2
        on a local engine: the image's GraphDriver data); None where they cannot be read
        here (another driver, a remote or rootless engine): use ``saved_layers`` then."""
        if not self.local:
            return None
        try:
            data = self._call("GET", f"/images/{self._id(image)}/json")
        except HTTPError:
            return None
        return streams.overlay_dirs(data)

    def saved_layers(
        self, images: list[str], want: Callable[[str, int], bool]
    ) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, bytes | None]]]]:
        """Read ``images`` from one engine export (`docker save`: every layer written once):
        ({image id hex: its layer keys, base first}, {layer key: [(path, content)]}) for the
        non-empty regular files of each layer, content read only where ``want(path, size)``
        says so (None for the rest)."""
        refs = [self._ref(i) for i in images]
        return streams.saved_layers(self.api, refs, want, self.base_url)


__all__ = ["INIT_MOUNTS", "Engine"]
