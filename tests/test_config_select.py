"""Env allow-list, credential deny-list, mounts and branch selection precedence (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pienv import config
from pienv.errors import UsageError
from pienv.ops.sandbox import validate_mount
from pienv.ops.workspace import select_branch
from pienv.store import Refs

HOST = {
    "TERM": "xterm",
    "LANG": "C",
    "LC_ALL": "C",
    "HOME": "/root",
    "GITHUB_TOKEN": "s",
    "AWS_SECRET_ACCESS_KEY": "s",
    "SSH_AUTH_SOCK": "/s",
    "ANTHROPIC_API_KEY": "k",
    "RANDOM_VAR": "x",
    "DOCKER_HOST": "unix:///x",
}


def test_default_env_is_allow_list_only() -> None:
    assert config.Config().container_env(HOST) == {"TERM": "xterm", "LANG": "C", "LC_ALL": "C"}


def test_configured_passthrough_but_never_credentials(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agent]\npassthrough = ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "AWS_*"]\n')
    env = config.load(path).container_env(HOST)
    assert env["ANTHROPIC_API_KEY"] == "k"
    assert "GITHUB_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env


def test_force_env_passes_a_named_credential(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[run]\nenv = ["GITHUB_TOKEN"]\nforce_env = ["GITHUB_TOKEN"]\n')
    assert config.load(path).container_env(HOST)["GITHUB_TOKEN"] == "s"


def test_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[run\n")
    with pytest.raises(UsageError, match="cannot read config"):
        config.load(path)


@pytest.mark.parametrize(
    "spec",
    [
        "/var/run/docker.sock:/s",
        "~/.ssh:/k",
        "~/.gnupg:/g",
        "~/.aws/credentials:/a",
        "~:/h",
        "/:/r",
    ],
)
def test_secret_mounts_refused(spec: str) -> None:
    with pytest.raises(UsageError, match="refusing to mount"):
        validate_mount(spec, Path.home())


def test_plain_mount_ok(tmp_path: Path) -> None:
    assert validate_mount(f"{tmp_path}:/data:ro", Path.home()) == (str(tmp_path), "/data", "ro")


def refs() -> Refs:
    return Refs(
        store_id="x",
        head_branch="main",
        branches={"main": "a", "wt": "b"},
        worktrees={"/w/wt": "wt"},
    )


def test_branch_precedence() -> None:
    ws = Path("/w/wt")
    assert select_branch(refs(), "cli", {"PIENV_PROFILE": "prof"}, ws) == ("cli", "--branch")
    assert select_branch(refs(), None, {"PIENV_PROFILE": "prof"}, ws) == ("prof", "PIENV_PROFILE")
    assert select_branch(refs(), None, {}, ws)[0] == "wt"
    assert select_branch(refs(), None, {}, Path("/elsewhere")) == ("main", "HEAD")
    detached = Refs(store_id="x", head_branch=None, head_detached="a")
    assert select_branch(detached, None, {}, Path("/x")) == ("", "detached HEAD")
