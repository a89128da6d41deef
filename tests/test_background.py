"""Background commits: `pienv run -- CMD` hands its commit to the forked finalizer
once the container has exited and returns the command's exit code at once. Nothing may be
lost, the next run on the branch waits for the commit, `status`/`log` show it, a reader of
pienv's stderr gets the result line (and EOF) only after the commit, and stdout is never held.

PIENV_TEST_COMMIT_DELAY makes the finalizer start its commit late, so that "being committed"
is a state a test can look at (guard.py reads it once at import, as the crash points)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Pienv
from test_crash import STEPS, assert_consistent, run_containers, wait_for

pytestmark = pytest.mark.engine


def start(p: Pienv, *args: str, delay: float = 0, **streams: int) -> subprocess.Popen[bytes]:
    env = {**p.env, **({"PIENV_TEST_COMMIT_DELAY": str(delay)} if delay else {})}
    kw = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    kw.update({"stderr": subprocess.DEVNULL, **streams})
    return subprocess.Popen([*p.command, *args], cwd=p.repo, env=env, **kw)  # type: ignore[call-overload, no-any-return]


def log_ids(p: Pienv) -> list[str]:
    return [c["id"] for c in json.loads(p("log", "--json").out)]


def test_next_run_waits_for_the_background_commit(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    first = start(pienv, "run", "--", "sh", "-c", "echo one > /one", delay=4)
    assert first.wait(30) == 0
    # pienv is gone, its commit is not made yet: it returned before the commit.
    assert pienv.head() == before and run_containers(pienv)
    second = pienv("run", "--", "sh", "-c", "cat /one && echo two > /two")
    assert second.out == "one\n"
    assert "waiting for the previous run's commit on 'main'" in second.err
    assert "committed" in second.err
    ids = log_ids(pienv)
    assert ids[0] == pienv.head() and ids[2] == before  # both runs' commits, in order
    assert pienv("run", "--", "cat", "/one", "/two").out == "one\ntwo\n"
    assert run_containers(pienv) == []
    assert_consistent(pienv, commits=3)


def test_status_orphans_and_log_while_committing(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    # `log` right after pienv returned: it waits for the commit (briefly) and lists it.
    assert start(pienv, "run", "--", "touch", "/first", delay=4).wait(30) == 0
    r = pienv("log", "-n", "1", "--json")
    (entry,) = json.loads(r.out)
    assert entry["id"] == pienv.head() != before
    assert "waiting for the run being committed on 'main'" in r.err
    before = pienv.head()
    proc = start(pienv, "run", "--", "touch", "/made", delay=10)
    assert proc.wait(30) == 0
    # The container first: the commit may start before the two `status` below are done on a
    # loaded machine (and Podman's listing waits for a container a commit holds).
    [container] = run_containers(pienv)
    status = pienv("status").out
    assert "committing the last run" in status, status
    lock = json.loads(pienv("status", "--json").out)["locks"][0]
    assert lock["phase"] == "committing" and lock["branch"] == "main"
    assert lock["container"] == container["Id"]
    # The finalizer's container is its own, not an orphan for `recover` to take.
    assert json.loads(pienv("orphans", "--json").out) == []
    wait_for(lambda: pienv.head() != before and not run_containers(pienv))
    assert json.loads(pienv("status", "--json").out)["locks"] == []
    assert_consistent(pienv, commits=3)


@pytest.mark.one_engine
def test_log_says_when_the_commit_outlasts_its_wait(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    assert start(pienv, "run", "--", "touch", "/slow", delay=12).wait(30) == 0
    r = pienv("log", "--json")
    assert json.loads(r.out)[0]["id"] == before
    assert "is still being committed" in r.err and "not listed yet" in r.err
    wait_for(lambda: pienv.head() != before)


def test_stderr_reader_gets_the_result_after_the_commit_stdout_at_once(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    proc = start(
        pienv,
        "run",
        "--",
        "sh",
        "-c",
        "echo out; echo new > /n",
        delay=5,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read() == b"out\n"  # EOF: the finalizer never holds stdout
    assert proc.wait(30) == 0
    assert pienv.head() == before  # stdout's EOF came before the commit
    err = proc.stderr.read().decode()  # EOF only once the commit has landed
    head = pienv.head()
    assert head != before
    assert f"pienv: committed {head[:12]} on main (+" in err, err


def test_noop_result_line_and_the_exit_code(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    r = pienv("run", "--", "sh", "-c", "exit 7", check=False)
    assert r.code == 7
    assert r.err.endswith("pienv: nothing changed in the environment; no commit\n"), r.err


def test_terminal_gets_no_line_on_success(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    master, slave = pty.openpty()
    proc = start(pienv, "run", "--", "touch", "/t", stderr=slave)
    os.close(slave)
    assert proc.wait(30) == 0
    out = b""
    while True:  # EIO once every holder of the terminal (the finalizer too) has closed it
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert pienv.head() != before
    assert b"committed" not in out and b"error" not in out, out


def test_foreground_config_and_sessions_commit_before_returning(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    (pienv.home / "config.toml").write_text('[run]\ncommit = "foreground"\n')
    proc = start(pienv, "run", "--", "touch", "/fg", delay=2)
    assert proc.wait(30) == 0
    assert pienv.head() != before  # committed before pienv returned
    (pienv.home / "config.toml").write_text('[run]\ncommit = "later"\n')
    r = pienv("run", "--", "true", check=False)
    assert r.code == 1 and '[run] commit must be "background" or "foreground"' in r.err


def test_sessions_always_commit_in_the_foreground(tmp_path: Path) -> None:
    from pienv.config import Config
    from pienv.context import Context
    from pienv.ops.run import RunRequest, commits_in_background
    from pienv.store import Store

    ctx = Context(store=Store(tmp_path))
    ctx.__dict__["config"] = Config()  # the default: background
    assert commits_in_background(ctx, RunRequest(command=("true",)))
    assert commits_in_background(ctx, RunRequest(command=("sh",), interactive=True))
    assert not commits_in_background(ctx, RunRequest(shell=True, interactive=True))
    assert not commits_in_background(ctx, RunRequest(interactive=True))  # the agent
    ctx.__dict__["config"] = Config(commit="foreground")
    assert not commits_in_background(ctx, RunRequest(command=("true",)))


def test_killed_right_after_the_handoff_loses_nothing(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    r = pienv(
        "run",
        "--",
        "sh",
        "-c",
        "echo kept > /k",
        env={"PIENV_TEST_CRASH_AT": "handed"},
        check=False,
    )
    assert r.code == -signal.SIGKILL and (pienv.home / "crashed-at-handed").exists()
    wait_for(lambda: not run_containers(pienv) and pienv.head() != before)
    assert pienv("run", "--", "cat", "/k").out == "kept\n"
    assert_consistent(pienv, commits=2)


@pytest.mark.sampled
@pytest.mark.parametrize("step", ["handed+all", *STEPS])
def test_finalizer_killed_mid_background_commit_loses_nothing(pienv: Pienv, step: str) -> None:
    """kill -9 of the finalizer at each step of its commit (for ``handed+all``: of pienv and
    the finalizer right after the handoff): the container stays, and the next run on the
    branch completes the commit first."""
    pienv("run", "--", "true")
    before = pienv.head()
    r = pienv(
        "run",
        "--",
        "sh",
        "-c",
        "echo kept > /k",
        env={"PIENV_TEST_CRASH_AT": step},
        check=False,
    )
    name = step.removesuffix("+all")
    assert (pienv.home / f"crashed-at-{name}").exists()
    assert r.code == (-signal.SIGKILL if name == "handed" else 0)
    assert [c["Id"] for c in run_containers(pienv)]  # the orphan, once the finalizer died
    assert json.loads(pienv("orphans", "--json").out)
    out = pienv("run", "--", "cat", "/k")
    assert out.out == "kept\n"
    assert run_containers(pienv) == []
    head = pienv.head()
    assert head != before and [b for b in pienv.refs()["branches"] if b != "main"] == []
    assert log_ids(pienv)[:2] == [head, before]
    assert_consistent(pienv, commits=2)


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid):
            out.append(int(stat.parent.name))
    return out


def test_finalizer_killed_during_the_run_commits_in_the_foreground(pienv: Pienv) -> None:
    """kill -9 of the finalizer while the command runs (an agent, or the OOM killer, can):
    pienv cannot hand its commit over, so it commits itself, says so, and keeps the
    command's exit code (no silent 0, no orphan)."""
    pienv("run", "--", "true")
    before = pienv.head()
    script = (
        "touch /workspace/started; while [ ! -e /workspace/go ]; do sleep 0.1; done; "
        "echo kept > /k; exit 7"
    )
    proc = start(pienv, "run", "--", "sh", "-c", script, stderr=subprocess.PIPE)
    wait_for(lambda: (pienv.repo / "started").exists())
    [finalizer] = children(proc.pid)
    os.kill(finalizer, signal.SIGKILL)
    (pienv.repo / "go").touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert b"committed" in err, err
    assert run_containers(pienv) == []
    assert pienv.head() != before
    assert pienv("run", "--", "cat", "/k").out == "kept\n"
    assert_consistent(pienv, commits=2)


@pytest.mark.one_engine
def test_revisions_right_after_a_run_name_its_commit(pienv: Pienv) -> None:
    """`pienv run -- CMD` then at once `tag`, `branch`, `run -b NEW`, `reset HEAD~1`: each
    acts on CMD's commit (it waits for the background commit), as with a foreground commit."""
    pienv("run", "--", "true")
    first = pienv.head()

    def ran(path: str) -> str:
        before = pienv.head()
        assert start(pienv, "run", "--", "touch", path, delay=2).wait(30) == 0
        assert pienv.head() == before  # still being committed
        return before

    ran("/t")
    pienv("tag", "t1")
    pienv("branch", "b1")
    assert pienv.refs()["tags"]["t1"] == pienv.refs()["branches"]["b1"] == pienv.head() != first
    ran("/n")
    assert pienv("run", "-b", "fresh", "--", "ls", "/n").out == "/n\n"
    before = ran("/u")
    pienv("reset", "HEAD~1")
    assert pienv.head() == before
    ran("/s")
    pienv("reset", "--system")  # keeps the home of /s's commit (it failed: "moved meanwhile")
    moves = [json.loads(line) for line in (pienv.home / "reflog.jsonl").read_text().splitlines()]
    assert moves[-1]["what"].startswith("reset --system") and moves[-2]["what"].startswith(
        "run: touch /s"
    )
    assert moves[-1]["old"] == moves[-2]["new"]
    wait_for(lambda: not run_containers(pienv))
    assert_consistent(pienv, commits=6)


def test_recover_waits_for_a_background_commit(pienv: Pienv, tmp_path: Path) -> None:
    pienv("run", "--", "true")
    before = pienv.head()
    assert start(pienv, "run", "--", "touch", "/r", delay=2).wait(30) == 0
    r = pienv("recover", "--all")
    assert "error" not in r.err
    wait_for(lambda: not run_containers(pienv))
    assert pienv.head() != before
    assert_consistent(pienv, commits=2)


def test_shell_session_commits_before_it_returns(pienv: Pienv) -> None:
    """`pienv shell` on a terminal (`script` gives it one) commits in the foreground, with
    the result line, even with the background default."""
    import shlex
    import shutil

    if shutil.which("script") is None:
        pytest.fail("`script` (util-linux) is needed to give pienv a terminal")
    pienv("run", "--", "true")
    before = pienv.head()
    cmd = shlex.join([*pienv.command, "shell"])
    proc = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        input="echo 6 > /f; exit 3\n",
        cwd=pienv.repo,
        env=pienv.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    head = pienv.head()  # read as soon as the session ended: no waiting
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert head != before and f"pienv: committed {head[:12]} on main" in proc.stdout
