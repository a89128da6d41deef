"""User configuration (TOML), read only from the user's own config file, never the workspace
(rule 9 in docs/rules.md: what widens the sandbox never comes from a file the container writes).

``$PIENV_CONFIG`` or ``$PIENV_HOME/config.toml``::

    [agent]
    command = ["pi"]                     # what `pienv run` starts without `-- CMD`
    install = "npm install -g ..."       # run in the container when the command is missing
    passthrough = ["ANTHROPIC_API_KEY"]  # host variables handed to the agent

    [run]
    env = ["MY_SETTING"]                 # more host variables to pass
    force_env = []                       # credential variables passed despite the deny-list
    mounts = ["/data/cache:/cache:ro"]   # extra bind mounts HOST:CONTAINER[:ro|rw]
    network = "bridge"                   # docker network mode
    flatten_at = 100                     # flatten a head at this layer depth
    protect_git = true                   # .git/hooks, .git/config read-only in the container
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pienv.errors import UsageError

DEFAULT_AGENT = ("pi",)
DEFAULT_INSTALL = "npm install -g --ignore-scripts @earendil-works/pi-coding-agent"
# The locale variables glibc knows, by name: a pattern like LC_* would pass LC_SECRET too.
LOCALE_ENV = (
    "LC_ALL",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
)
ALLOWED_ENV = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", *LOCALE_ENV)
# Never passed unless named in force_env: credentials and handles to host agents/daemons.
DENIED_ENV = (
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITLAB_TOKEN",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "AWS_*",
    "AZURE_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_*",
    "KUBECONFIG",
    "NPM_TOKEN",
    "NODE_AUTH_TOKEN",
    "PYPI_TOKEN",
    "TWINE_PASSWORD",
    "DOCKER_*",
    "VAULT_TOKEN",
    "HOME",
    "PATH",
)
DEFAULT_FLATTEN_AT = 100


def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Config:
    agent_command: tuple[str, ...] = DEFAULT_AGENT
    agent_install: str = DEFAULT_INSTALL
    passthrough: tuple[str, ...] = ()
    force_env: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    network: str = "bridge"
    flatten_at: int = DEFAULT_FLATTEN_AT
    protect_git: bool = True
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def container_env(
        self, environ: dict[str, str] | os._Environ[str], extra_names: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """The host variables the container gets: allow-list + configured, minus credentials."""
        wanted = [*ALLOWED_ENV, *self.passthrough, *extra_names]
        out = {}
        for name, value in environ.items():
            if not matches(name, wanted):
                continue
            if matches(name, DENIED_ENV) and name not in self.force_env:
                continue
            out[name] = value
        return out

    def dropped_env(
        self, environ: dict[str, str] | os._Environ[str], extra_names: tuple[str, ...] = ()
    ) -> list[str]:
        """Host variables that were asked for (allow-list, configuration, ``-e``) but are not
        passed, as "NAME (why)", so a dropped credential is never silent."""
        wanted = [*ALLOWED_ENV, *self.passthrough, *extra_names]
        out = []
        for name in sorted(environ):
            if matches(name, wanted) and matches(name, DENIED_ENV) and name not in self.force_env:
                why = "set by pienv" if name in ("HOME", "PATH") else "credential"
                out.append(f"{name} ({why})")
        return out


class _Reader:
    """Typed access to the parsed TOML that remembers what was read, so that whatever is left
    over (a typo such as ``[agnet]`` or ``flaten_at``) is named with its file instead of being
    ignored. Read every key through ``get``: a key read otherwise counts as unknown."""

    KINDS: ClassVar[dict[Any, str]] = {
        int: "an integer",
        str: "a string",
        bool: "true or false",
        list: "a list of strings",
        (str, list): "a string or a list of strings",
    }

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data, self.path = data, path
        self.seen: dict[str, set[str]] = {}

    def get(self, section: str, key: str, kind: Any, default: Any) -> Any:
        table = self.data.get(section, {})
        if not isinstance(table, dict):
            raise UsageError(f"bad config {self.path}: [{section}] must be a table")
        self.seen.setdefault(section, set()).add(key)
        if key not in table:
            return default
        value = table[key]
        # bool is an int in Python: `flatten_at = true` must not pass as 1.
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if ok and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            raise UsageError(
                f"bad config {self.path}: [{section}] {key} must be {self.KINDS[kind]}, "
                f"not {value!r}"
            )
        return value

    def check_unknown(self) -> None:
        for section, table in self.data.items():
            if section not in self.seen:
                known = ", ".join(f"[{s}]" for s in sorted(self.seen))
                raise UsageError(
                    f"unknown config section [{section}] in {self.path}",
                    hint=f"known sections: {known}",
                )
            for key in table:
                if key not in self.seen[section]:
                    known = ", ".join(sorted(self.seen[section]))
                    raise UsageError(
                        f"unknown config key [{section}] {key} in {self.path}",
                        hint=f"known keys of [{section}]: {known}",
                    )


def load(path: Path) -> Config:
    if not path.exists():
        return Config()
    import tomllib  # only when there is a file: it costs ~10 ms on every run otherwise

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from exc
    r = _Reader(data, path)
    command = r.get("agent", "command", (str, list), list(DEFAULT_AGENT))
    if isinstance(command, str):
        command = [command]
    cfg = Config(
        agent_command=tuple(command),
        agent_install=r.get("agent", "install", str, DEFAULT_INSTALL),
        passthrough=tuple(r.get("agent", "passthrough", list, []))
        + tuple(r.get("run", "env", list, [])),
        force_env=tuple(r.get("run", "force_env", list, [])),
        mounts=tuple(r.get("run", "mounts", list, [])),
        network=r.get("run", "network", str, "bridge"),
        flatten_at=r.get("run", "flatten_at", int, DEFAULT_FLATTEN_AT),
        protect_git=r.get("run", "protect_git", bool, True),
        source=str(path),
    )
    r.check_unknown()
    if not 2 <= cfg.flatten_at <= 120:
        raise UsageError(f"bad config {path}: [run] flatten_at must be between 2 and 120")
    return cfg
