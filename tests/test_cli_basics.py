"""Basics a git user expects (engine tests; the engine-free ones are in
test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Pienv, git

pytestmark = [pytest.mark.engine, pytest.mark.one_engine]


def test_worktree_add_existing_branch_reattaches_it(pienv: Pienv, tmp_path: Path) -> None:
    wt = tmp_path / "agent-k"
    pienv("worktree", "add", str(wt), "agent-k")
    pienv("run", "--", "touch", "/k", cwd=wt)
    head = pienv.head("agent-k")
    pienv("worktree", "remove", str(wt))
    # the env branch was kept: give it a worktree again (git branch agent-k exists too)
    again = tmp_path / "agent-k2"
    r = pienv("worktree", "add", str(again), "agent-k")
    assert "existing env branch 'agent-k' at " + head[:12] in r.out
    assert pienv.head("agent-k") == head
    assert pienv.refs()["worktrees"] == {str(again): "agent-k"}
    assert git(again, "rev-parse", "--abbrev-ref", "HEAD") == "agent-k"
    # one worktree per env branch
    r = pienv("worktree", "add", str(tmp_path / "third"), "agent-k", check=False)
    assert r.code == 1 and f"bound to worktree {again}" in r.err
    r = pienv("worktree", "add", str(tmp_path / "fourth"), "agent-k", "--from", "main", check=False)
    assert r.code == 1 and "--from only starts a new one" in r.err


def test_run_in_a_subdirectory_starts_there(pienv: Pienv) -> None:
    sub = pienv.repo / "sub" / "deeper"
    sub.mkdir(parents=True)
    r = pienv("run", "--", "pwd", cwd=sub)
    assert r.out == "/workspace/sub/deeper\n"
    # Starting there is not a change of the environment (rule 3): no image, no layer.
    assert "nothing changed in the environment" in r.err
    assert pienv("run", "--", "pwd").out == "/workspace\n"


def test_tag_and_branch_names_never_clash(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    r = pienv("tag", "main", check=False)
    assert (r.code, r.err) == (1, "pienv: error: 'main' is a branch (choose another tag name)\n")
    assert pienv.refs()["tags"] == {}
    pienv("tag", "v1")
    r = pienv("branch", "v1", check=False)
    assert (r.code, r.err) == (1, "pienv: error: 'v1' is a tag (choose another branch name)\n")
    pienv("branch", "exp")
    assert pienv("branch", "-m", "exp", "v1", check=False).code == 1


def test_messages_say_what_happened(pienv: Pienv) -> None:
    import json

    from pienv.ui import size

    r = pienv("run", "-m", "install the tool", "--", "touch", "/tool")
    # The paths are not counted at commit time: the run says the bytes it added,
    # as the engine counts them: an empty file adds 0 B on Docker, a layer's tar headers
    # (a few kB) on Podman.
    added = json.loads(pienv("log", "-n", "1", "--json").out)[0]["size"]
    assert r.err.endswith(f" on main (+{size(added)})\n") and added < 4096
    first = pienv("reflog").out.splitlines()[0]
    assert "main@{0}: run: install the tool  (" in first
    show = pienv("show").out
    assert "\n1 path changed: 1 added, 0 changed, 0 deleted\n" in show
    # --no-commit says "discarded" only when there was something to discard
    r = pienv("run", "--no-commit", "--", "true")
    assert r.err == "pienv: nothing changed in the environment; no commit\n"
    r = pienv("run", "--no-commit", "--", "touch", "/gone")
    assert r.err == "pienv: --no-commit: the environment changes were discarded\n"
    # a shell's commit is called `shell`, not pienv's login-shell wrapper
    pienv("shell", input="touch /from-shell\nexit\n")
    assert pienv("log", "-n", "1").out.split("  (")[0].endswith(" shell")
    assert "main@{0}: run: shell  (" in pienv("reflog").out.splitlines()[0]


def test_errors_say_what_to_do_next(pienv: Pienv) -> None:
    r = pienv("run", "--", "no-such-tool", "--flag", check=False)
    assert r.code == 127
    assert "pienv: no-such-tool: command not found in this environment; install it" in r.err
    assert "exec: line" not in r.err
    # the default agent's install needs npm, which this base lacks: one line naming the
    # install command and the real cause, and nothing committed
    r = pienv("run", check=False)
    assert r.code == 1
    assert "pienv: error: installing pi 1.5.2 failed (exit 127): `npm install -g" in r.err
    assert "nothing was committed: npm is missing in this environment" in r.err
    pienv("run", "--", "touch", "/a")
    pienv("run", "--", "touch", "/b")
    r = pienv("show", "HEAD~99", check=False)
    assert r.code == 1
    assert "unknown revision 'HEAD~99': the history goes back only 2 commits from there" in r.err


def test_clean_orphans_answered_no_exits_0_with_a_line(pienv: Pienv) -> None:
    from test_recovery import orphan_a_run, run_containers

    pienv("run", "--", "true")
    orphan_a_run(pienv, "touch /x")
    r = pienv("clean-orphans", input="n\n")
    assert r.code == 0 and r.out.endswith("nothing removed\n")
    assert len(run_containers(pienv)) == 1
    pienv("clean-orphans", "--yes")


def test_reset_system_onto_a_base_without_home(pienv: Pienv, base_image: str) -> None:
    import docker

    client = docker.from_env()
    tag = "pienv-test/busybox-nohome:1"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        c = client.containers.create(base_image, ["rm", "-rf", "/home"])
        try:
            c.start()
            c.wait()
            c.commit("pienv-test/busybox-nohome", "1")
        finally:
            c.remove(force=True)
    pienv("run", "--", "sh", "-c", "mkdir -p /home/agent/.cfg && echo k > /home/agent/.cfg/f")
    r = pienv("reset", "--system", env={"PIENV_BASE_IMAGE": tag})
    assert r.out.startswith("main is now at ")
    out = pienv("run", "--", "cat", "/home/agent/.cfg/f", env={"PIENV_BASE_IMAGE": tag}).out
    assert out == "k\n"


def test_wait_says_who_holds_the_branch_and_since_when(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    holder = pienv.popen("run", "--", "sh", "-c", "echo up; sleep 3")
    assert holder.stdout is not None and holder.stdout.readline() == "up\n"
    r = pienv("run", "--wait", "60", "--", "true")
    first = r.err.splitlines()[0]
    assert first.startswith(
        f"pienv: waiting for branch 'main' (up to 60 s): held by pid {holder.pid} on "
    )
    assert " since " in first and f"(workspace {pienv.repo})" in first
    assert r.err.count("waiting for branch") == 1
    holder.wait(30)


def test_failed_base_build_of_a_custom_dir_leaves_nothing(
    pienv: Pienv, base_image: str, tmp_path: Path
) -> None:
    import uuid

    import docker

    token = uuid.uuid4().hex
    ctxdir = tmp_path / "mybase"
    ctxdir.mkdir()
    (ctxdir / "Dockerfile").write_text(
        f"FROM {base_image}\nLABEL pienv-test-token={token}\nRUN touch /x\nRUN false\n"
    )
    r = pienv("base", "build", str(ctxdir), check=False)
    assert r.code == 1
    assert "pienv: Step 1/4 : FROM " in r.err and "Step 4/4 : RUN false" in r.err
    last = r.err.splitlines()[-1]
    assert last.startswith("pienv: error: base build failed") and "registry" not in last
    assert f"fix {ctxdir / 'Dockerfile'}" in last
    api = docker.from_env().api
    flt = {"label": [f"pienv-test-token={token}"]}
    assert api.containers(all=True, filters=flt) == []
    assert api.images(all=True, filters=flt) == []
