"""The connection to the engine: where it is (the endpoint Docker's own CLI would use:
DOCKER_HOST, else the current Docker context), how it is reached (pienv's own HTTP/1.1 on a
local unix socket, http.py; docker-py's session for tcp, TLS, ssh and for streams), the one
JSON path every call takes (`Connection._call`), and which dialect the engine speaks.

Importing docker-py and requests costs about 60 ms per command, a quarter of a no-op `docker
run`: on the unix socket a run's JSON calls never import it."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pienv.engine.dialects import Dialect, identify
from pienv.engine.http import NO_TIMEOUT, HTTPError, UnixTransport
from pienv.engine.records import EngineInfo, translated
from pienv.errors import EngineError

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The engine Docker's own CLI would use: DOCKER_HOST, else the current context's host."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST")
    if host:
        return host
    config_dir = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = env.get("DOCKER_CONTEXT")
    if not name:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
    if not name or name == "default":
        return DEFAULT_SOCKET
    import hashlib

    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    try:
        data = json.loads((meta / "meta.json").read_text())
        return str(data["Endpoints"]["docker"]["Host"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineError(
            f"Docker context {name!r} is not readable",
            hint="`docker context ls` lists them; `docker context use default` resets",
        ) from exc


def sdk_client(base_url: str, timeout: int) -> docker.DockerClient:
    """docker-py's client for ``base_url`` (its import costs ~60 ms: made on first use)."""
    import docker

    # requests lets these variables replace a session's CA (psf/requests#3829), so with TLS
    # the engine's own CA (DOCKER_CERT_PATH/ca.pem) would be ignored: hide them while the
    # client is made (it asks the engine's version), then stop the session from reading them.
    tls = bool(os.environ.get("DOCKER_TLS_VERIFY"))
    hidden = {k: os.environ.pop(k) for k in _CA_VARIABLES if tls and k in os.environ}
    try:
        with translated(base_url):
            if base_url == os.environ.get("DOCKER_HOST"):
                # from_env also honours DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
                client = docker.from_env(timeout=timeout)
            else:
                client = docker.DockerClient(base_url=base_url, timeout=timeout)
    finally:
        os.environ.update(hidden)
    if hidden:
        client.api.trust_env = False
    return client


class Connection:
    """A connection to one engine (DOCKER_HOST or the current Docker context): the transport
    chosen once (pienv's HTTP on a local unix socket, docker-py's session elsewhere), the
    JSON path every call takes (`_call`), and the engine's dialect. `Engine` (client.py)
    adds the calls."""

    def __init__(self, timeout: int = 300, *, sdk: bool = False) -> None:
        self.timeout = timeout
        self.base_url = endpoint()
        self._cli_host = self.base_url
        local = self.base_url.startswith("unix://") and not os.environ.get("DOCKER_TLS_VERIFY")
        # None: every call goes through docker-py (tcp, TLS and ssh endpoints, or sdk=True).
        self._socket = self.base_url[len("unix://") :] if local and not sdk else None
        self._http = UnixTransport(self._socket) if self._socket is not None else None
        self._client: docker.DockerClient | None = None
        self._dialect: Dialect | None = None
        self._rootless: bool | None = None

    @property
    def api(self) -> docker.APIClient:
        """docker-py's low-level client, made on first use (it costs ~60 ms of imports)."""
        if self._client is None:
            self._client = sdk_client(self.base_url, self.timeout)
        return self._client.api

    # -- the REST layer --------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call; the decoded JSON answer (None when empty). Errors: HTTPError."""
        raw = self._request(method, path, query, body, timeout)
        return json.loads(raw) if raw.strip() else None

    def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
        *,
        tar: bytes | None = None,
    ) -> bytes:
        """One API call; the raw answer. Query values that are lists repeat the parameter.
        ``body`` goes as JSON, ``tar`` as it is (an archive upload)."""
        data = tar if tar is not None else None if body is None else json.dumps(body).encode()
        kind = "application/x-tar" if tar is not None else "application/json"
        limit = self.timeout if timeout is None else timeout
        with translated(self.base_url):
            if self._http is not None:
                target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
                status, headers, raw = self._http.request(method, target, data, limit, kind)
            else:
                api = self.api
                r = api.request(
                    method,
                    f"{api.base_url}/v{api.api_version}{path}",
                    params=dict(query or {}),
                    data=data,
                    headers={"Content-Type": kind} if data else None,
                    timeout=None if limit == NO_TIMEOUT else limit,
                )
                status, raw = r.status_code, r.content
                headers = {k.lower(): v for k, v in r.headers.items()}
        if self._dialect is None:
            self._dialect = identify(headers)
        if status >= 400:
            try:
                message = str(json.loads(raw)["message"])
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or f"HTTP {status}"
            if "no space left on device" in message.lower():
                raise EngineError(f"Docker ran out of disk space: {message[:200]}")
            raise HTTPError(status, message, self._dialect.name, headers)
        return raw

    # -- what kind of engine ---------------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        """What this engine does differently (dialects/), learnt from the headers of its
        first answer, or from one `/_ping` if nothing was asked yet."""
        if self._dialect is None:
            self._request("GET", "/_ping")
        assert self._dialect is not None
        return self._dialect

    @property
    def local(self) -> bool:
        """Whether the engine runs on this machine (reached on a unix socket): only then are
        paths it names (its root dir) paths here."""
        return self.base_url.startswith("unix://")

    @property
    def rootless(self) -> bool:
        """Whether the engine runs as a non-root user. On a local socket its owner says so
        for free (a rootless engine cannot make a root-owned socket; /info costs ~0.6 s on
        rootless Podman); elsewhere /info, asked once."""
        if self._rootless is None:
            owner = None
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    owner = os.stat(self._socket).st_uid
            if owner is not None:
                self._rootless = owner != 0
            else:
                self._rootless = EngineInfo.from_api(self._call("GET", "/info")).rootless
        return self._rootless

    @staticmethod
    def _ref(ref: str) -> str:
        # A bare 64-hex id reads as an image name to Podman ("cannot specify 64-byte
        # hexadecimal strings"); both engines take the "sha256:" form.
        return "sha256:" + ref if _HEX64.fullmatch(ref) else ref

    @classmethod
    def _id(cls, ref: str) -> str:
        return quote(cls._ref(ref), safe="/:@")
