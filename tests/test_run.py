"""`pienv run` against the real engine: the commit model and rules 3–8 (docs/rules.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest
from conftest import Pienv, git, make_repo

pytestmark = pytest.mark.engine


def store_images(p: Pienv) -> list[dict]:  # type: ignore[type-arg]
    sid = p.refs()["store_id"]
    return docker.from_env().api.images(filters={"label": f"dev.pienv.store={sid}"})


def inspect(cid: str) -> dict:  # type: ignore[type-arg]
    return docker.from_env().api.inspect_image(cid)


def test_first_run_creates_root_and_commit_on_main(pienv: Pienv) -> None:
    r = pienv("run", "--", "sh", "-c", "echo hello; touch /installed")
    assert r.out == "hello\n"
    assert "created root commit" in r.err and "committed" in r.err
    refs = pienv.refs()
    head = refs["branches"]["main"]
    labels = inspect(head)["Config"]["Labels"]
    assert labels["dev.pienv.store"] == refs["store_id"]
    assert labels["dev.pienv.schema"] == "1"
    assert labels["dev.pienv.exit-code"] == "0"
    # Not counted at commit time: "changed" is decided by the commit's layers.
    assert labels["dev.pienv.changes"] == ""
    assert labels["dev.pienv.workspace"] == str(pienv.repo)
    assert (
        labels["dev.pienv.git-head"]
        == subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=pienv.repo, capture_output=True, text=True
        ).stdout.strip()
    )
    root = labels["dev.pienv.parents"]
    assert inspect(root)["Config"]["Labels"]["dev.pienv.kind"] == "root"
    assert labels["org.example.base"] == "busybox"  # the base's own labels are kept
    log = pienv("log").out.splitlines()
    assert log[0].startswith(f"{head[:12]} (HEAD -> main) run: sh -c echo hello; touch /installed")
    assert log[1].startswith(f"{root[:12]} root: base ")
    # The state persists into the next run.
    assert pienv("run", "--", "ls", "/installed").out == "/installed\n"


def test_exit_code_passes_through(pienv: Pienv) -> None:
    assert pienv("run", "--", "sh", "-c", "exit 7", check=False).code == 7


def test_nothing_changed_adds_no_image(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/x")
    images, head = len(store_images(pienv)), pienv.head()
    r = pienv("run", "--", "sh", "-c", "cat /workspace/README >/dev/null; ls /")
    assert "nothing changed" in r.err
    assert len(store_images(pienv)) == images and pienv.head() == head
    assert len(pienv("log").out.splitlines()) == 2


def test_temp_files_of_a_session_make_no_commit(pienv: Pienv) -> None:
    """/tmp and /var/tmp are a tmpfs (docs/agents.md): an agent's per-session sockets and
    extracted libraries there never become a commit; and the first run needed no mount
    point commit for them (the root holds them)."""
    r = pienv(
        "run",
        "--",
        "sh",
        "-c",
        "echo x >/tmp/.abc.so; mkdir /tmp/cc-socks; echo y >/var/tmp/lock; "
        "stat -c %a /tmp /var/tmp",
    )
    assert r.out.split() == ["1777", "1777"]
    assert "nothing changed" in r.err, r.err
    assert "prepare" not in pienv("log", "--all-kinds", check=False).out
    assert len(pienv("log").out.splitlines()) == 1


def test_no_commit_discards(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    head = pienv.head()
    pienv("run", "--no-commit", "--", "touch", "/tmpfile")
    assert pienv.head() == head


def test_secrets_never_reach_images_and_run_labels_do_not_leak(pienv: Pienv) -> None:
    (pienv.home / "config.toml").parent.mkdir(parents=True, exist_ok=True)
    (pienv.home / "config.toml").write_text('[agent]\npassthrough = ["ANTHROPIC_API_KEY"]\n')
    env = {
        "ANTHROPIC_API_KEY": "sk-planted-1",
        "GITHUB_TOKEN": "ghp_planted_2",
        "AWS_SECRET_ACCESS_KEY": "aws-planted-3",
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
    }
    r = pienv("run", "--", "sh", "-c", "env > /env.txt; cat /env.txt", env=env)
    assert "ANTHROPIC_API_KEY=sk-planted-1" in r.out  # configured passthrough reaches the agent
    for planted in ("ghp_planted_2", "aws-planted-3", "agent.sock"):
        assert planted not in r.out
    first = pienv.head()
    pienv("run", "--", "touch", "/second", env=env)
    second = pienv.head()
    for cid in (first, second):
        cfg = inspect(cid)["Config"]
        text = json.dumps(cfg)
        assert "planted" not in text and "sk-planted" not in text
        assert cfg["Env"] == ["PATH=/usr/local/bin:/usr/bin:/bin"]
        assert cfg["Entrypoint"] in (None, [])  # the run wrapper is not baked in
        assert cfg["Cmd"] == ["sh"]
    labels = inspect(second)["Config"]["Labels"]
    first_labels = inspect(first)["Config"]["Labels"]
    # Each commit carries its own run's provenance, not its parent run's.
    assert labels["dev.pienv.parents"] == first
    assert labels["dev.pienv.run-started"] != first_labels["dev.pienv.run-started"]
    assert labels["dev.pienv.role"] == "commit"
    assert labels["dev.pienv.command"] == '["touch", "/second"]'
    # The env file holding passed variables is gone after the run.
    assert list((pienv.home / "runs").iterdir()) == []


def test_container_gets_no_socket_home_or_agents(pienv: Pienv, tmp_path: Path) -> None:
    script = (
        "test -e /var/run/docker.sock && echo SOCKET; "
        "grep -E ' (/workspace|/run/pienv/env) ' /proc/mounts | cut -d' ' -f2; "
        "grep -c -E '/root|\\.ssh|\\.gnupg' /proc/mounts; "
        "grep CapEff /proc/self/status; pwd; id -u"
    )
    out = pienv("run", "--", "sh", "-c", script, check=False).out.splitlines()
    assert "SOCKET" not in out
    assert out[0:2] == ["/workspace", "/run/pienv/env"]
    assert out[2] == "0"
    assert out[3] != "CapEff:\t000001ffffffffff"  # not privileged
    assert out[4] == "/workspace"
    assert out[5] == str(os.getuid())


def test_workspace_is_repo_root_from_subdir_and_cwd_outside(pienv: Pienv, tmp_path: Path) -> None:
    sub = pienv.repo / "a" / "b"
    sub.mkdir(parents=True)
    assert pienv("run", "--", "cat", "/workspace/README", cwd=sub).out == "hello\n"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "f").write_text("x")
    assert pienv("run", "--", "ls", "/workspace", cwd=plain).out == "f\n"


def test_workspace_in_linked_worktree_is_found(pienv: Pienv, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    subprocess.run(
        ["git", "worktree", "add", "-q", "-b", "wtb", str(wt)], cwd=pienv.repo, check=True
    )
    (wt / "sub").mkdir()
    (wt / "only-here").write_text("1")
    assert "only-here" in pienv("run", "--", "ls", "/workspace", cwd=wt / "sub").out


@pytest.mark.sampled
@pytest.mark.parametrize("where", ["/", "HOME"])
def test_root_and_home_refused(pienv: Pienv, tmp_path: Path, where: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cwd = Path("/") if where == "/" else home
    r = pienv("run", "--", "true", cwd=cwd, env={"HOME": str(home)}, check=False)
    assert r.code == 1
    assert r.err.startswith("pienv: error: refusing to mount")
    assert "Traceback" not in r.err


def test_files_in_workspace_belong_to_host_user(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The container runs as the uid:gid of the user running pienv. Pretend to be uid 4321
    # (a second real user cannot import this root-owned install here) and look at the owner
    # of the file the agent created, on the host.
    from pienv.context import Context
    from pienv.ops import run as runmod
    from pienv.runloop import commits as commits_mod
    from pienv.store import Store

    monkeypatch.setattr(commits_mod.os, "getuid", lambda: 4321)
    monkeypatch.setattr(commits_mod.os, "getgid", lambda: 4322)
    for key, value in pienv.env.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["chown", "-R", "4321:4322", str(pienv.repo)], check=True)
    out: list[bytes] = []
    req = runmod.RunRequest(command=("sh", "-c", "touch /workspace/made-by-agent; id -u"))
    result = runmod.run(
        Context(store=Store(pienv.home)), req, pienv.repo, pienv.env, out.append, out.append
    )
    assert result.exit_code == 0
    assert b"".join(out).strip() == b"4321"
    st = (pienv.repo / "made-by-agent").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_git_inside_uses_agent_identity_unsigned(pienv: Pienv) -> None:
    subprocess.run(["git", "config", "commit.gpgsign", "true"], cwd=pienv.repo, check=True)
    pienv("run", "--", "sh", "-c", "echo x > f && git add f && git commit -q -m agent-commit")
    show = subprocess.run(
        ["git", "log", "-1", "--format=%an <%ae> %s %G?"],
        cwd=pienv.repo,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert show == "pienv agent <agent@pienv.invalid> agent-commit N"


def test_commit_records_the_git_head_the_run_ended_on(pienv: Pienv) -> None:
    before = git(pienv.repo, "rev-parse", "HEAD")
    pienv("run", "--", "sh", "-c", "touch /tool && git commit -q --allow-empty -m by-agent")
    after = git(pienv.repo, "rev-parse", "HEAD")
    assert after != before
    assert inspect(pienv.head())["Config"]["Labels"]["dev.pienv.git-head"] == after


def test_piped_stdin_reaches_the_command(pienv: Pienv) -> None:
    data = "".join(f"line {i}\n" for i in range(20000))  # 200 KB: many pipe buffers
    r = pienv("run", "--", "sh", "-c", "wc -l; tail -n 1; echo after", input=data)
    assert r.out.split("\n")[:2] == ["20000", "after"]  # wc ate it all; then stdin was closed
    assert pienv("run", "--", "sh", "-c", "cat; echo after").out == "after\n"  # /dev/null


def test_open_stdin_does_not_hold_a_command_that_ignores_it(pienv: Pienv) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pienv", "run", "--", "echo", "hi"],
        cwd=pienv.repo,
        env=pienv.env,
        stdin=subprocess.PIPE,  # kept open for the whole run
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.wait(timeout=60) == 0
        assert proc.stdout is not None and proc.stdout.read() == b"hi\n"
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()


@pytest.mark.sampled
@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-"])
def test_closed_standard_stream_still_runs_and_commits(pienv: Pienv, closed: str) -> None:
    def pienv_with_closed(args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["sh", "-c", f"exec {sys.executable} -m pienv {args} {closed}"],
            cwd=pienv.repo,
            env=pienv.env,
            capture_output=True,
            timeout=60,
        )

    before = pienv.head() if (pienv.home / "refs.json").exists() else None
    proc = pienv_with_closed("run -- sh -c 'echo out; echo err >&2; touch /closed-ok; exit 6'")
    assert proc.returncode == 6, proc.stderr
    assert pienv.head() != before
    assert pienv("run", "--", "ls", "/closed-ok").out == "/closed-ok\n"
    for args, code in (("log --json", 0), ("status --json", 0), ("no-such-command", 2)):
        listing = pienv_with_closed(args)
        assert listing.returncode == code, (args, listing.stderr)


def test_interactive_tty_path(pienv: Pienv) -> None:
    # `script` gives pienv a real pseudo-terminal: the docker CLI attach path is used.
    proc = pienv.in_terminal("run", "--", "sh", "-c", "tty; touch /tty-was-here; exit 5")
    assert "/dev/pts/" in proc.stdout
    assert proc.returncode == 5
    assert pienv("run", "--", "ls", "/tty-was-here").out.strip() == "/tty-was-here"


def test_docker_not_running_is_one_line(pienv: Pienv, tmp_path: Path) -> None:
    r = pienv("run", "--", "true", env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}, check=False)
    assert r.code == 1
    assert r.err.strip().splitlines() == [r.err.strip()]
    assert r.err.startswith("pienv: error: Docker is not running")


def test_missing_base_is_one_line(pienv: Pienv) -> None:
    r = pienv("run", "--", "true", env={"PIENV_BASE_IMAGE": "pienv-test/nope:0"}, check=False)
    assert r.code == 1
    assert "PIENV_BASE_IMAGE=pienv-test/nope:0: no such image" in r.err
    assert not (pienv.home / "commits.jsonl").exists()


@pytest.mark.one_engine
def test_busy_branch_refused_with_holder(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    first = pienv.popen("run", "--", "sh", "-c", "echo started; sleep 5")
    assert first.stdout is not None and first.stdout.readline() == "started\n"
    r = pienv("run", "--", "true", check=False)
    assert r.code == 1
    assert f"branch 'main' is busy: pid {first.pid}" in r.err
    assert "--branch" in r.err and "pienv worktree add" in r.err
    other = pienv("run", "--branch", "side", "--", "true")  # another branch is free
    assert "created branch 'side'" in other.err
    assert first.wait(30) == 0


def test_corrupt_store_one_line_and_untouched(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    refs = pienv.home / "refs.json"
    good = refs.read_text()
    refs.write_text("{broken")
    try:
        for args in (("run", "--", "true"), ("log",), ("status",)):
            r = pienv(*args, check=False)
            assert r.code == 1 and "is corrupt" in r.err and "Traceback" not in r.err
        assert refs.read_text() == "{broken"
    finally:
        refs.write_text(good)  # so the fixture finds the store id and removes its images


def test_image_prune_keeps_every_commit(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    pienv("run", "--", "touch", "/b")
    before = {i["Id"] for i in store_images(pienv)}
    subprocess.run(["docker", "image", "prune", "-f"], check=True, capture_output=True)
    assert {i["Id"] for i in store_images(pienv)} == before
    for cid in before:
        assert any(
            t.removeprefix("docker.io/").startswith(f"pienv/{pienv.refs()['store_id']}:")
            for t in inspect(cid)["RepoTags"]
        )


def test_two_stores_do_not_see_each_other(pienv: Pienv, tmp_path: Path, base_image: str) -> None:
    other = Pienv(tmp_path / "store2", make_repo(tmp_path / "repo2"), base_image)
    try:
        pienv("run", "--", "touch", "/mine")
        other("run", "--", "touch", "/theirs")
        assert pienv.head() != other.head()
        assert len(pienv("log").out.splitlines()) == 2
        assert pienv("run", "--", "ls", "/theirs", check=False).code != 0
        assert other("orphans").out.strip() == "no orphans"
    finally:
        from conftest import _cleanup

        _cleanup(other)


def test_status_reports_branch_rule_head_depth(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    data = json.loads(pienv("status", "--json").out)
    assert data["branch"] == "main" and data["branch_rule"] == "HEAD"
    assert data["head"]["id"] == pienv.head()
    assert data["depth"] == inspect(pienv.head())["RootFS"]["Layers"].__len__()
    assert data["engine_ok"] is True and data["orphans"] == 0
    text = pienv("status", env={"PIENV_PROFILE": "prof"}).out
    assert "branch     prof  [chosen by PIENV_PROFILE]" in text


def test_a_key_expanded_into_the_command_is_recorded_as_its_name(pienv: Pienv) -> None:
    """A host shell expands `$ANTHROPIC_API_KEY` before pienv sees the command: its value
    must not reach the labels, the index, the reflog or `log`; one line says so."""
    key = "sk-ant-planted-987654"
    env = {"ANTHROPIC_API_KEY": key, "EXTRA_VAR": "extra-planted-value"}
    r = pienv(
        "run", "-e", "EXTRA_VAR", "-m", f"try {key}", "--",
        "sh", "-c", f"echo {key} extra-planted-value > /k; true", env=env,
    )  # fmt: skip
    assert "$ANTHROPIC_API_KEY" in r.err and "kept out of history" in r.err
    cid = pienv.head()
    labels = json.dumps(inspect(cid)["Config"]["Labels"])
    assert key not in labels and "extra-planted-value" not in labels
    assert "$ANTHROPIC_API_KEY" in labels and "$EXTRA_VAR" in labels
    for name in ("commits.jsonl", "reflog.jsonl"):
        text = "".join(p.read_text() for p in pienv.home.rglob(name))
        assert key not in text and "extra-planted-value" not in text
    out = pienv("log").out + pienv("show").out + pienv("reflog").out
    assert key not in out and "$ANTHROPIC_API_KEY" in out


def test_what_happens_before_the_command_is_said_before_it_runs(pienv: Pienv) -> None:
    """ "created root commit" (and an install, a flatten) used to print after the command,
    e.g. after an agent's whole session."""
    r = pienv("run", "--", "sh", "-c", "echo COMMAND-RAN >&2")
    lines = r.err.splitlines()
    root = next(i for i, line in enumerate(lines) if "created root commit" in line)
    assert root < lines.index("COMMAND-RAN"), r.err
