"""A small client of the OCI distribution API (manifests and tags), and the engine's logins.

pienv moves image *content* through the engine (`docker push`/`pull`: layers, resumption,
the engine's own proxy and TLS settings); what the engine cannot do is read and write the
small objects that hold a remote's refs and DAG (an OCI image index per branch and tag, see
ops/push.py), so those go straight to the registry over HTTP here. No docker import: the
registry is a plain HTTP service, and the logins are the engine's files (docker login's
config.json and credential helpers, Podman's auth.json), read, never written.

Registries on 127.0.0.0/8, ::1 and localhost are spoken to over plain HTTP, as Docker and
Podman allow for them without configuration; every other registry over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pienv.errors import PienvError, UsageError

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFESTS = (
    INDEX,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
DOCKER_HUB = "registry-1.docker.io"
MAX_TAG_PAGES = 10_000  # of 1,000 tags each
# Reads are retried on a server error: Distribution's filesystem storage writes a tag's link
# in place, so a GET racing another client's PUT of that tag can read it half-written and
# answer 500 (measured: two stores pushing at once). Writes are never retried here.
_READ_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0)
_RETRIED = (429, 500, 502, 503, 504)
_TAG_OK = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# host[:port]: a DNS name or IPv4 address, or [IPv6]; nothing else (no user:password@, which
# pienv would otherwise keep in remotes.json, no spaces or control characters).
_HOST_OK = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
)
_REPO_OK = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


class RegistryError(PienvError):
    """The registry refused or failed a request (one line, with the registry's words)."""


class LoginMissing(RegistryError):
    """The registry wants credentials the engine's logins do not hold (or refused them)."""


@dataclass(frozen=True)
class Location:
    """REGISTRY/REPOSITORY, e.g. ``127.0.0.1:5000/team/env`` or ``ghcr.io/me/env``."""

    registry: str  # host[:port]
    repository: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def insecure(self) -> bool:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else ""
        return (
            host in ("localhost", "127.0.0.1")
            or host.startswith("127.")
            or self.registry.startswith("[::1]")
        )

    def image(self, tag: str) -> str:
        return f"{self}:{tag}"


def parse_location(text: str) -> Location:
    """``REGISTRY/REPOSITORY`` -> Location; the registry part is required (a host with a dot
    or a port, or localhost), as pienv never guesses Docker Hub for an upload."""
    text = text.strip().removeprefix("oci://").removeprefix("docker://").rstrip("/")
    registry, _, repository = text.partition("/")
    hostlike = "." in registry or ":" in registry or registry == "localhost"
    host = _HOST_OK.fullmatch(registry)
    port = host.group(1) if host else None
    if not repository or not hostlike or not host or (port and not 0 < int(port) < 65536):
        raise UsageError(
            f"bad remote {_shown(text)}: give REGISTRY/REPOSITORY (REGISTRY a host[:port], "
            "no login in it), e.g. 127.0.0.1:5000/team/env or ghcr.io/me/env"
        )
    if ":" in repository or "@" in repository or not _REPO_OK.fullmatch(repository):
        raise UsageError(
            f"bad repository {_shown(repository)} in {_shown(text)}: lower-case letters, "
            "digits and separators (. _ - /) only, no tag"
        )
    return Location(registry, repository)


def _shown(text: str) -> str:
    """``text`` quoted for an error line, without a login it may hold (user:password@)."""
    return repr(re.sub(r"[^/@]*@", "***@", text, count=1) if "@" in text else text)


# -- tag names for refs -----------------------------------------------------------------------


def escape(name: str) -> str:
    """A branch or tag name as the tail of an OCI tag: letters, digits, '.' and '-' kept,
    every other byte (including '_' and '/') as _XX; names too long for a tag end in a hash
    (the real name travels in an annotation)."""
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in ".-") else _hex(ch) for ch in name)
    if len(out) > 100:
        out = out[:80] + "_h" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return out


def _hex(ch: str) -> str:
    return "".join(f"_{b:02x}" for b in ch.encode())


def valid_tag(tag: str) -> bool:
    return _TAG_OK.fullmatch(tag) is not None


# -- the engine's logins ----------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # docker login's OAuth refresh token (username "<token>")

    def engine_header(self, registry: str) -> str:
        """The engine API's X-Registry-Auth value for a push or pull."""
        body: dict[str, str] = {"serveraddress": registry}
        if self.identity_token:
            body["identitytoken"] = self.identity_token
        elif self.username:
            body.update(username=self.username, password=self.password)
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


def _auth_files() -> list[Path]:
    files = []
    docker_config = os.environ.get("DOCKER_CONFIG")
    files.append(Path(docker_config or Path.home() / ".docker") / "config.json")
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(Path(runtime) / "containers" / "auth.json")  # Podman's default
    files.append(Path.home() / ".config" / "containers" / "auth.json")
    return files


def _keys(registry: str) -> list[str]:
    if registry in (DOCKER_HUB, "docker.io", "index.docker.io"):
        return ["https://index.docker.io/v1/", "docker.io", "index.docker.io", DOCKER_HUB]
    return [registry, f"https://{registry}", f"http://{registry}"]


def login_for(registry: str) -> Login | None:
    """The credentials `docker login` (or `podman login`) stored for ``registry``: from a
    credential helper named in config.json, else the file's own entry; None: no login."""
    for path in _auth_files():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        helper = (data.get("credHelpers") or {}).get(registry) or data.get("credsStore")
        if helper:
            found = _from_helper(str(helper), registry)
            if found:
                return found
        auths = data.get("auths") or {}
        for key in _keys(registry):
            entry = auths.get(key)
            if isinstance(entry, dict):
                return _from_entry(entry)
    return None


def _from_entry(entry: dict[str, Any]) -> Login | None:
    if entry.get("identitytoken"):
        return Login(identity_token=str(entry["identitytoken"]))
    try:
        user, _, password = base64.b64decode(str(entry.get("auth", ""))).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return Login(user, password) if user else None


def _from_helper(helper: str, registry: str) -> Login | None:
    for key in _keys(registry)[:2]:
        try:
            proc = subprocess.run(
                [f"docker-credential-{helper}", "get"],
                input=key,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode == 0:
            try:
                data = json.loads(proc.stdout)
            except ValueError:
                return None
            user, secret = str(data.get("Username", "")), str(data.get("Secret", ""))
            if user == "<token>":
                return Login(identity_token=secret)
            return Login(user, secret) if user else None
    return None


def missing_login(registry: str, refused: bool = False) -> LoginMissing:
    what = "refused the engine's login for" if refused else "needs a login for"
    return LoginMissing(
        f"registry {registry} {what} this repository: run `docker login {registry}` "
        f"(or `podman login {registry}`); pienv uses the engine's logins and never asks for "
        "a password"
    )


# -- the HTTP client --------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Client:
    """Manifests and tags of one repository. Token (Bearer) and Basic auth, as the registry
    asks in its 401 challenge, with the engine's login for the registry if it has one."""

    def __init__(self, location: Location, timeout: float = 60) -> None:
        self.location = location
        self.timeout = timeout
        scheme = "http" if location.insecure else "https"
        host = DOCKER_HUB if location.registry == "docker.io" else location.registry
        self.base = f"{scheme}://{host}/v2/{location.repository}"
        self._auth: str | None = None  # the Authorization header that worked
        self._login: Login | bool | None = False  # False: not looked up yet

    def login(self) -> Login | None:
        if self._login is False:
            self._login = login_for(self.location.registry)
        return self._login if isinstance(self._login, Login) else None

    # -- requests ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Response:
        """One request to ``self.base + path``; answers with a status in ``ok`` (or 404) are
        returned, the rest raise RegistryError (401/403: LoginMissing)."""
        url = path if path.startswith("http") else self.base + path
        resp = self._send(method, url, headers or {}, body)
        if resp.status == 401 and self._auth is None:
            self._auth = self._authorize(resp.headers.get("www-authenticate", ""))
            resp = self._send(method, url, headers or {}, body)
        if method in ("GET", "HEAD"):
            for pause in _READ_RETRY_PAUSES:
                if resp.status not in _RETRIED:
                    break
                time.sleep(pause)
                resp = self._send(method, url, headers or {}, body)
        if resp.status in ok or resp.status == 404:
            return resp
        if resp.status in (401, 403):
            raise missing_login(self.location.registry, refused=self.login() is not None)
        raise RegistryError(
            f"registry {self.location.registry} answered {resp.status} to {method} "
            f"{urllib.parse.urlsplit(url).path}: {_message(resp.body)}"
        )

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        all_headers = {"User-Agent": "pienv", **headers}
        if self._auth:
            all_headers["Authorization"] = self._auth
        req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        try:
            with _opener().open(req, timeout=self.timeout) as r:
                return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
        except urllib.error.HTTPError as exc:
            data = exc.read() if exc.fp else b""
            return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, data)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(
                f"cannot reach registry {self.location.registry}: {reason}"
            ) from None

    def _authorize(self, challenge: str) -> str:
        scheme, _, params = challenge.partition(" ")
        login = self.login()
        if scheme.lower() == "basic":
            if login is None or not login.username:
                raise missing_login(self.location.registry)
            pair = f"{login.username}:{login.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if scheme.lower() != "bearer":
            raise missing_login(self.location.registry)
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        query = {"service": fields.get("service", "")}
        scope = fields.get("scope") or f"repository:{self.location.repository}:pull,push"
        url = fields.get("realm", "") + "?" + urllib.parse.urlencode({**query, "scope": scope})
        headers = {"User-Agent": "pienv"}
        if login is not None and login.username:
            pair = f"{login.username}:{login.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        req = urllib.request.Request(url, headers=headers)
        try:
            with _opener().open(req, timeout=self.timeout) as r:
                data = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise missing_login(self.location.registry, refused=login is not None) from None
            raise RegistryError(f"registry token service answered {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryError(f"cannot get a registry token: {exc}") from None
        token = data.get("token") or data.get("access_token")
        if not token:
            raise missing_login(self.location.registry)
        return f"Bearer {token}"

    # -- the API -----------------------------------------------------------------------------

    def manifest(self, reference: str) -> tuple[str, str, bytes] | None:
        """(digest, media type, body) of the manifest a tag or digest names; None: none."""
        resp = self.request("GET", f"/manifests/{reference}", {"Accept": ", ".join(MANIFESTS)})
        if resp.status == 404:
            return None
        digest = resp.headers.get("docker-content-digest") or _digest(resp.body)
        media = resp.headers.get("content-type", "").split(";")[0]
        return digest, media, resp.body

    def head_manifest(self, reference: str) -> tuple[str, str, int] | None:
        """(digest, media type, size) of a manifest without its body; None: none."""
        resp = self.request("HEAD", f"/manifests/{reference}", {"Accept": ", ".join(MANIFESTS)})
        if resp.status == 404:
            return None
        digest = resp.headers.get("docker-content-digest", "")
        size = int(resp.headers.get("content-length") or 0)
        return digest, resp.headers.get("content-type", "").split(";")[0], size

    def put_manifest(
        self, tag: str, body: bytes, media_type: str, if_match: str | None = None
    ) -> str:
        """Write a manifest under ``tag``; its digest. ``if_match``: the digest the tag must
        still name (a conditional request: sent always, honoured by few registries, see
        distribution-spec #250; a 412 answer is a lost race)."""
        headers = {"Content-Type": media_type}
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        resp = self.request("PUT", f"/manifests/{tag}", headers, body, ok=(200, 201, 202, 412))
        if resp.status == 412:
            raise RegistryError(f"tag {tag} changed on the registry meanwhile; nothing written")
        if resp.status == 404:
            raise RegistryError(f"registry refused manifest {tag}: {_message(resp.body)}")
        return resp.headers.get("docker-content-digest") or _digest(body)

    def tags(self) -> list[str]:
        """Every tag of the repository (following the API's pagination); [] if none."""
        out: list[str] = []
        path: str | None = "/tags/list?n=1000"
        seen: set[str] = set()
        while path:
            if path in seen or len(seen) >= MAX_TAG_PAGES:  # a registry's link loops
                raise RegistryError("registry sent an endless tag list")
            seen.add(path)
            resp = self.request("GET", path)
            if resp.status == 404:
                return out
            try:
                page = json.loads(resp.body).get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError("registry sent a malformed tag list") from None
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError("registry sent a malformed tag list")
            out.extend(page)
            link = resp.headers.get("link", "")
            m = re.match(r"<([^>]+)>", link)
            if not m:
                break
            target = m.group(1)
            path = target if target.startswith("http") else urllib.parse.urljoin(self.base, target)
        return out


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Redirects, without our Authorization header when they leave the registry's scheme and
    host: urllib would carry it (a Basic login is the user's password) to any host a
    registry names, or down to plain HTTP."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            before, after = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
            if (before.scheme, before.netloc) != (after.scheme, after.netloc):
                new.remove_header("Authorization")
        return new


def _opener() -> urllib.request.OpenerDirector:
    # Proxies from the environment are honoured as for any HTTP client.
    return urllib.request.build_opener(_SameOriginAuth)


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _message(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:300]
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:200] or "no details"
