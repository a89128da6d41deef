"""What must not leave the machine: the credential scan of a push (design.md, the rule on
what leaves the machine). Wider than pienv.secrets (`log --secrets`), which looks at the
paths a run changed: this one reads base layers too, so it matches precise locations (a CA
`*.pem` under /etc/ssl is no secret) and reads token files for a token.

A file deleted by a later run still sits in the earlier run's layer, and a registry serves
every layer of every pushed commit, so the scan reads every layer of the commits a push
sends (one engine export: each layer once), not the head's merged tree. What counts:

- any file in an agent preset's state directory (logins live in volumes since issue 12;
  a file there in a layer is a login that got committed), ``~/.claude.json``;
- private keys in ``.ssh/``, ``.aws/credentials``, ``.netrc``, ``.git-credentials``;
- ``.docker/config.json``, ``.npmrc``, ``.pypirc``, ``gh``'s ``hosts.yml`` holding a token;
- a ``.env`` file with a key-looking value (``*KEY*``/``*TOKEN*``/``*SECRET*``/``*PASSWORD*``
  set to something long that is not a placeholder).

Commits made before logins moved out of images are refused as a whole (their ``created``
label is older than the release that did it), since a login there may sit under any name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pienv.config import ALL_STATE_DIRS
from pienv.engine import Engine
from pienv.model import Commit, JsonResult, parse_time

# Agent logins and state moved into per-store volumes in b6096a3 (issue 12, CHANGELOG
# "Agent logins and state ... live in per-store volumes"): commits created before it may hold
# them in their layers.
STATE_VOLUMES_SINCE = "2026-11-27T06:30:54Z"
# Token files are read whole up to this size; a bigger one (no real .npmrc or .env is) is
# refused unread: a token after megabytes of padding would otherwise pass.
READ_LIMIT = 8 * 1024 * 1024
_HOME = r"(?:/root|/home/[^/]+)"
_STATE = "|".join(re.escape(d) for d in ALL_STATE_DIRS)
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"{_HOME}/(?:{_STATE})/.+"), "an agent's login/state file"),
    (re.compile(rf"{_HOME}/\.claude\.json"), "Claude Code's account file"),
    (re.compile(r".*/\.aws/credentials"), "AWS credentials"),
    (re.compile(r".*/\.netrc"), "a .netrc login"),
    (re.compile(r".*/\.git-credentials"), "git credentials"),
    (
        re.compile(
            r".*/\.config/gcloud/(?:credentials\.db|access_tokens\.db|"
            r"application_default_credentials\.json|legacy_credentials/.+)"
        ),
        "Google Cloud credentials",
    ),
    (re.compile(r".*/\.azure/(?:accessTokens\.json|msal_token_cache\..+)"), "Azure tokens"),
)
TOKEN_FILES: tuple[tuple[re.Pattern[str], re.Pattern[bytes], str], ...] = (
    (
        re.compile(r".*/\.docker/config\.json"),
        re.compile(rb'"(auth|identitytoken)"\s*:\s*"[^"]'),
        "a docker login",
    ),
    (re.compile(r".*/\.npmrc"), re.compile(rb"_auth(Token)?\s*=\s*\S"), "an npm token"),
    (re.compile(r".*/\.pypirc"), re.compile(rb"password\s*[:=]\s*\S"), "a PyPI password"),
    (re.compile(r".*/gh/hosts\.yml"), re.compile(rb"oauth_token:\s*\S"), "a GitHub CLI token"),
    (
        re.compile(r".*/\.kube/config"),
        re.compile(rb"(?:token|client-key-data|password):\s*\S"),
        "a Kubernetes login",
    ),
)
# Private keys by their default names anywhere: ~/.ssh may be a symlink to another directory,
# and the layer then holds the key under that directory's path.
_SSH_KEY = re.compile(r"id_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?")
_SSH_PUBLIC = {"known_hosts", "known_hosts.old", "authorized_keys", "config"}
_ENV_FILE = re.compile(r".*/\.env(\.[A-Za-z0-9_.-]+)?")
_ENV_LINE = re.compile(
    rb"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD)[A-Za-z0-9_]*)"
    rb"\s*=\s*['\"]?([^'\"\s#]{12,})",
    re.MULTILINE | re.IGNORECASE,
)
# Values that are tokens whatever their variable is called (GH_PAT=ghp_..., OPENAI=sk-...).
_ENV_TOKEN = re.compile(
    rb"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*['\"]?"
    rb"(?:ghp_|gho_|ghs_|github_pat_|glpat-|sk-|xox[abprs]-|npm_|pypi-|AKIA|ASIA)"
    rb"[A-Za-z0-9_-]{16,}",
    re.MULTILINE,
)
_PLACEHOLDER = re.compile(rb"^(x+|\*+|<.*>|your[-_].*|changeme|example.*|\$\{?.*)$", re.I)


@dataclass(frozen=True)
class Finding(JsonResult):
    commit: str
    path: str
    what: str


def legacy(commits: Sequence[Commit]) -> list[Commit]:
    """Commits made before agent logins moved out of images."""
    cutoff = parse_time(STATE_VOLUMES_SINCE)
    out = []
    for c in commits:
        try:
            if parse_time(c.created) < cutoff:
                out.append(c)
        except ValueError:
            out.append(c)  # no readable creation time: assume the worst
    return out


def _named(path: str) -> bool:
    """Whether ``path`` is a file whose content says if it holds a token."""
    return bool(_ENV_FILE.fullmatch(path)) or any(p.fullmatch(path) for p, _, _ in TOKEN_FILES)


def _wanted(path: str, size: int) -> bool:
    return size <= READ_LIMIT and _named(path)


def classify(path: str, body: bytes | None) -> str | None:
    """Why ``path`` (with its content, if read) is a credential file; None if it is not."""
    # Deletion markers (.wh.*) are empty and never reach here (callers skip empty files): a
    # non-empty file named like one holds content like any other.
    name = path.rsplit("/", 1)[-1].removeprefix(".wh.")
    path = path.rsplit("/", 1)[0] + "/" + name
    for pattern, what in PATTERNS:
        if pattern.fullmatch(path):
            return what
    if "/.ssh/" in path and not name.endswith(".pub") and name not in _SSH_PUBLIC:
        return "an SSH key or login"
    if _SSH_KEY.fullmatch(name):
        return "an SSH private key"
    if body is None:
        # A token file not read (over READ_LIMIT, or unreadable): it cannot be shown clean.
        return "a token file too large to check" if _named(path) else None
    for pattern, content, what in TOKEN_FILES:
        if pattern.fullmatch(path) and content.search(body):
            return what
    if _ENV_FILE.fullmatch(path):
        for m in _ENV_LINE.finditer(body):
            if not _PLACEHOLDER.match(m.group(2)):
                return f"a .env with a key-looking value ({m.group(1).decode()})"
        for m in _ENV_TOKEN.finditer(body):
            return f"a .env with a token-looking value ({m.group(1).decode()})"
    return None


def scan(engine: Engine, commits: Sequence[Commit]) -> list[Finding]:
    """Every credential file in any layer of ``commits`` (oldest first) that the remote lacks,
    named with the commit that added the layer. On a local overlay2 engine only the layers a
    commit adds to its parent are read, from their directories (a commit whose parent is on
    the remote was scanned when the parent was pushed); elsewhere from one engine export."""
    if not commits:
        return []
    dirs = {c.id: engine.layer_dirs(c.id) for c in commits}
    if all(d is not None for d in dirs.values()):
        return _scan_dirs(engine, commits, dirs)
    return _scan_export(engine, [c.id for c in commits])


def _scan_dirs(
    engine: Engine, commits: Sequence[Commit], dirs: dict[str, list[str] | None]
) -> list[Finding]:
    found: list[Finding] = []
    seen: set[str] = set()
    for c in commits:
        parent = c.parents[0] if c.parents else None
        below = set(dirs.get(parent) or engine.layer_dirs(parent) or []) if parent else set()
        for top in dirs[c.id] or []:
            if top in below or top in seen:
                continue
            seen.add(top)
            for path, body in _files(top):
                what = classify(path, body)
                if what is not None:
                    found.append(Finding(c.id, path, what))
    return found


def _files(top: str) -> list[tuple[str, bytes | None]]:
    """(path in the image, content if wanted) of the non-empty regular files under ``top``."""
    import os
    import stat

    out: list[tuple[str, bytes | None]] = []
    for root, _, names in os.walk(top):
        for name in names:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not st.st_size:
                continue  # whiteouts (0/0 devices), links, empty files: nothing to leak
            path = "/" + os.path.relpath(full, top)
            body = None
            if _wanted(path, st.st_size):
                try:
                    with open(full, "rb") as fh:
                        body = fh.read(READ_LIMIT)
                except OSError:
                    body = None
            out.append((path, body))
    return out


def _scan_export(engine: Engine, commits: list[str]) -> list[Finding]:
    order, layers = engine.saved_layers(list(commits), _wanted)
    owner: dict[str, str] = {}
    for cid in sorted(commits, key=lambda c: len(order.get(c, []))):
        for key in order.get(cid, []):
            owner.setdefault(key, cid)
    found: list[Finding] = []
    for key, files in layers.items():
        for path, body in files:
            what = classify(path, body)
            if what is not None:
                found.append(Finding(owner.get(key, ""), path, what))
    return found
