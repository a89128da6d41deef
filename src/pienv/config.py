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
from typing import Any

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


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def load(path: Path) -> Config:
    if not path.exists():
        return Config()
    import tomllib  # only when there is a file: it costs ~10 ms on every run otherwise

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from exc
    agent = data.get("agent", {})
    run = data.get("run", {})
    try:
        command = agent.get("command", list(DEFAULT_AGENT))
        if isinstance(command, str):
            command = [command]
        cfg = Config(
            agent_command=tuple(str(c) for c in command),
            agent_install=str(agent.get("install", DEFAULT_INSTALL)),
            passthrough=tuple(agent.get("passthrough", ())) + tuple(run.get("env", ())),
            force_env=tuple(run.get("force_env", ())),
            mounts=tuple(run.get("mounts", ())),
            network=str(run.get("network", "bridge")),
            flatten_at=int(run.get("flatten_at", DEFAULT_FLATTEN_AT)),
            protect_git=_bool(run.get("protect_git", True), "protect_git"),
            source=str(path),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad config {path}: {exc}") from exc
    if not 2 <= cfg.flatten_at <= 120:
        raise UsageError(f"bad config {path}: flatten_at must be between 2 and 120")
    return cfg
