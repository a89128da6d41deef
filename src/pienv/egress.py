"""Egress policy: which hosts a branch's agent may reach, versioned with the environment.

A policy is a mode and two lists of host rules. Policies are stored content-addressed in the
store (egress/policies/HASH.json, never rewritten), each branch names the one it has now
(egress/branches.json), and every commit records the hash of the policy it ran under in its
``dev.pienv.egress`` label, so checking out or resetting to an old commit brings back the
policy that commit was made with. Pure: no engine, no network; the proxy (netproxy/proxy.py)
applies the same rules.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pienv.errors import UsageError

SCHEMA = 1
LABEL = "dev.pienv.egress"  # the policy hash a commit ran under
AUDIT_LABEL = "dev.pienv.egress-audit"  # the run id whose audit the store keeps
MODES = ("open", "allow-list", "none")
# `run --egress observe`: open, but through the proxy, so every connection is recorded.
RUN_MODES = (*MODES, "observe")
DEFAULT_PORTS = (80, 443)
_LABEL_RE = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^(\*\.)?{_LABEL_RE}(\.{_LABEL_RE})*$")


@dataclass(frozen=True)
class Provider:
    """A model provider whose key the proxy can add on the agent's behalf: the agent is given
    ``base_env`` = a plain-HTTP route on the proxy and a placeholder in ``key_env``."""

    name: str
    key_env: str
    upstream: str
    header: str
    prefix: str = ""
    base_env: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return self.upstream.split("://", 1)[-1].split("/", 1)[0]


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "anthropic",
            "ANTHROPIC_API_KEY",
            "https://api.anthropic.com",
            "x-api-key",
            base_env=("ANTHROPIC_BASE_URL",),
        ),
        Provider(
            "openai",
            "OPENAI_API_KEY",
            "https://api.openai.com/v1",
            "Authorization",
            prefix="Bearer ",
            base_env=("OPENAI_BASE_URL", "OPENAI_API_BASE"),
        ),
        Provider(
            "gemini",
            "GEMINI_API_KEY",
            "https://generativelanguage.googleapis.com",
            "x-goog-api-key",
            base_env=("GOOGLE_GEMINI_BASE_URL",),
        ),
        Provider(
            "openrouter",
            "OPENROUTER_API_KEY",
            "https://openrouter.ai/api/v1",
            "Authorization",
            prefix="Bearer ",
        ),
    )
}
# What each preset's agent needs: its providers' hosts and where its own updates come from.
# Registries are named by kind and looked up from this machine's npm/pip configuration when a
# policy is made (registry_hosts), never written here.
PRESET_NEEDS: dict[str, tuple[str, ...]] = {
    "pi": ("anthropic", "openai", "gemini", "openrouter", "@npm"),
    "claude": ("anthropic", "@npm"),
    "codex": ("openai", "@npm"),
    "gemini": ("gemini", "@npm"),
    "opencode": ("anthropic", "openai", "gemini", "openrouter", "@npm"),
    "aider": ("anthropic", "openai", "gemini", "openrouter", "@pip"),
}


def check_rule(rule: str) -> str:
    """A host rule in canonical form: ``HOST``, ``*.DOMAIN`` or an IP address, each with an
    optional ``:PORT`` (without one: ports 80 and 443). Bad input: UsageError."""
    text = rule.strip().lower().rstrip(".")
    name, port = text, ""
    m = re.fullmatch(r"(.+?)(?::(\d{1,5}))?", text)
    if m and not text.startswith("["):
        name, port = m.group(1), m.group(2) or ""
    if port and not 0 < int(port) < 65536:
        raise UsageError(f"bad port in egress rule {rule!r}")
    ok = bool(_NAME.match(name))
    if not ok:
        try:
            import ipaddress  # (imports on the run path cost: only for what is no name)

            ipaddress.ip_address(name.strip("[]"))
            ok = True
        except ValueError:
            ok = False
    if not ok or name in ("*", "*."):
        raise UsageError(
            f"bad egress rule {rule!r}",
            hint="a host name (example.org), *.example.org for its subdomains, or an IP "
            "address; :PORT for a port other than 80 and 443",
        )
    return f"{name}:{port}" if port else name


def rule_matches(rule: str, host: str, port: int) -> bool:
    """Whether ``rule`` covers ``host:port`` (the proxy holds the same function)."""
    name, _, rport = rule.rpartition(":") if re.search(r":\d+$", rule) else (rule, "", "")
    if rport and int(rport) != port:
        return False
    if not rport and port not in DEFAULT_PORTS:
        return False
    host = host.lower().rstrip(".")
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


@dataclass(frozen=True)
class Policy:
    mode: str = "open"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "allow": list(self.allow),
            "deny": list(self.deny),
        }

    def canonical(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        mode = str(data.get("mode", "open"))
        if mode not in MODES:
            raise UsageError(f"unknown egress mode {mode!r}", hint=f"one of {', '.join(MODES)}")
        return cls(
            mode,
            tuple(sorted({check_rule(str(r)) for r in data.get("allow") or ()})),
            tuple(sorted({check_rule(str(r)) for r in data.get("deny") or ()})),
        )

    def allowing(self, rules: Iterable[str]) -> Policy:
        """This policy with ``rules`` allowed (and no longer denied). An open policy becomes
        an allow-list: allowing hosts is how a user opts in."""
        new = {check_rule(r) for r in rules}
        mode = "allow-list" if self.mode == "open" else self.mode
        return replace(
            self,
            mode=mode,
            allow=tuple(sorted(set(self.allow) | new)),
            deny=tuple(sorted(set(self.deny) - new)),
        )

    def denying(self, rules: Iterable[str]) -> Policy:
        new = {check_rule(r) for r in rules}
        return replace(
            self,
            allow=tuple(sorted(set(self.allow) - new)),
            deny=tuple(sorted(set(self.deny) | new)),
        )

    def verdict(self, host: str, port: int) -> str | None:
        """None when ``host:port`` may be reached, else why not (as the proxy decides)."""
        if any(rule_matches(r, host, port) for r in self.deny):
            return "on the deny list"
        if self.mode == "open":
            return None
        if self.mode == "none":
            return "mode none"
        if any(rule_matches(r, host, port) for r in self.allow):
            return None
        return "not on the allow-list"


DEFAULT = Policy()


def preset_rules(preset: str, registries: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The hosts preset ``preset``'s agent needs (``registries``: see registry_hosts)."""
    rules: list[str] = []
    for need in PRESET_NEEDS.get(preset, ()):
        if need.startswith("@"):
            rules.extend(registries.get(need[1:], ()))
        else:
            rules.append(PROVIDERS[need].host)
    return rules


def _run(argv: list[str]) -> str:
    import subprocess

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def registry_hosts() -> dict[str, tuple[str, ...]]:
    """The package registries this machine's own tools use, by kind, from their own
    configuration (npm's registry; pip's index and the host PyPI serves files from)."""
    from urllib.parse import urlsplit

    out: dict[str, tuple[str, ...]] = {}
    npm = urlsplit(_run(["npm", "config", "get", "registry"])).hostname
    if npm:
        out["npm"] = (npm,)
    pip = [
        _run([sys.executable, "-m", "pip", "config", "get", "global.index-url"]),
        _run(
            [
                sys.executable,
                "-c",
                "from pip._internal.models.index import PyPI as p;"
                "print(p.url); print('https://' + p.file_storage_domain)",
            ]
        ),
    ]
    hosts = [urlsplit(u).hostname for text in pip for u in text.split() if "://" in u]
    pip_hosts = tuple(dict.fromkeys(h for h in hosts if h))
    if pip_hosts:
        out["pip"] = pip_hosts
    return out


@dataclass
class PolicyStore:
    """The store's policies: content-addressed files and each branch's current one."""

    root: Path
    _branches: dict[str, str] | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        return self.root / "egress"

    def _read_branches(self) -> dict[str, str]:
        path = self.directory / "branches.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"egress policy index {path} is unreadable: {exc}") from exc
        return {str(k): str(v) for k, v in (data.get("branches") or {}).items()}

    def has_branch(self, branch: str) -> bool:
        return branch in self._read_branches()

    def save(self, policy: Policy) -> str:
        from pienv.store import write_atomic

        path = self.directory / "policies" / f"{policy.hash}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, policy.canonical())
        return policy.hash

    def load(self, digest: str) -> Policy | None:
        if digest == DEFAULT.hash:
            return DEFAULT
        try:
            data = json.loads((self.directory / "policies" / f"{digest}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return Policy.from_json(data)

    def of_branch(self, branch: str, head_labels: Mapping[str, str] | None = None) -> Policy:
        """The branch's policy: the one set for it, else the one its head commit ran under,
        else the default (open)."""
        digest = self._read_branches().get(branch) or (head_labels or {}).get(LABEL, "")
        return (self.load(digest) if digest else None) or DEFAULT

    def set_branch(self, branch: str, policy: Policy) -> str:
        """Make ``policy`` the branch's (the lock is the caller's: the branch lock, or the ref
        store's transaction when a checkout or reset moves it)."""
        from pienv.store import write_atomic

        digest = self.save(policy)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Read-modify-write of the one index under a lock of its own (a side file, never
        # the file os.replace swaps): two branches edited at once both keep their edit.
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            branches = self._read_branches()
            branches[branch] = digest
            body = {"schema": SCHEMA, "branches": dict(sorted(branches.items()))}
            write_atomic(self.directory / "branches.json", json.dumps(body, indent=1).encode())
        return digest

    def follow_commit(self, branch: str, labels: Mapping[str, str]) -> Policy:
        """After checkout/reset to a commit: the branch takes the policy that commit ran
        under (a commit without one ran open, before policies existed)."""
        digest = labels.get(LABEL, "")
        policy = (self.load(digest) if digest else None) or DEFAULT
        self.set_branch(branch, policy)
        return policy
