"""What the container gets: the workspace mount, the env file, the wrapper, the mount policy.

The boundary rules of docs/security.md live here: which host variables pass, which host paths
may be mounted, and how run-time variables reach the agent without entering an image.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pienv.config import Config
from pienv.errors import UsageError
from pienv.runloop.spec import Mount

WORKSPACE = "/workspace"
ENV_FILE = "/run/pienv/env"
# A run's temp directories are a tmpfs: what agents leave there every session (sockets,
# caches, extracted libraries: opencode's /tmp/.<hash>.so, claude's /tmp/cc-socks) never
# enters an env commit (docs/agents.md).
TMPFS = ("/tmp", "/var/tmp")
AGENT_HOME = "/home/agent"
# The container's entry: load the env file (never container Env, which a commit would keep),
# let `npm install -g` and `pip install --user` land in the home (the host user cannot write
# /usr/local of a stock image; an image's own NPM_CONFIG_PREFIX wins), then become the command.
# The agent's install is not here: it is its own committed step (runloop/install.py).
WRAPPER = (
    'set -a; [ -r "$0" ] && . "$0"; set +a; '
    # Start where the user started (repo/sub -> /workspace/sub). Not the container's WorkingDir:
    # Docker would create that path in the writable layer and every such run would commit.
    '[ -z "${PIENV_SUBDIR:-}" ] || cd "$PIENV_SUBDIR" || exit 126; unset PIENV_SUBDIR; '
    # npm reads its global config from PREFIX/etc/npmrc: keep the image's (registry, proxy).
    'if [ -z "${NPM_CONFIG_PREFIX:-}" ]; then n=$(command -v node 2>/dev/null) && '
    '[ -f "${n%/bin/node}/etc/npmrc" ] && '
    'export NPM_CONFIG_GLOBALCONFIG="${n%/bin/node}/etc/npmrc"; '
    'export NPM_CONFIG_PREFIX="$HOME/.local"; fi; '
    'PATH="$NPM_CONFIG_PREFIX/bin:$HOME/.local/bin:$PATH"; '
    # Say which command is missing and what to do, instead of the shell's `exec: line 0`.
    'command -v "$1" >/dev/null 2>&1 || { echo "pienv: $1: command not found in this '
    "environment; install it (pienv shell), set [agent] install in the config, or use "
    'a base image that has it (PIENV_BASE_IMAGE, pienv base build DIR)" >&2; exit 127; }; '
    'exec "$@"'
)
# `pienv shell`: a login shell (bash if the image has it) with the run wrapper's PATH order
# kept: /etc/profile resets PATH (Debian: /usr/local/bin first), which made `npm` in the
# shell another npm than the one `pienv run` and `diff --packages` resolve (~/.local/bin).
# The rc file goes to /tmp, a tmpfs (never committed); sh reads it as $ENV after its profile.
_PATH_BACK = (
    'q="$PATH"; PATH="$PIENV_PATH"; IFS=:; for d in $q; do case ":$PATH:" in *":$d:"*) ;; '
    '*) PATH="$PATH:$d";; esac; done; unset IFS PIENV_PATH q d'
)
_BASH_LOGIN = (
    "[ -r /etc/profile ] && . /etc/profile; "
    'for f in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do '
    'if [ -r "$f" ]; then . "$f"; break; fi; done; unset f; ' + _PATH_BACK
)
LOGIN_SHELL = (
    "sh",
    "-c",
    'export PIENV_PATH="$PATH"; r="/tmp/.pienv-login-$$"; '
    "if command -v bash >/dev/null 2>&1; then "
    f"printf '%s\\n' '{_BASH_LOGIN}' >\"$r\" && exec bash --rcfile \"$r\" -i; fi; "
    f"printf '%s\\n' '{_PATH_BACK}' >\"$r\"; export ENV=\"$r\"; exec sh -l",
)
# Paths never bind-mounted, whatever the config says (rule 4): credentials under a home...
HOME_SECRETS = (".ssh", ".gnupg", ".aws", ".config/gcloud", ".kube", ".docker", ".azure")
# ...and the host's system trees (kernel interfaces, devices, its configuration, its sockets).
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/etc", "/boot", "/var/run", "/run")
# Where engines keep their sockets when DOCKER_HOST does not say (rootful Docker, Podman).
DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, top: Path) -> bool:
    """``path`` is ``top`` or lies under it (by string: Path.parents is slow, and this runs a
    hundred times per run)."""
    p, t = str(path), str(top)
    return p == t or p.startswith(t if t.endswith("/") else t + "/")


@dataclass(frozen=True)
class MountPolicy:
    """The one mount policy (rule 4) for the workspace, `[run] mounts` and git metadata.

    Applied to real paths: symlinks and `..` are resolved before any rule, so a link to
    /run or a `$HOME/..` is judged by what it exposes, not by how it is spelled.
    """

    homes: tuple[Path, ...]
    store: Path
    config: Path
    sockets: tuple[Path, ...]
    trees: tuple[Path, ...] = ()  # SYSTEM_TREES as written and as resolved

    @classmethod
    def of(cls, store: Path, config: Path, engine_url: str = "") -> MountPolicy:
        homes = {_real(os.path.expanduser("~"))}
        with contextlib.suppress(KeyError, ImportError):
            import pwd

            homes.add(_real(pwd.getpwuid(os.getuid()).pw_dir))
        sockets = list(DEFAULT_SOCKETS)
        for url in (engine_url, os.environ.get("DOCKER_HOST", "")):
            if url.startswith("unix://"):
                sockets.append(url[len("unix://") :])
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:  # rootless Docker and Podman
            sockets += [f"{runtime}/docker.sock", f"{runtime}/podman/podman.sock"]
        trees = [t for tree in SYSTEM_TREES for t in (Path(tree), _real(tree))]
        return cls(
            trees=tuple(dict.fromkeys(trees)),
            homes=tuple(sorted(homes)),
            store=_real(store),
            config=_real(config),
            sockets=tuple(dict.fromkeys(_real(s) for s in sockets)),
        )

    def check(self, raw: str | Path, what: str) -> Path:
        """The real host path behind ``raw``, or UsageError naming the rule it breaks."""
        text = os.path.expanduser(str(raw))
        if not os.path.isabs(text):
            raise UsageError(
                f"refusing to mount {raw} ({what}): a relative host path",
                hint="write the host path absolute",
            )
        if not os.path.exists(text):  # a dangling symlink too
            raise UsageError(
                f"refusing to mount {raw} ({what}): it does not exist "
                "(Docker would create it on the host, owned by root)"
            )
        path = _real(text)
        shown = str(raw) if str(path) == text else f"{raw} (= {path})"
        rule = self.broken_rule(path)
        if rule:
            raise UsageError(f"refusing to mount {shown} ({what}): {rule}")
        return path

    def broken_rule(self, path: Path) -> str:
        """Which rule a real path breaks ("" when none)."""
        if path == Path("/"):
            return "/ is never mounted"
        for home in self.homes:
            if _within(home, path):
                return "it is your home directory or an ancestor of it"
            for secret in HOME_SECRETS:
                s = home / secret
                if _within(path, s) or _within(s, path):
                    return f"it is or holds credentials ({s})"
        for sock in self.sockets:
            if _within(sock, path):
                return f"it is or holds the engine's socket ({sock})"
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode) or "docker.sock" in path.name:
                return "it is a socket"
        for t in self.trees:
            if _within(path, t):
                return f"it is in a system tree ({t})"
        if _within(path, self.store) or _within(self.store, path):
            return f"it is, holds or is inside the pienv store ({self.store})"
        if _within(self.config, path):
            return f"it is or holds the pienv config file ({self.config})"
        return ""


def validate_mount(spec: str, policy: MountPolicy) -> Mount:
    """A `[run] mounts` entry HOST:CONTAINER[:ro|rw] -> its mount of the real host path."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"bad mount {spec!r} in config: use HOST:CONTAINER[:ro|rw]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"bad mount {spec!r} in config: mode must be ro or rw")
    if not parts[1].startswith("/"):
        raise UsageError(f"bad mount {spec!r} in config: the container path must be absolute")
    host = policy.check(parts[0], f"mount {spec!r} in config")
    why = f"[run] mounts {spec!r}"
    return Mount(str(host), parts[1], mode == "ro", why, directory=host.is_dir())


def container_env(
    config: Config,
    environ: Mapping[str, str],
    env_names: tuple[str, ...],
    branch: str | None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The agent's variables: allowed host ones, pienv's own, git's agent identity, and
    ``extra`` (pienv's settings for the agent, e.g. where its state dir is)."""
    env = config.container_env(dict(environ), env_names)
    env.update(
        {
            "HOME": AGENT_HOME,
            "USER": "agent",
            "PIENV": "1",
            "PIENV_BRANCH": branch or "",  # "" on a detached HEAD
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
    env.update(extra or {})
    return env


def run_name(store_id: str, token: str) -> str:
    """A run container's name; its last part names the run's env file."""
    return f"pienv-{store_id[:6]}-{token}"


def env_file(runs_dir: Path, token: str) -> Path:
    return runs_dir / f"{token}.env"


def run_token(container_name: str) -> str:
    """The run token in a container name of `run_name`'s form (also with a suffix such as
    ``-install``); "" for other names."""
    found = re.match(r"/?pienv-[^-/]+-([0-9a-f]{12})(?:-|$)", container_name)
    return found.group(1) if found else ""


def remove_env_file(runs_dir: Path, container_name: str) -> None:
    """Remove the env file of the run container ``container_name`` (it may hold API keys):
    every path that ends a run calls this, whoever ends it."""
    token = run_token(container_name)
    if token:
        with contextlib.suppress(OSError):
            env_file(runs_dir, token).unlink()


def env_text(env: Mapping[str, str]) -> str:
    """The env file's content: one shell assignment per line (the wrapper sources it)."""
    return "".join(
        f"{k}={shlex.quote(v)}\n"
        for k, v in sorted(env.items())
        if re.fullmatch(r"[A-Za-z_]\w*", k)
    )


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(env_text(env))
