"""The only module that talks to Docker (docker-py, plus the docker CLI for TTY attach).

Everything returns plain data (ids, dicts, lists); Docker exceptions become EngineError with
a message that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pienv.errors import EngineError
from pienv.model import full_hex

if TYPE_CHECKING:
    import docker

KIND = {0: "C", 1: "A", 2: "D"}
MAX_DEPTH = 125  # overlay2 refuses to commit past this many layers ("max depth exceeded")


def _translate(exc: BaseException) -> EngineError:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, PermissionError) or "permission denied" in low:
        return EngineError(
            "permission denied on the Docker socket",
            hint="add your user to the `docker` group (then log in again) or use a rootless "
            "Docker context",
        )
    if any(
        s in low
        for s in (
            "connection refused",
            "no such file",
            "connection aborted",
            "error while fetching",
        )
    ):
        return EngineError(
            "Docker is not running (cannot reach the engine at "
            f"{os.environ.get('DOCKER_HOST', 'the default socket')})",
            hint="start it, e.g. `sudo systemctl start docker`, or set DOCKER_HOST",
        )
    if "no space left on device" in low:
        return EngineError(f"Docker ran out of disk space: {text.splitlines()[0][:200]}")
    first = text.splitlines()[0] if text else exc.__class__.__name__
    return EngineError(f"Docker: {first[:300]}")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    import docker.errors
    import requests.exceptions

    try:
        yield
    except docker.errors.NotFound as exc:
        raise EngineError(f"Docker: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise _translate(exc) from exc


class Engine:
    """A connection to one Docker engine (DOCKER_HOST or the current Docker context)."""

    def __init__(self, timeout: int = 300) -> None:
        import docker

        base_url = os.environ.get("DOCKER_HOST")
        if not base_url:
            with contextlib.suppress(Exception):
                from docker.context import ContextAPI

                ctx = ContextAPI.get_current_context()
                if ctx is not None and ctx.Host and ctx.name != "default":
                    base_url = ctx.Host
        with translated():
            self.client: docker.DockerClient = docker.DockerClient(
                base_url=base_url or "unix:///var/run/docker.sock", timeout=timeout
            )
        self.api = self.client.api
        self.base_url: str = self.api.base_url if base_url is None else base_url
        self._cli_host = base_url or "unix:///var/run/docker.sock"

    # -- engine ----------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        with translated():
            return dict(self.api.version())

    def info(self) -> dict[str, Any]:
        with translated():
            return dict(self.api.info())

    # -- images ----------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            with translated():
                return dict(self.api.inspect_image(ref))  # type: ignore[no-untyped-call]
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def images(self, label_filters: list[str]) -> list[dict[str, Any]]:
        # The low-level call: client.images.list() inspects every image (7x slower).
        with translated():
            return list(self.api.images(filters={"label": label_filters}))

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        with translated():
            self.api.tag(image_id, repository, tag, force=True)

    def untag(self, ref: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound), translated():
            self.api.remove_image(ref, noprune=False)

    def remove_image(self, image_id: str) -> bool:
        """Remove an image; False if a container or child still needs it."""
        import docker.errors

        try:
            with translated():
                self.api.remove_image(image_id, force=False, noprune=False)
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return True
            if isinstance(exc.__cause__, docker.errors.APIError):
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
        with translated():
            stream = self.api.build(
                path=str(context), tag=tag, buildargs=buildargs, rm=True, decode=True
            )
            image_id = None
            for chunk in stream:
                if "error" in chunk:
                    raise EngineError(f"base build failed: {chunk['error'].strip()}")
                if "stream" in chunk and on_line:
                    on_line(chunk["stream"].rstrip())
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = aux["ID"]
            if image_id is None:
                info = self.inspect_image(tag)
                if info is None:
                    raise EngineError("base build produced no image")
                image_id = info["Id"]
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
    ) -> str:
        with translated():
            host_config = self.api.create_host_config(
                binds=dict(binds or {}),
                network_mode=network,
                init=True,
                privileged=False,
            )
            created = self.api.create_container(
                image,
                entrypoint=entrypoint,
                # An explicit empty Cmd: the image's Cmd must not be appended to our argv.
                command=[],
                user=user or None,
                working_dir=workdir or None,
                labels=labels or {},
                tty=tty,
                stdin_open=stdin,
                host_config=host_config,
                hostname=hostname,
                name=name,
            )
        return str(created["Id"])

    def create_stopped(self, image: str, labels: dict[str, str] | None = None) -> str:
        """A container that is never started (for commits and exports of an image)."""
        with translated():
            created = self.api.create_container(image, command=["true"], labels=labels or {})
        return str(created["Id"])

    def run_streaming(self, cid: str) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Start ``cid`` and yield its (stdout, stderr) chunks until it exits.

        The attach is made before the start: attaching to a container that already exited
        can block forever, and a short command may exit before a late attach arrives.
        """
        with translated():
            stream = self.api.attach(
                cid, stdout=True, stderr=True, stream=True, logs=True, demux=True
            )
            self.api.start(cid)
            yield from stream

    def attach_interactive(self, cid: str, detach_keys: str = "ctrl-^,ctrl-q") -> int:
        """Start and attach through the docker CLI (raw TTY, resize, signals): its exit code."""
        env = dict(os.environ)
        env["DOCKER_HOST"] = self._cli_host
        try:
            proc = subprocess.run(
                [
                    "docker",
                    "start",
                    "--attach",
                    "--interactive",
                    f"--detach-keys={detach_keys}",
                    cid,
                ],
                env=env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise EngineError(
                "the docker CLI is needed for interactive sessions and was not found",
                hint="install the docker client, or run with stdin not a terminal",
            ) from exc
        return proc.returncode

    def wait(self, cid: str, timeout: int | None = None) -> int:
        with translated():
            result = self.api.wait(cid, timeout=timeout)
        return int(result.get("StatusCode", 1))

    def stop(self, cid: str, timeout: int = 10) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound), translated():
            self.api.stop(cid, timeout=timeout)

    def inspect_container(self, cid: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            with translated():
                return dict(self.api.inspect_container(cid))
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def containers(self, label_filters: list[str]) -> list[dict[str, Any]]:
        with translated():
            return list(self.api.containers(all=True, filters={"label": label_filters}, size=False))

    def container_size(self, cid: str) -> int:
        with translated():
            rows = self.api.containers(all=True, filters={"id": cid}, size=True)
        return int(rows[0].get("SizeRw", 0)) if rows else 0

    def diff(self, cid: str) -> list[tuple[str, str]]:
        with translated():
            rows = self.api.diff(cid) or []
        return [(KIND.get(r["Kind"], "C"), r["Path"]) for r in rows]

    def commit(self, cid: str, conf: dict[str, Any]) -> str:
        """Commit with exactly ``conf`` as the image config (labels included)."""
        with translated():
            result = self.api.commit(cid, conf=conf)
        return full_hex(result["Id"])

    def remove_container(self, cid: str, force: bool = False) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound), translated():
            self.api.remove_container(cid, force=force, v=True)

    # -- flatten ---------------------------------------------------------------------------

    def export_stream(self, cid: str) -> Iterator[bytes]:
        """The container's whole filesystem as a tar, streamed in 1 MiB chunks."""
        with translated():
            yield from self.api.export(cid, chunk_size=1 << 20)

    def read_archive(self, cid: str, path: str) -> bytes | None:
        """A tar of ``path`` in the container, or None if it does not exist."""
        import docker.errors

        try:
            with translated():
                chunks, _ = self.api.get_archive(cid, path)
                return b"".join(chunks)
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise

    def write_archive(self, cid: str, directory: str, data: bytes) -> None:
        """Extract a tar into ``directory`` of the container (owners and modes kept)."""
        with translated():
            self.api.put_archive(cid, directory, data)

    def export_container(self, cid: str, on_bytes: Callable[[int], None] | None = None) -> str:
        """Stream container ``cid``'s whole filesystem into a new one-layer image (no config)."""

        def counted() -> Iterator[bytes]:
            for chunk in self.export_stream(cid):
                if on_bytes:
                    on_bytes(len(chunk))
                yield chunk

        with translated():
            result = self.api.import_image_from_data(counted())
        return _imported_id(result)


def _imported_id(result: Any) -> str:
    import json

    text = result if isinstance(result, str) else str(result)
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if "status" in data and str(data["status"]).startswith("sha256:"):
                return full_hex(data["status"].strip())
            if "error" in data:
                raise EngineError(f"Docker import failed: {data['error']}")
    raise EngineError(f"Docker import returned no image id: {text[:200]}")


def depth(image: dict[str, Any]) -> int:
    return len(image.get("RootFS", {}).get("Layers", []) or [])


def commit_conf(image: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The image's own config with ``labels`` set, safe against Docker's commit merge.

    Docker merges the run container's config into a commit: env entries, labels and (when the
    image has none) entrypoint/cmd of the container survive unless the commit names them.
    Callers pass *every* pienv label; here an empty Entrypoint list (not null) stops the run
    wrapper from becoming the image's entrypoint.
    """
    conf = dict(image.get("Config") or {})
    merged = dict(conf.get("Labels") or {})
    merged.update(labels)
    conf["Labels"] = merged
    if not conf.get("Entrypoint"):
        conf["Entrypoint"] = []
    conf.pop("Image", None)
    return conf
