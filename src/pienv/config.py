"""User configuration (TOML), read only from the user's own config file, never the workspace
(rule 9 in docs/rules.md: what widens the sandbox never comes from a file the container writes).

``$PIENV_CONFIG`` or ``$PIENV_HOME/config.toml``::

    [agent]
    preset = "pi"                        # pi | claude | codex | gemini | opencode | aider
    version = "1.5.2"                    # the preset's pinned version (changes its install)
    command = ["pi"]                     # what `pienv run` starts without `-- CMD`
    install = "npm install -g ..."       # its own committed step, once per install command
    state = [".pi/agent"]                # dirs under the home kept in per-store volumes
    passthrough = ["ANTHROPIC_API_KEY"]  # host variables handed to the agent
    inject_keys = false                  # provider keys stay with the egress proxy (network.md)

    [run]
    env = ["MY_SETTING"]                 # more host variables to pass
    force_env = []                       # credential variables passed despite the deny-list
    mounts = ["/data/cache:/cache:ro"]   # extra bind mounts HOST:CONTAINER[:ro|rw]
    network = "bridge"                   # docker network mode
    flatten_at = 100                     # flatten a head at this layer depth
    protect_git = true                   # .git/hooks, .git/config read-only in the container
    sudo = true                          # false: no new privileges (sudo/setuid give no root)
    caches = true                        # apt/npm/pip caches in volumes shared by the store
    commit = "background"                # or "foreground": commit before `pienv run` returns
    cpus = 2                             # cores a run may use (default: all but one; 0: no limit)
    memory = "4g"                        # memory (default: 3/4 of the host's; 0: no limit)
    pids = 4096                          # processes (default 4096; 0: no limit)
    gpus = "all"                         # GPUs passed through: "all" or a number (default: none)
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pienv.errors import UsageError

DEFAULT_PRESET = "pi"


@dataclass(frozen=True)
class Preset:
    """A known agent: how to start it, its pinned install, what it needs, where it keeps state."""

    name: str
    command: tuple[str, ...]
    manager: str  # npm | pip
    package: str
    version: str  # the pin: installs are reproducible, upgrades deliberate
    env: tuple[str, ...] = ()  # host variables it reads (passed when set; never committed)
    state: tuple[str, ...] = ()  # dirs under the home holding its login and settings
    state_env: tuple[tuple[str, str], ...] = ()  # variables that point it at its state dir
    npm_flags: str = ""

    def install_for(self, version: str) -> str:
        if self.manager == "pip":
            return (
                f"python3 -m pip install --user --break-system-packages {self.package}=={version}"
            )
        flags = f" {self.npm_flags}" if self.npm_flags else ""
        return f"npm install -g{flags} {self.package}@{version}"


# Pinned to versions this registry serves (Pi 1.6.0's dependency pi-agent-core@1.6.0 is
# missing here; 1.5.2 installs and starts). `[agent] version` moves a pin.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "pi",
            ("pi",),
            "npm",
            "@earendil-works/pi-coding-agent",
            "1.5.2",
            env=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY"),
            state=(".pi/agent",),
            npm_flags="--ignore-scripts",
        ),
        Preset(
            "claude",
            ("claude",),
            "npm",
            "@anthropic-ai/claude-code",
            "2.1.332",
            env=("ANTHROPIC_API_KEY",),
            # CLAUDE_CONFIG_DIR moves ~/.claude.json into ~/.claude too: one directory to keep.
            state=(".claude",),
            state_env=(("CLAUDE_CONFIG_DIR", ".claude"),),
        ),
        Preset(
            "codex",
            ("codex",),
            "npm",
            "@openai/codex",
            "0.171.0",
            env=("OPENAI_API_KEY",),
            state=(".codex",),
        ),
        Preset(
            "gemini",
            ("gemini",),
            "npm",
            "@google/gemini-cli",
            "0.61.0",
            env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
            state=(".gemini",),
        ),
        Preset(
            "opencode",
            ("opencode",),
            "npm",
            "opencode-ai",
            "1.18.33",
            env=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY"),
            # ~/.local/state/opencode: its prompt history, model choice and a locks dir it
            # touches every session (a "metadata only" commit each time if it were committed).
            state=(".local/share/opencode", ".config/opencode", ".local/state/opencode"),
        ),
        Preset(
            "aider",
            ("aider",),
            "pip",
            "aider-chat",
            "0.86.2",
            env=("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY"),
            state=(".aider",),
        ),
    )
}
# Every preset's state dirs: the prepared root makes them (owned by the host user) so that a
# per-store volume mounted there starts with that owner (a new volume copies the image dir).
ALL_STATE_DIRS = tuple(dict.fromkeys(d for p in PRESETS.values() for d in p.state))
# Package caches shared by every branch of a store, as volumes: (name, container path);
# "~" is the agent's home.
CACHES = (
    ("apt", "/var/cache/apt"),
    ("apt-lists", "/var/lib/apt/lists"),
    ("npm", "~/.npm"),
    ("pip", "~/.cache/pip"),
    # Node's compile cache (Pi enables it): in /tmp by default, i.e. in every run's commit.
    ("node-compile", "~/.cache/node-compile"),
)
# Variables that point tools at a cache above (set only when caches are on).
CACHE_ENV = (("NODE_COMPILE_CACHE", "~/.cache/node-compile"),)


@dataclass(frozen=True)
class Agent:
    """The agent `pienv run` starts without a command: a preset, or the user's own."""

    name: str
    command: tuple[str, ...]
    install: str
    version: str = ""
    env: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    state_env: tuple[tuple[str, str], ...] = ()
    preset: str = ""  # "" for a custom agent

    @property
    def label(self) -> str:
        """How its install commit is named: "install pi 1.5.2"."""
        return f"{self.name} {self.version}".strip()


def resolve_agent(
    name: str | None,
    version: str | None = None,
    command: tuple[str, ...] | None = None,
    install: str | None = None,
    state: tuple[str, ...] | None = None,
) -> Agent:
    """The agent of a preset name (None: the default, Pi), with the user's overrides."""
    if name is None and command is not None:
        # A custom command with no preset: its own install (or none), no preset state.
        return Agent(
            name=command[0] if command else "agent",
            command=command,
            install=install or "",
            state=state or (),
        )
    key = name or DEFAULT_PRESET
    preset = PRESETS.get(key)
    if preset is None:
        raise UsageError(
            f"unknown agent preset {key!r}",
            hint=f"one of {', '.join(PRESETS)} (`pienv agent list`)",
        )
    ver = version or preset.version
    return Agent(
        name=preset.name,
        command=command or preset.command,
        install=install if install is not None else preset.install_for(ver),
        version=ver if install is None else "",
        # Its provider keys pass whenever they are set on the host, the default agent's too:
        # an agent without its key starts with "No models available". Credentials of the
        # deny-list never pass (container_env), and no key is ever written into an image.
        env=preset.env,
        state=state if state is not None else preset.state,
        state_env=preset.state_env,
        preset=preset.name,
    )


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
COMMIT_MODES = ("background", "foreground")


def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Config:
    passthrough: tuple[str, ...] = ()
    force_env: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    network: str = "bridge"
    flatten_at: int = DEFAULT_FLATTEN_AT
    protect_git: bool = True
    sudo: bool = True  # false: the run gets no new privileges (sudo, setuid files give nothing)
    caches: bool = True
    commit: str = "background"  # COMMIT_MODES; sessions (`shell`, the agent) always foreground
    # The agent gets placeholders for its providers' keys; pienv's egress proxy adds the real
    # ones on requests to the provider's host only (docs/network.md).
    inject_keys: bool = False
    # `[run] cpus/memory/pids` as written (limits.resolve reads them under the command line's)
    limits: dict[str, Any] = field(default_factory=dict)
    gpus: str | None = None
    agent: Agent = field(default_factory=lambda: resolve_agent(None))
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def agent_named(self, name: str | None) -> Agent:
        """The configured agent, or the preset ``name`` (`pienv run --agent NAME`)."""
        if name is None or name == self.agent.preset:
            return self.agent
        return resolve_agent(name)

    def container_env(
        self, environ: dict[str, str] | os._Environ[str], extra_names: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """The host variables the container gets: allow-list + configured, minus credentials."""
        wanted = [*ALLOWED_ENV, *self.agent.env, *self.passthrough, *extra_names]
        out = {}
        for name, value in environ.items():
            if not matches(name, wanted):
                continue
            if matches(name, DENIED_ENV) and name not in self.force_env:
                continue
            out[name] = value
        return out

    def passed_names(self, agent: Agent) -> list[str]:
        """The names beyond the allow-list that a run of ``agent`` passes when set on the host
        (`pienv agent list` shows them): its keys and the configured variables, minus the
        deny-list's credentials unless forced. Patterns (``AWS_*``) stay patterns."""
        out: list[str] = []
        for name in (*agent.env, *self.passthrough):
            denied = matches(name, DENIED_ENV) and name not in self.force_env
            if not denied and name not in out and name not in ALLOWED_ENV:
                out.append(name)
        return out

    def dropped_env(
        self, environ: dict[str, str] | os._Environ[str], extra_names: tuple[str, ...] = ()
    ) -> list[str]:
        """Host variables that were asked for (allow-list, configuration, ``-e``) but are not
        passed, as "NAME (why)", so a dropped credential is never silent."""
        wanted = [*ALLOWED_ENV, *self.agent.env, *self.passthrough, *extra_names]
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
        (int, float, str): "a number or a string",
        (int, str): "a number or a string",
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
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
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
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {str(exc)[:200]}") from exc
    r = _Reader(data, path)
    command = r.get("agent", "command", (str, list), None)
    if isinstance(command, str):
        command = [command]
    state = r.get("agent", "state", list, None)
    resolved = resolve_agent(
        r.get("agent", "preset", str, None),
        r.get("agent", "version", str, None),
        tuple(command) if command is not None else None,
        r.get("agent", "install", str, None),
        tuple(d.strip("/") for d in state) if state is not None else None,
    )
    cfg = Config(
        agent=resolved,
        caches=r.get("run", "caches", bool, True),
        passthrough=tuple(r.get("agent", "passthrough", list, []))
        + tuple(r.get("run", "env", list, [])),
        force_env=tuple(r.get("run", "force_env", list, [])),
        mounts=tuple(r.get("run", "mounts", list, [])),
        network=r.get("run", "network", str, "bridge"),
        flatten_at=r.get("run", "flatten_at", int, DEFAULT_FLATTEN_AT),
        protect_git=r.get("run", "protect_git", bool, True),
        sudo=r.get("run", "sudo", bool, True),
        commit=r.get("run", "commit", str, "background"),
        inject_keys=r.get("agent", "inject_keys", bool, False),
        limits={
            key: value
            for key in ("cpus", "memory", "pids")
            if (value := r.get("run", key, (int, float, str), None)) is not None
        },
        gpus=_gpus(r.get("run", "gpus", (int, str), None)),
        source=str(path),
    )
    r.check_unknown()
    _check_limits(cfg, path)
    if not 2 <= cfg.flatten_at <= 120:
        raise UsageError(f"bad config {path}: [run] flatten_at must be between 2 and 120")
    if cfg.commit not in COMMIT_MODES:
        raise UsageError(
            f'bad config {path}: [run] commit must be "background" or "foreground", '
            f"not {cfg.commit!r}"
        )
    return cfg


def _gpus(value: int | str | None) -> str | None:
    return None if value is None or str(value).strip().lower() in ("0", "none") else str(value)


def _check_limits(cfg: Config, path: Path) -> None:
    """A bad `[run]` limit is named with its file when the config is read, not at a run."""
    from pienv import limits

    try:
        limits.resolve(limits.Limits(), cfg.limits, {})
        if cfg.gpus is not None:
            limits.gpu_request(cfg.gpus)
    except UsageError as exc:
        raise UsageError(f"bad config {path}: [run] {exc.message.removeprefix('bad ')}") from exc
