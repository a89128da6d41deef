"""The CLI's exit-code contract, on the installed typer (which may vendor click)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The checkout under test, not whatever pienv is installed (COORD: PYTHONPATH=src).
PYPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


def pienv(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pienv", *args],
        capture_output=True,
        text=True,
        env={"PIENV_HOME": str(home), "NO_COLOR": "1", "PATH": "/usr/bin:/bin", **PYPATH},
        stdin=subprocess.DEVNULL,
    )


def test_usage_error_is_one_line_exit_2_and_help_exit_0(tmp_path: Path) -> None:
    bad = pienv("log", "--no-such-flag", home=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "pienv: error: no such option: --no-such-flag (see `pienv log --help`)\n"
    bad = pienv("show", "a", "b", home=tmp_path)
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1)
    assert bad.stderr.startswith("pienv: error: got unexpected extra argument")
    ok = pienv("--help", home=tmp_path)
    assert ok.returncode == 0 and "Commands" in ok.stdout
    bare = pienv(home=tmp_path)
    assert bare.returncode == 0 and "Commands" in bare.stdout and bare.stderr == ""
    sub = pienv("worktree", home=tmp_path)
    assert sub.returncode == 0 and "Commands" in sub.stdout


def test_version(tmp_path: Path) -> None:
    from pienv import __version__

    r = pienv("--version", home=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"pienv {__version__}\n", "")


def _commands() -> list[tuple[str, object]]:
    import typer

    from pienv.cli import app

    root = typer.main.get_command(app)
    out = []

    def walk(path: str, cmd: object) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in sorted(subs.items()):
                walk(f"{path} {name}", sub)
        else:
            out.append((path, cmd))

    walk("pienv", root)
    return out


def test_every_option_and_argument_has_a_sentence() -> None:
    missing = []
    for path, cmd in _commands():
        for param in cmd.params:  # type: ignore[attr-defined]
            text = getattr(param, "help", None) or ""
            if not text.strip().endswith((".", ")")):
                missing.append(f"{path} {param.name}")
    assert missing == []


def test_top_level_help_at_80_columns_truncates_nothing(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pienv", "--help"],
        capture_output=True,
        text=True,
        env={"PIENV_HOME": str(tmp_path), "COLUMNS": "80", "PATH": "/usr/bin:/bin", **PYPATH},
    )
    commands = r.stdout.split("Commands:")[1]
    assert "..." not in commands
    assert all(len(line) <= 80 for line in r.stdout.splitlines())


def test_user_error_is_one_line_exit_1(tmp_path: Path) -> None:
    r = pienv("log", home=tmp_path)
    assert r.returncode == 1
    assert r.stderr == (
        f"pienv: error: no pienv store at {tmp_path} yet (`pienv run` creates it; "
        "`pienv fsck --repair` rebuilds a lost refs.json)\n"
    )


def test_completion_offers_branches_tags_and_revisions(tmp_path: Path) -> None:
    import json

    cid = "ab12" + "0" * 60
    refs = {
        "schema": 1,
        "store_id": "abcdef012345",
        "head": {"branch": "main"},
        "branches": {"main": cid, "agent-a": cid},
        "tags": {"v1": cid},
        "worktrees": {},
        "base": None,
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "commits.jsonl").write_text(json.dumps({"id": cid, "parents": []}) + "\n")

    def complete(words: str) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-m", "pienv"],
            capture_output=True,
            text=True,
            env={
                "PIENV_HOME": str(tmp_path),
                "PATH": "/usr/bin:/bin",
                "_PIENV_COMPLETE": "complete_bash",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split(" ")) - 1),
                **PYPATH,
            },
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("pienv lo") == ["log"]
    assert complete("pienv log ") == ["HEAD", "agent-a", "main", "v1"]
    assert complete("pienv reset ma") == ["main"]
    assert complete("pienv run -b ") == ["agent-a", "main"]
    assert complete("pienv flatten a") == ["agent-a"]
    assert complete("pienv tag -d ") == ["v1"]
    assert complete("pienv reflog ") == ["agent-a", "main", "v1"]
    assert complete("pienv show ab12") == [cid[:12]]


def test_completion_installs_from_any_shell_for_the_shell_named(tmp_path: Path) -> None:
    def sh(command: str, shell: str = "/bin/bash") -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(tmp_path),
            "SHELL": shell,
            "PIENV_HOME": str(tmp_path / "store"),
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            **PYPATH,
        }
        return subprocess.run(
            ["/bin/sh", "-c", f"{sys.executable} -m pienv {command}"],
            capture_output=True,
            text=True,
            env=env,
        )

    r = sh("--install-completion")  # from sh, with SHELL=/bin/bash: bash's completion
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bash completion installed" in r.stdout
    assert "_PIENV_COMPLETE" in (tmp_path / ".bash_completions" / "pienv.sh").read_text()
    r = sh("--install-completion zsh", shell="/bin/sh")
    assert r.returncode == 0 and (tmp_path / ".zfunc" / "_pienv").exists(), r.stdout + r.stderr
    r = sh("--show-completion fish", shell="/bin/sh")
    assert r.returncode == 0 and "complete --command pienv" in r.stdout
    r = sh("--install-completion", shell="/bin/sh")  # nothing to go by: one line, exit 1
    assert r.returncode == 1
    assert r.stderr.startswith("pienv: error: ") and "bash" in r.stderr
    assert r.stderr.count("\n") == 1
