"""Keeping secrets out of what pienv records: host variable values in commands and messages,
and credential-looking files in a branch's layers.

A key the host shell expanded into a command (`pienv run -- sh -c "curl -H $TOKEN ..."`) would
otherwise be stored in the commit's labels, the commit index, the reflog and `log` output.
``Redaction`` replaces such values by ``$NAME`` before anything is recorded. A file the agent
wrote under ``~`` stays in its commit's layer even after a later run deletes it (a whiteout
hides it, it does not remove it); ``credential_paths`` finds such files by name.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pienv.config import DENIED_ENV, matches

# Names whose values count as credentials wherever they come from (besides the deny-list).
CREDENTIAL_NAMES = ("*_KEY", "*_TOKEN", "*_SECRET", "*_PASSWORD", "*_PASS", "*_CREDENTIALS")
# Host paths and such, not secrets, that the deny-list names for other reasons.
NOT_SECRET = ("HOME", "PATH", "PWD", "SHELL", "USER", "LOGNAME")
# Shorter values are left alone: "1" or "C" would be replaced all over a command line.
MIN_LENGTH = 6


@dataclass
class Redaction:
    """Replaces known secret values (value -> NAME) by ``$NAME``; ``hidden`` says which."""

    values: Mapping[str, str]
    hidden: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, environ: Mapping[str, str], passed: Iterable[str] = ()) -> Redaction:
        """The secrets of ``environ``: credential-like names (the deny-list and the
        ``*_KEY``/``*_TOKEN``/... patterns) and every name in ``passed`` (the variables a run
        hands the container beyond the allow-list)."""
        passed = set(passed)
        values: dict[str, str] = {}
        for name, value in environ.items():
            if name in NOT_SECRET or len(value) < MIN_LENGTH:
                continue
            if name in passed or matches(name, DENIED_ENV) or matches(name, CREDENTIAL_NAMES):
                values.setdefault(value, name)
        return cls(values)

    def text(self, s: str) -> str:
        # Longest first, so a value that contains another is replaced whole.
        for value in sorted(self.values, key=len, reverse=True):
            if value in s:
                name = self.values[value]
                s = s.replace(value, "$" + name)
                self.hidden.add(name)
        return s

    def command(self, argv: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.text(a) for a in argv)

    def notice(self) -> str | None:
        """The one line saying what was replaced, or None."""
        if not self.hidden:
            return None
        names = ", ".join("$" + n for n in sorted(self.hidden))
        return f"recorded the command with {names} in place of the value (kept out of history)"


# File names (or path tails) that usually hold credentials. Matched on the last components.
CREDENTIAL_FILES = (
    "auth.json",  # Pi's ~/.pi/agent/auth.json
    ".credentials.json",
    "credentials.json",
    "oauth_creds.json",
    ".claude.json",
    ".git-credentials",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".env",
    "*.pem",
    "*.key",
    "id_rsa",
    "id_ecdsa",
    "id_ed25519",
    ".aws/credentials",
    ".docker/config.json",
    "gh/hosts.yml",
    ".config/gcloud/*",
)


def is_credential_path(path: str) -> bool:
    path = path.rstrip("/")
    base = posixpath.basename(path)
    for pattern in CREDENTIAL_FILES:
        if "/" in pattern:
            if fnmatch.fnmatchcase(path, "*/" + pattern) or fnmatch.fnmatchcase(path, pattern):
                return True
        elif fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def credential_paths(changes: Iterable[tuple[str, str]]) -> list[str]:
    """The added or changed paths (kinds A, C) of a commit's changes that look like
    credentials; a deletion (D) removes nothing from the layers below it."""
    return [p for kind, p in changes if kind in ("A", "C") and is_credential_path(p)]
