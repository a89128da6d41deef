"""The CLI's exit-code contract, on the installed typer (which may vendor click)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pienv(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pienv", *args],
        capture_output=True,
        text=True,
        env={"PIENV_HOME": str(home), "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
    )


def test_usage_error_exit_2_and_help_exit_0(tmp_path: Path) -> None:
    bad = pienv("log", "--no-such-flag", home=tmp_path)
    assert bad.returncode == 2 and "No such option" in bad.stderr
    assert "Traceback" not in bad.stderr
    ok = pienv("--help", home=tmp_path)
    assert ok.returncode == 0 and "Commands" in ok.stdout


def test_user_error_is_one_line_exit_1(tmp_path: Path) -> None:
    r = pienv("log", home=tmp_path)
    assert r.returncode == 1
    assert r.stderr == (
        f"pienv: error: no pienv store at {tmp_path} yet (`pienv run` creates it; "
        "`pienv fsck --repair` rebuilds a lost refs.json)\n"
    )
