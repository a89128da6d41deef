"""Prepared roots for the host user, agent presets and their install step, agent state
and package caches in per-store volumes that no env commit contains."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import NonrootPienv, Pienv

pytestmark = [pytest.mark.engine]


def layer_paths(image: str) -> list[str]:
    """Every path in every layer of ``image`` (from `docker save`): what an image holds."""
    saved = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
    paths: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            data = outer.extractfile(layer)
            assert data is not None
            with tarfile.open(fileobj=io.BytesIO(data.read())) as tar:
                paths += ["/" + m.name for m in tar.getmembers()]
    return paths


def volumes(store_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"name=pienv-{store_id}-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def remove_volumes(p: Pienv) -> None:
    try:
        sid = p.refs()["store_id"]
    except (OSError, KeyError):
        return
    for name in volumes(sid):
        subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)


def config(p: Pienv, text: str) -> None:
    p.home.mkdir(parents=True, exist_ok=True)
    (p.home / "config.toml").write_text(text)


@pytest.mark.nonroot
def test_prepared_root_makes_any_base_usable_by_a_non_root_user(nonroot: NonrootPienv) -> None:
    """Rule 5 on a base with no user for uid 4321 and a root-owned /home/agent: the root commit
    adds a passwd/group entry and a home owned by the user, nothing else needed."""
    try:
        r = nonroot(
            "run", "--", "sh", "-c",
            "id -un; id -gn; echo $HOME; touch ~/x && echo wrote;"
            " stat -c '%u:%g %a' ~ ~/.pi/agent ~/.npm",
        )  # fmt: skip
        lines = r.out.split()
        assert lines[:4] == ["agent", "agent", "/home/agent", "wrote"], r.out
        assert "4321:4321 755" in r.out
        assert r.out.count("4321:4321") == 3
    finally:
        remove_volumes(nonroot)


def test_login_lives_in_a_volume_never_in_a_commit(pienv: Pienv) -> None:
    """A planted auth.json survives runs and branches and is in no layer of the head."""
    try:
        pienv("run", "--", "sh", "-c", "echo secret > ~/.pi/agent/auth.json; echo tool > /tool")
        head = pienv.head()
        assert pienv("run", "--", "cat", "/home/agent/.pi/agent/auth.json").out == "secret\n"
        pienv("branch", "other")
        r = pienv("run", "-b", "other", "--", "cat", "/home/agent/.pi/agent/auth.json")
        assert r.out == "secret\n"
        paths = layer_paths(head)
        assert "/tool" in paths  # the run's own change is there...
        assert not [p for p in paths if "auth.json" in p]  # ...the login is not
        assert not [p for p in paths if p.startswith("/home/agent/.pi/agent/")]
        # reset --all: a bare base again, the login (outside images) stays.
        pienv("reset", "--all")
        assert pienv("run", "--", "cat", "/home/agent/.pi/agent/auth.json").out == "secret\n"
    finally:
        remove_volumes(pienv)


INSTALL_OK = (
    "mkdir -p ~/.local/bin && printf '#!/bin/sh\\necho hello from myagent\\n'"
    " > ~/.local/bin/myagent && chmod +x ~/.local/bin/myagent"
)


def test_install_is_its_own_commit_and_runs_once(pienv: Pienv) -> None:
    config(pienv, f'[agent]\ncommand = ["myagent"]\ninstall = "{INSTALL_OK}"\n')
    try:
        r = pienv("run")
        assert "hello from myagent" in r.out
        assert "installing myagent" in r.err
        log = pienv("log").out
        assert "install myagent" in log
        assert pienv("run").out == "hello from myagent\n"
        assert pienv("log").out.count("install myagent") == 1  # not again
        assert "installing" not in pienv("run").err
    finally:
        remove_volumes(pienv)


def test_an_install_then_a_new_mount_point_is_no_junk_run_commit(
    pienv: Pienv, tmp_path: Path
) -> None:
    """A session that installs the agent and needs a mount point its image lacks: the mount
    point is a prepare commit, and the agent's run that changes nothing adds none (the run
    used to commit the mount point the engine made)."""
    data = tmp_path / "data"
    data.mkdir()
    config(
        pienv,
        f'[agent]\ncommand = ["myagent"]\ninstall = "{INSTALL_OK}"\n'
        f'[run]\nmounts = ["{data}:/srv/data:ro"]\n',
    )
    try:
        assert pienv("run").out == "hello from myagent\n"
        kinds = [c["kind"] for c in json.loads(pienv("log", "--json").out)]
        assert kinds == ["prepare", "install", "root"], kinds
        pienv("run")
        assert len(json.loads(pienv("log", "--json").out)) == 3
    finally:
        remove_volumes(pienv)


def test_failed_install_stops_with_one_line_and_commits_nothing(pienv: Pienv) -> None:
    config(
        pienv,
        '[agent]\npreset = "pi"\ninstall = "mkdir -p ~/.npm/_logs; echo log > ~/junk; exit 7"\n',
    )
    try:
        pienv("run", "--", "true")  # the root commit
        root = pienv.head()
        r = pienv("run", check=False)
        assert r.code == 1
        errors = [line for line in r.err.splitlines() if line.startswith("pienv: error:")]
        assert len(errors) == 1
        assert "exit 7" in errors[0] and "[agent] install" in errors[0]
        assert pienv.head() == root
        assert "install" not in pienv("log").out
    finally:
        remove_volumes(pienv)


def test_agent_list_and_unknown_preset(pienv: Pienv) -> None:
    out = pienv("agent", "list").out
    for name in ("pi", "claude", "codex", "gemini", "opencode", "aider"):
        assert f" {name} " in out
    assert "@earendil-works/pi-coding-agent@1.5.2" in out
    config(pienv, '[agent]\npreset = "claude"\nversion = "2.0.0"\n')
    out = pienv("agent", "list").out
    assert "@anthropic-ai/claude-code@2.0.0" in out
    config(pienv, '[agent]\npreset = "nope"\n')
    r = pienv("agent", "list", check=False)
    assert r.code == 1 and "unknown agent preset 'nope'" in r.err


def test_caches_are_store_volumes_and_prune_caches_empties_them(pienv: Pienv) -> None:
    try:
        pienv("run", "--", "sh", "-c", "echo x > ~/.npm/blob; echo y > /var/cache/apt/z")
        sid = pienv.refs()["store_id"]
        assert f"pienv-{sid}-cache-npm" in volumes(sid)
        paths = layer_paths(pienv.head())
        assert not [p for p in paths if p.startswith(("/home/agent/.npm/", "/var/cache/apt/"))]
        other = pienv("run", "--", "cat", "/home/agent/.npm/blob").out
        assert other == "x\n"
        out = pienv("prune", "--caches").out
        assert f"emptied pienv-{sid}-cache-npm" in out
        assert pienv("run", "--", "ls", "/home/agent/.npm").out == ""
        # Caches off: the directories are the image's own again (and commit with it).
        config(pienv, "[run]\ncaches = false\n")
        pienv("run", "--", "sh", "-c", "echo x > ~/.npm/kept")
        assert "/home/agent/.npm/kept" in layer_paths(pienv.head())
    finally:
        remove_volumes(pienv)


def _tty_run(p: NonrootPienv, keys: list[bytes], ready: bytes, timeout: float) -> tuple[int, str]:
    """`pienv run` (no command) under a pseudo-terminal (`script -qc`), typing ``keys`` once
    the screen shows ``ready`` (or ``timeout`` passed): the way a user starts the agent."""
    import shlex
    import threading
    import time

    proc = subprocess.Popen(
        ["script", "-qc", shlex.join([*p.command, "run"]), "/dev/null"],
        cwd=p.repo,
        env=p.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    chunks: list[bytes] = []
    stdout = proc.stdout

    def read() -> None:
        while data := stdout.read1(65536):
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and ready not in b"".join(chunks):
        time.sleep(0.5)
    time.sleep(2)  # let the TUI finish drawing and read its keyboard
    for key in keys:
        if proc.poll() is None:
            proc.stdin.write(key)
            proc.stdin.flush()
            time.sleep(1.5)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(10)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


@pytest.mark.realistic
@pytest.mark.nonroot
def test_real_pi_on_a_stock_image_as_a_non_root_user(nonroot_realistic: NonrootPienv) -> None:
    """End to end on Debian + Node with no agent user: the default `pienv run` installs
    the pinned Pi as its own commit and starts its TUI; `pi --version` runs from the persisted
    install; a planted login survives runs and is in no layer; apt runs through sudo."""
    p = nonroot_realistic
    try:
        # Pi's TUI under a TTY: Ctrl-C twice, then Ctrl-D, leave it.
        code, out = _tty_run(p, [b"\x03", b"\x03", b"\x04"], b"/workspace", timeout=300)
        assert "pienv: installing pi 1.5.2: npm install -g" in out, out[-3000:]
        assert "installed pi 1.5.2 as" in out, out[-3000:]
        assert code == 0, out[-3000:]
        assert "/workspace" in out  # Pi's status line: it started in the workspace
        log = p("log").out
        assert log.count("install pi 1.5.2") == 1
        install = p.refs()["branches"]["main"]
        assert p("run", "--", "pi", "--version").out.strip() == "1.5.2"
        # The prepared root: the host user by name, a home it owns, sudo for apt.
        r = p("run", "--", "sh", "-c", "id -un; stat -c %u ~; sudo -n true && echo sudo-ok")
        assert r.out.split() == ["agent", "4321", "sudo-ok"], r.out
        # A login, planted where Pi keeps it: kept across runs, in no image layer.
        p("run", "--", "sh", "-c", "echo '{\"k\": 1}' > ~/.pi/agent/auth.json")
        assert p("run", "--", "cat", "/home/agent/.pi/agent/auth.json").out == '{"k": 1}\n'
        for image in (p.refs()["branches"]["main"], install):
            paths = layer_paths(image)
            assert not [x for x in paths if "auth.json" in x or x.startswith("/home/agent/.npm/")]
        assert [x for x in layer_paths(install) if x.endswith("/pi-coding-agent/package.json")]
        # Nothing of a run of Pi itself lands in the image (its compile cache is a cache).
        head = p.refs()["branches"]["main"]
        code, _ = _tty_run(p, [b"\x03", b"\x03", b"\x04"], b"/workspace", timeout=60)
        assert code == 0 and p.refs()["branches"]["main"] == head
    finally:
        remove_volumes(p)


def test_show_of_an_install_lists_what_its_layer_holds(pienv: Pienv) -> None:
    """An install commit's paths come from its own layer, as a run commit's do: a same-size
    rewrite that put the old mtime back (which `docker diff` never reports) is listed."""
    same = "touch -d '2020-01-01 00:00:00' /opt/n"
    pienv("run", "--", "sh", "-c", f"mkdir -p /opt && echo 1 > /opt/n && {same}")
    install = f"echo 2 > /opt/n && {same} && {INSTALL_OK}"
    config(pienv, f'[agent]\ncommand = ["myagent"]\ninstall = "{install}"\n')
    try:
        assert pienv("run").out == "hello from myagent\n"
        commits = json.loads(pienv("log", "--json").out)
        installed = next(c["id"] for c in commits if c["kind"] == "install")
        paths = json.loads(pienv("show", installed, "--json").out)["paths"]
        assert {"kind": "C", "path": "/opt/n"} in paths, paths
        assert {"kind": "A", "path": "/home/agent/.local/bin/myagent"} in paths, paths
    finally:
        remove_volumes(pienv)


def test_install_without_pip_says_the_real_cause(pienv: Pienv) -> None:
    """aider installs with pip: on an image without Python the error names what is missing
    and what to do, not "change [agent] version"."""
    config(pienv, '[agent]\npreset = "aider"\n')
    try:
        pienv("run", "--", "true")
        r = pienv("run", check=False)
        assert r.code == 1
        error = next(line for line in r.err.splitlines() if line.startswith("pienv: error:"))
        assert "python3" in error and "missing" in error and "[agent] version" not in error
    finally:
        remove_volumes(pienv)


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        ("/usr/bin/python3: No module named pip\n", "pip is missing"),
        ("sh: 1: npm: not found\n", "npm is missing"),
        ("npm ERR! code EAI_AGAIN\nnpm ERR! getaddrinfo EAI_AGAIN registry\n", "network"),
        ("ERROR: Could not find a version that satisfies the requirement x==9\n", None),
    ],
)
def test_install_failure_cause_from_its_output(output: str, cause: str | None) -> None:
    from pienv.runloop.install import failure_cause

    found = failure_cause(output)
    assert (found is None) if cause is None else (found is not None and cause in found)
