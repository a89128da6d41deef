"""`pienv egress` on the command line: policy edits per branch, output, bad input (no engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def pienv(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIENV_HOME": str(home)}
    env.pop("PIENV_PROFILE", None)
    return subprocess.run(
        [sys.executable, "-m", "pienv", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or home.parent,
        timeout=120,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_allow_starts_an_allow_list_with_the_agents_hosts(home: Path) -> None:
    r = pienv(home, "egress", "allow", "Example.org", "*.example.net:8443", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["branch"] == "main" and out["mode"] == "allow-list" and out["source"] == "branch"
    assert {"example.org", "*.example.net:8443"} <= set(out["allow"])
    # the default agent (Pi) keeps its provider hosts
    assert "api.anthropic.com" in out["added"] and "api.anthropic.com" in out["allow"]
    shown = json.loads(pienv(home, "egress", "show", "--json").stdout)
    assert shown["hash"] == out["hash"]
    # another branch is untouched (policy per branch)
    other = json.loads(pienv(home, "egress", "show", "--branch", "other", "--json").stdout)
    assert other["mode"] == "open" and other["source"] == "default"


def test_deny_mode_reset_and_text(home: Path) -> None:
    pienv(home, "egress", "allow", "--no-agent", "a.example", "b.example")
    r = pienv(home, "egress", "deny", "a.example")
    assert r.returncode == 0
    assert "allow b.example" in r.stdout and "deny  a.example" in r.stdout
    assert "allow a.example" not in r.stdout
    r = pienv(home, "egress", "mode", "none")
    assert r.stdout.startswith("branch main: egress none")
    r = pienv(home, "egress", "reset")
    assert "egress open" in r.stdout
    index = json.loads((home / "egress" / "branches.json").read_text())
    assert set(index["branches"]) == {"main"}
    # every policy the branch had is kept, content-addressed
    assert len(list((home / "egress" / "policies").glob("*.json"))) == 4  # incl. open


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("allow", "not a host"), "bad egress rule 'not a host'"),
        (("allow", "*"), "bad egress rule '*'"),
        (("allow", "x.example:70000"), "bad port"),
        (("mode", "wide-open"), "unknown egress mode 'wide-open'"),
        (("log",), "HEAD has no commit yet"),
    ],
)
def test_bad_input_is_one_line(home: Path, args: tuple[str, ...], message: str) -> None:
    pienv(home, "egress", "reset")
    r = pienv(home, "egress", *args)
    assert r.returncode == 1
    assert r.stderr.startswith("pienv: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
