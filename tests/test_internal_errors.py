"""Internal errors (exit 3) and the test harness around them: pienv.log entries say when,
which version and which command line; the test helper shows the logged traceback; no test
can reach the default store location. No engine needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NO_STORE, Pienv, YouForgotToChooseAStore

from pienv import __version__, entry
from pienv import store as storemod
from pienv.store import Store

HEADER = re.compile(
    r"^--- \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z pienv (\S+) argv: (\[.*\])$", re.MULTILINE
)


def test_log_entry_starts_with_time_version_and_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIENV_HOME", str(tmp_path))

    def boom(args: list[str]) -> int:
        raise RuntimeError(f"boom {len(args)}")

    monkeypatch.setattr(entry, "_dispatch", boom)
    for args in (["log", "-n", "1"], ["status"]):
        with pytest.raises(SystemExit) as exc:
            entry.main(args)
        assert exc.value.code == 3
    err = capsys.readouterr().err
    assert f"(traceback in {tmp_path / 'pienv.log'})" in err
    text = (tmp_path / "pienv.log").read_text()
    headers = HEADER.findall(text)
    assert headers == [(__version__, '["log", "-n", "1"]'), (__version__, '["status"]')]
    entries = ("\n" + text).split("\n--- ")[1:]
    assert len(entries) == 2
    assert entries[0].endswith("RuntimeError: boom 3")
    assert entries[1].endswith("RuntimeError: boom 1\n")


def test_helper_shows_the_logged_traceback_on_exit_3(tmp_path: Path) -> None:
    p = Pienv(tmp_path / "store", tmp_path, None)
    # The real console script, with an operation that fails inside.
    p.command = [
        sys.executable,
        "-c",
        "from pienv import entry\n"
        "def dispatch(args): return {}['no such key']\n"
        "entry._dispatch = dispatch\n"
        "entry.main()",
    ]
    with pytest.raises(AssertionError) as exc:
        p("status")
    message = str(exc.value)
    assert "-> 3" in message and "internal error: KeyError" in message
    assert HEADER.search(message) and "in dispatch\nKeyError: 'no such key'" in message
    assert p("status", check=False).log.count("Traceback") == 1  # the newest entry only


def test_default_store_location_is_out_of_reach(tmp_path: Path) -> None:
    with pytest.raises(YouForgotToChooseAStore):
        Store()
    with pytest.raises(YouForgotToChooseAStore):
        storemod.default_home()
    # A subprocess without PIENV_HOME gets our environment: its store would be under a file.
    env = {k: v for k, v in os.environ.items() if k != "PIENV_HOME"}
    out = subprocess.run(
        [sys.executable, "-c", "from pienv.store import default_home; print(default_home())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(NO_STORE)
