"""Env allow-list, credential deny-list, mounts and branch selection precedence (no engine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pienv import config
from pienv.errors import UsageError
from pienv.ops.workspace import select_branch
from pienv.runloop.sandbox import MountPolicy, validate_mount
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


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MountPolicy:
    home = tmp_path / "home"
    for d in (".ssh", ".aws", ".config/gcloud", "src/p"):
        (home / d).mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    sock_dir = tmp_path / "engine"
    sock_dir.mkdir()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_dir}/docker.sock")
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    os.symlink("/run", tmp_path / "link-to-run")
    return MountPolicy.of(store, tmp_path / "cfg" / "config.toml")


@pytest.mark.parametrize(
    "spec, rule",
    [
        ("/var/run/docker.sock:/s", "socket"),
        ("/run:/x", "socket"),
        ("/var/run:/x", "socket"),
        ("{tmp}/link-to-run:/x", "socket"),
        ("{tmp}/engine:/e", "engine's socket ({tmp}/engine/docker.sock)"),
        ("~/.ssh:/k", "credentials"),
        ("~/.aws/credentials:/a", "credentials"),
        ("~/.config:/c", "credentials"),
        ("~:/h", "home directory or an ancestor"),
        ("{tmp}/home/src/p/../../..:/h", "home directory or an ancestor"),
        ("{tmp}:/h", "home directory or an ancestor"),
        ("/:/r", "/ is never mounted"),
        ("/proc:/p", "system tree (/proc)"),
        ("/proc/self:/p", "system tree (/proc)"),
        ("/sys:/p", "system tree (/sys)"),
        ("/dev:/p", "system tree (/dev)"),
        ("/etc:/e", "system tree (/etc)"),
        ("{tmp}/store/runs/..:/s", "pienv store"),
        ("{tmp}/cfg:/c", "does not exist"),
        ("{tmp}/missing:/m", "does not exist"),
        ("rel/dir:/r", "relative host path"),
    ],
)
def test_mount_policy_refusals(policy: MountPolicy, tmp_path: Path, spec: str, rule: str) -> None:
    with pytest.raises(UsageError, match="refusing to mount") as exc:
        validate_mount(spec.format(tmp=tmp_path), policy)
    assert rule.format(tmp=tmp_path) in exc.value.message


def test_mount_policy_store_config_and_boot(policy: MountPolicy, tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.toml").write_text("")
    with pytest.raises(UsageError, match="pienv config file"):
        policy.check(tmp_path / "cfg", "x")
    assert policy.broken_rule(Path("/boot/x")) == "it is in a system tree (/boot)"
    assert policy.broken_rule(policy.store.parent / "other") == ""


def test_plain_mount_ok(policy: MountPolicy, tmp_path: Path) -> None:
    data = tmp_path / "home" / "src" / "p"
    ro = validate_mount(f"{data}:/data:ro", policy)
    assert (ro.source, ro.target, ro.mode) == (str(data), "/data", "ro")
    rw = validate_mount("~/src/p:/p", policy)
    assert (rw.source, rw.target, rw.mode) == (str(data), "/p", "rw")
    with pytest.raises(UsageError, match="container path must be absolute"):
        validate_mount(f"{data}:data", policy)


def test_lc_star_narrowed_to_glibc_locale_names() -> None:
    env = config.Config().container_env({"LC_TIME": "C", "LC_SECRET": "s", "LC_ALL": "C"})
    assert env == {"LC_TIME": "C", "LC_ALL": "C"}


def test_dropped_env_names_each_denied_request() -> None:
    cfg = config.Config(passthrough=("AWS_*",))
    assert cfg.dropped_env(HOST, ("GITHUB_TOKEN", "RANDOM_VAR")) == [
        "AWS_SECRET_ACCESS_KEY (credential)",
        "GITHUB_TOKEN (credential)",
    ]
    assert config.Config().dropped_env(HOST) == []


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
    assert select_branch(detached, None, {}, Path("/x")) == (None, "detached HEAD")


def test_run_token_from_run_and_install_container_names() -> None:
    from pienv.runloop.sandbox import run_name, run_token

    name = run_name("4a62d409a0de", "0123456789ab")
    assert run_token(name) == run_token("/" + name) == "0123456789ab"
    assert run_token(name + "-install") == "0123456789ab"
    assert run_token("pienv-4a62d4-install") == run_token("other") == ""


def test_default_agent_gets_its_preset_keys_set_on_the_host_with_no_config() -> None:
    env = config.Config().container_env(HOST)
    assert env == {"TERM": "xterm", "LANG": "C", "LC_ALL": "C", "ANTHROPIC_API_KEY": "k"}


def test_agent_list_says_exactly_what_a_plain_run_passes(tmp_path: Path) -> None:
    from pienv.ops.agent import list_agents

    path = tmp_path / "config.toml"
    path.write_text('[run]\nenv = ["MY_VAR", "GITHUB_TOKEN"]\n')
    cfg = config.load(path)
    rows = {r.name: r for r in list_agents(cfg)}
    assert rows["pi"].configured
    host = {**HOST, "MY_VAR": "m", "OPENAI_API_KEY": "o"}
    passed = set(cfg.container_env(host)) - set(config.ALLOWED_ENV)
    # The listing names every variable a plain `pienv run` passes beyond the allow-list
    # (when set on the host), and no credential of the deny-list.
    listed = set(rows["pi"].env.split(", "))
    assert passed <= listed and "GITHUB_TOKEN" not in listed
    assert {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "MY_VAR"} <= listed
