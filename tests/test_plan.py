"""What a run's container gets, decided by runloop.plan without an engine (pure unit tests)."""

from __future__ import annotations

from pathlib import Path

from pienv.config import Config
from pienv.model import LABEL, RunInfo
from pienv.runloop.plan import (
    Boundary,
    HostFacts,
    Parent,
    RunRequest,
    install_spec,
    plan,
    probe_spec,
)
from pienv.runloop.sandbox import ENV_FILE, WORKSPACE
from pienv.runloop.spec import Mount
from pienv.runloop.workspace import Workspace

WS = Workspace(path=Path("/src/proj"), repo=None)
INFO = RunInfo("s1", "main", "sha256:" + "a" * 64, "h", 1, "0", "t", "/src/proj", (), "")


def host(**kw: object) -> HostFacts:
    args: dict[str, object] = {
        "user": "1000:1000",
        "environ": {"TERM": "xterm", "AWS_SECRET_ACCESS_KEY": "x", "HOME": "/home/u"},
        "env_file": "/store/runs/abc.env",
        "name": "pienv-s1-abc",
        "store_id": "s1",
    }
    args.update(kw)
    return HostFacts(**args)  # type: ignore[arg-type]


def make(req: RunRequest | None = None, config: Config | None = None, **kw: object):  # type: ignore[no-untyped-def]
    config = config or Config()
    parent = kw.pop("parent", Parent(INFO.parent))
    assert isinstance(parent, Parent)
    return plan(
        req or RunRequest(command=("true",)),
        kw.pop("ws", WS),  # type: ignore[arg-type]
        config,
        config.agent,
        parent,
        INFO,
        host(**kw),
        "main",
    )


def test_command_runs_through_the_wrapper_as_the_host_user_in_the_workspace() -> None:
    spec = make(RunRequest(command=("echo", "hi")))
    assert spec.entrypoint[:2] == ("/bin/sh", "-c")
    assert spec.entrypoint[3:] == (ENV_FILE, "echo", "hi")
    assert (spec.user, spec.workdir, spec.image) == ("1000:1000", WORKSPACE, INFO.parent)


def test_no_command_runs_the_agent_and_a_shell_request_a_login_shell() -> None:
    config = Config()
    assert make(RunRequest(), config).entrypoint[4:] == tuple(config.agent.command)
    assert make(RunRequest(shell=True)).entrypoint[4] == "sh"


def test_mounts_are_typed_and_say_why() -> None:
    spec = make()
    by_target = {m.target: m for m in spec.mounts}
    assert by_target[WORKSPACE] == Mount("/src/proj", WORKSPACE, False, "the workspace")
    env = by_target[ENV_FILE]
    assert (env.source, env.read_only, env.directory) == ("/store/runs/abc.env", True, False)
    volumes = [m for m in spec.mounts if m.volume]
    assert volumes and all(m.source.startswith("pienv-s1-") for m in volumes)
    assert all(m.why for m in spec.mounts)


def test_variables_go_to_the_env_file_never_the_allow_list_breakers() -> None:
    spec = make()
    assert spec.env["TERM"] == "xterm" and spec.env["HOME"] == "/home/agent"
    assert "AWS_SECRET_ACCESS_KEY" not in spec.env
    assert spec.env["GIT_CONFIG_VALUE_0"] == "false"  # commit.gpgsign


def test_subdir_and_stdin_and_tty() -> None:
    ws = Workspace(path=Path("/src/proj"), repo=None, subdir="pkg/a")
    spec = make(RunRequest(command=("true",), interactive=True), ws=ws)
    assert spec.env["PIENV_SUBDIR"] == "pkg/a" and spec.tty and spec.stdin
    assert not make().stdin and make(forward_stdin=True).stdin


def test_labels_are_the_run_record_and_move_with_the_image() -> None:
    spec = make()
    assert spec.labels[LABEL + "role"] == "run"
    moved = spec.on_image("sha256:" + "b" * 64)
    assert moved.labels[LABEL + "parents"] == "sha256:" + "b" * 64
    assert moved.image == "sha256:" + "b" * 64 and not moved.prepare


def test_checked_mounts_need_mount_points_the_parent_lacks() -> None:
    git = Mount("/src/proj/.git/hooks", "/workspace/.git/hooks", True, "git: hooks, read-only")
    data = Mount("/data", "/data", True, "[run] mounts '/data:/data:ro'")
    wt = Mount("/src/main/.git", "/src/main/.git", False, "git: the common git dir")
    spec = make(checked=(git, data, wt))
    # Inside the workspace mount: made on the host, not in the image.
    assert [p.path for p in spec.prepare] == ["/data", "/src/main/.git"]
    known = Parent(INFO.parent, frozenset({"/data", "/src/main/.git"}))
    assert make(checked=(git, data, wt), parent=known).prepare == ()


def test_a_later_mount_of_the_same_host_path_wins() -> None:
    again = Mount("/src/proj", "/elsewhere", True, "[run] mounts")
    spec = make(checked=(again,))
    assert [m.target for m in spec.mounts if m.source == "/src/proj"] == ["/elsewhere"]


def test_network_and_no_privilege_fields_come_from_the_config() -> None:
    spec = make(config=Config(network="none"))
    assert spec.network == "none"
    assert spec.limits.cpus is None and spec.ports == ()
    assert {"MKNOD", "SETFCAP"} <= set(spec.cap_drop) and not spec.no_new_privileges
    assert make(config=Config(sudo=False)).no_new_privileges


def test_a_probe_gets_the_box_of_a_run() -> None:
    """bisect's probes and rebase's replays run the agent's images: the run's dropped
    capabilities whatever the network, its git metadata mounts over the workspace, no new
    privileges with sudo = false; no record, no volumes."""
    hooks = Mount("/src/proj/.git/hooks", "/workspace/.git/hooks", True, "git: hooks, read-only")
    labels = {LABEL + "role": "probe"}
    spec = probe_spec("img", ("true",), "/src/proj", {"HOME": "/home/agent"}, Config(),
                      host(checked=(hooks,)), labels)  # fmt: skip
    assert [m.target for m in spec.mounts] == [ENV_FILE, WORKSPACE, "/workspace/.git/hooks"]
    assert not any(m.volume for m in spec.mounts) and spec.info is None
    assert {"MKNOD", "SETFCAP"} <= set(spec.cap_drop) and not spec.no_new_privileges
    assert spec.entrypoint[3:] == (ENV_FILE, "true") and spec.labels == labels
    fenced = host(boundary=Boundary("net", ("10.0.0.2",), {"HTTP_PROXY": "p"}, ("NET_RAW",)))
    spec = probe_spec("img", ("true",), None, {}, Config(sudo=False), fenced, {}, "/x")
    assert [m.target for m in spec.mounts] == [ENV_FILE] and spec.workdir == "/x"
    assert set(spec.cap_drop) == {"MKNOD", "SETFCAP", "NET_RAW"} and spec.no_new_privileges
    assert (spec.network, spec.dns, spec.env) == ("net", ("10.0.0.2",), {"HTTP_PROXY": "p"})


def test_install_step_gets_env_file_and_volumes_not_the_workspace() -> None:
    config = Config()
    spec = make(config=config)
    step = install_spec(spec, config.agent, config, "s1")
    assert WORKSPACE not in {m.target for m in step.mounts}
    assert ENV_FILE in {m.target for m in step.mounts}
    assert step.labels[LABEL + "role"] == "install" and step.name.endswith("-install")
    assert step.entrypoint[-1] == config.agent.install


def test_limits_take_the_command_line_over_run_config_over_the_host_defaults() -> None:
    from pienv.limits import Limits

    defaults = Limits(cpus=3, memory=6 * 2**30, pids=4096)
    config = Config(limits={"cpus": 2, "memory": "1g"})
    spec = make(RunRequest(command=("true",), limits={"memory": "512m"}), config, defaults=defaults)
    assert spec.limits == Limits(cpus=2, memory=512 * 2**20, pids=4096)
    lifted = make(RunRequest(command=("true",), limits={"pids": "0"}), defaults=defaults)
    assert lifted.limits == Limits(cpus=3, memory=6 * 2**30, pids=None)


def test_install_step_gets_the_limits_but_no_ports() -> None:
    config = Config()
    spec = make(RunRequest(command=("true",), limits={"cpus": "1"}, ports=("3000",)), config)
    step = install_spec(spec, config.agent, config, "s1")
    assert step.limits.cpus == 1 and step.ports == ()


def test_ports_publish_on_127_0_0_1_and_a_repeat_is_one() -> None:
    from pienv.engine import bodies

    spec = make(RunRequest(command=("true",), ports=("3000", "8080:80", "3000")))
    assert spec.ports == ((3000, 3000), (8080, 80))
    body = bodies.resources(ports=spec.ports)
    assert body["PortBindings"] == {
        "3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3000"}],
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
    }


def test_gpus_from_the_command_line_or_run_config_become_device_requests() -> None:
    from pienv.engine import bodies

    assert make().gpus == ()
    spec = make(RunRequest(command=("true",), gpus="2"), Config(gpus="all"))
    assert spec.gpus == ({"Driver": "", "Count": 2, "Capabilities": [["gpu"]]},)
    assert make(config=Config(gpus="all")).gpus[0]["Count"] == -1
    assert bodies.resources(gpus=spec.gpus)["DeviceRequests"] == [dict(spec.gpus[0])]


def test_limits_become_the_engines_host_config_fields() -> None:
    from pienv.engine import bodies

    body = bodies.resources(cpus=1.5, memory=2**30, pids=100)
    assert body == {
        "NanoCpus": 1_500_000_000,
        "Memory": 2**30,
        "MemorySwap": 2**30,
        "PidsLimit": 100,
    }
    assert bodies.resources() == {}


def test_a_port_clash_and_a_missing_gpu_driver_are_one_clear_line() -> None:
    from pienv.errors import EngineError
    from pienv.runloop.launch import start_failed

    clash = start_failed(
        EngineError(
            "driver failed programming external connectivity on endpoint x: "
            "Bind for 127.0.0.1:3000 failed: port is already allocated"
        )
    )
    assert "host port 3000" in clash.message and "-p HOST_PORT:PORT" in str(clash.hint)
    gpu = start_failed(EngineError('could not select device driver "" with capabilities: [[gpu]]'))
    assert "cannot pass GPUs" in gpu.message


def test_temp_directories_are_a_tmpfs_for_the_run_and_its_install() -> None:
    config = Config()
    spec = make(config=config)
    assert spec.tmpfs == ("/tmp", "/var/tmp")
    assert install_spec(spec, config.agent, config, "s1").tmpfs == spec.tmpfs


def test_a_run_in_an_egress_slot_gets_its_namespace_files_and_label_and_no_port() -> None:
    """A run with a policy joins its slot's holder (egressnet.py): the slot's resolver, hosts
    and hostname read-only over the holder's shared ones, in the run and in its install, the
    slot label on the container (a killed run's slot is passed over), and no published port
    (nothing could reach it there): one clear refusal instead."""
    import pytest

    from pienv.errors import UsageError
    from pienv.runloop.plan import NETWORK_FILES

    files = tuple(
        Mount(f"/store/egress-slots/0.{t.rsplit('/', 1)[1]}", t, True, "slot", directory=False)
        for t in NETWORK_FILES
    )
    slot = {LABEL + "egress-slot": "pienv-egress-s1.0"}
    fenced = Boundary("container:h0", (), {"HTTP_PROXY": "p"}, ("NET_RAW",), slot, files)
    config = Config()
    spec = make(boundary=fenced)
    assert (spec.network, spec.dns) == ("container:h0", ())
    assert {m.target: m.read_only for m in spec.mounts if m in files} == dict.fromkeys(
        NETWORK_FILES, True
    )
    assert spec.labels[LABEL + "egress-slot"] == "pienv-egress-s1.0"
    step = install_spec(spec, config.agent, config, "s1")
    assert set(NETWORK_FILES) <= {m.target for m in step.mounts}
    assert step.network == "container:h0"
    probe = probe_spec("img", ("true",), None, {}, config, host(boundary=fenced), {})
    assert set(NETWORK_FILES) <= {m.target for m in probe.mounts}
    assert probe.labels[LABEL + "egress-slot"] == "pienv-egress-s1.0"
    with pytest.raises(UsageError, match="--port needs an open network"):
        make(RunRequest(command=("true",), ports=("3000",)), boundary=fenced)


def test_a_commit_never_carries_the_slot_of_the_run_it_was_made_from() -> None:
    """Docker merges a run container's labels into its commit: every commit names the slot
    label empty, so a container of the image is never taken for a run in that slot."""
    from pienv.model import Commit

    commit = Commit(id="sha256:" + "b" * 64, parents=(), branch="main", message="m", created="t")
    labels = commit.labels("s1")
    assert labels[LABEL + "egress-slot"] == ""


def test_a_run_under_a_policy_gets_that_policys_own_state_and_caches() -> None:
    """Volumes shared with runs that reach more would be a way around an allow-list (a unix
    socket an open run serves in ~/.npm): a run under a policy mounts volumes of its own
    policy, in the run and its install; an open run the store's."""
    config = Config()
    open_run = {m.target: m.source for m in make().mounts if m.volume}
    fenced = Boundary("container:h0", volume_scope="c51dd4f1ef97")
    spec = make(boundary=fenced)
    scoped = {m.target: m.source for m in spec.mounts if m.volume}
    assert scoped.keys() == open_run.keys() and "/home/agent/.npm" in scoped
    assert all(scoped[t] == open_run[t] + ".pc51dd4f1ef97" for t in scoped)
    step = install_spec(spec, config.agent, config, "s1")
    assert {m.source for m in step.mounts if m.volume} == set(scoped.values())
