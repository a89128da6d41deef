"""What the container gets: the workspace mount, the env file, the wrapper, the mount policy.

The boundary rules of docs/security.md live here: which host variables pass, which host paths
may be mounted, and how run-time variables reach the agent without entering an image.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from pienv.config import Config
from pienv.errors import UsageError

WORKSPACE = "/workspace"
ENV_FILE = "/run/pienv/env"
AGENT_HOME = "/home/agent"
# The container's entry: load the env file (never container Env, which a commit would keep),
# install the agent when it is missing, then become the command.
WRAPPER = (
    'set -a; [ -r "$0" ] && . "$0"; set +a; '
    'if [ -n "$PIENV_INSTALL" ] && ! command -v "$1" >/dev/null 2>&1; then '
    'echo "pienv: installing $1: $PIENV_INSTALL" >&2; sh -c "$PIENV_INSTALL" || exit 127; fi; '
    'unset PIENV_INSTALL; exec "$@"'
)
LOGIN_SHELL = ("sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l")
# Paths never bind-mounted, whatever the config says (rule 4).
HOME_SECRETS = (".ssh", ".gnupg", ".aws", ".config/gcloud", ".kube", ".docker", ".azure")


def validate_mount(spec: str, home: Path) -> tuple[str, str, str]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"bad mount {spec!r} in config: use HOST:CONTAINER[:ro|rw]")
    host = Path(os.path.realpath(os.path.expanduser(parts[0])))
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"bad mount {spec!r} in config: mode must be ro or rw")
    forbidden = [home, *(home / p for p in HOME_SECRETS)]
    if "docker.sock" in host.name or any(host == f or f in host.parents for f in forbidden[1:]):
        raise UsageError(f"refusing to mount {host}: credentials and the Docker socket never are")
    if host == home or host == Path("/"):
        raise UsageError(f"refusing to mount {host}: the home directory and / never are")
    return str(host), parts[1], mode


def container_env(
    config: Config,
    environ: Mapping[str, str],
    env_names: tuple[str, ...],
    branch: str,
    install: bool,
) -> dict[str, str]:
    """The agent's variables: allowed host ones, pienv's own, git's agent identity; plus the
    agent's install command when ``install`` (the configured agent, not a given command)."""
    env = config.container_env(dict(environ), env_names)
    env.update(
        {
            "HOME": AGENT_HOME,
            "USER": "agent",
            "PIENV": "1",
            "PIENV_BRANCH": branch,
            # The agent's identity for git, unsigned commits, no host credential helpers.
            "GIT_AUTHOR_NAME": "pienv agent",
            "GIT_AUTHOR_EMAIL": "agent@pienv.invalid",
            "GIT_COMMITTER_NAME": "pienv agent",
            "GIT_COMMITTER_EMAIL": "agent@pienv.invalid",
            "GIT_CONFIG_COUNT": "4",
            "GIT_CONFIG_KEY_0": "commit.gpgsign",
            "GIT_CONFIG_VALUE_0": "false",
            "GIT_CONFIG_KEY_1": "tag.gpgsign",
            "GIT_CONFIG_VALUE_1": "false",
            "GIT_CONFIG_KEY_2": "safe.directory",
            "GIT_CONFIG_VALUE_2": "*",
            "GIT_CONFIG_KEY_3": "credential.helper",
            "GIT_CONFIG_VALUE_3": "",
        }
    )
    if install and config.agent_install:
        env["PIENV_INSTALL"] = config.agent_install
    return env


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    lines = [
        f"{k}={shlex.quote(v)}\n"
        for k, v in sorted(env.items())
        if re.fullmatch(r"[A-Za-z_]\w*", k)
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(lines)
