"""Test-only crash points (tests/test_crash.py).

PIENV_TEST_CRASH_AT=STEP kills pienv at STEP of a run's finish, once per store; STEP+all kills
its forked finalizer too. Read once at import so the hot path pays one string comparison per
step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pienv.store.home as home

_CRASH_STEP, _, _CRASH_MODE = os.environ.get("PIENV_TEST_CRASH_AT", "").partition("+")


def crashpoint(step: str) -> None:
    if step == _CRASH_STEP:
        _crash(step)


def _crash(step: str) -> None:
    import signal

    marker = home.default_home() / f"crashed-at-{step}"
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return  # once: the finalizer or the next command must get past this step
    if _CRASH_MODE == "all":
        me = str(os.getpid())
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                with contextlib.suppress(OSError):
                    os.kill(int(stat.parent.name), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
