"""Issue 22's "no junk commits" for every agent preset on the realistic base, as a non-root
user: a first session installs the preset and starts its interface under a pty; a second
session with no install makes no commit; a login planted in the preset's state dir is in no
layer. Slow (each install is 0.1-0.6 GB from the npm/pip registries): its own marker, run
with `./test -m presets` (CI's tiers leave it out). Pi's case also runs in the realistic tier
(tests/test_agent.py::test_real_pi_on_a_stock_image_as_a_non_root_user)."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import threading
import time

import pytest
from conftest import NonrootPienv, _await_background_commits
from test_agent import layer_paths, remove_volumes

from pienv.config import PRESETS

pytestmark = [pytest.mark.engine, pytest.mark.realistic, pytest.mark.nonroot, pytest.mark.presets]

# How each interface is left: the keys its TUI quits on (Ctrl-C twice: "press again to exit";
# Pi then wants Ctrl-D). Exit codes of an interface that quits on Ctrl-C: 0, or 130 (SIGINT's
# shell code) for those that exit "interrupted". An interface that ignores the keys is killed
# by the helper after its wait, and no preset accepts that.
QUIT = {
    "pi": [b"\x03", b"\x03", b"\x04"],
    "claude": [b"\x03", b"\x03"],
    "codex": [b"\x03", b"\x03"],
    "gemini": [b"\x03", b"\x03"],
    # opencode ignored Ctrl-C twice in a first run (killed); Ctrl-D and /exit are its others.
    "opencode": [b"\x03", b"\x03", b"\x04", b"/exit\r"],
    "aider": [b"\x03", b"\x03", b"\x04"],
}
QUIT_CODES = {0, 130}
# What a user of a pip preset on a stock Node image does first (pienv's message says so).
PIP_INSTALL = (
    "sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive"
    " apt-get install -y -qq python3-pip >/dev/null"
)


def tty_session(p: NonrootPienv, keys: list[bytes], ready: bytes, wait: float) -> tuple[int, str]:
    """`pienv run` (no command) under a pseudo-terminal (`script -qc`): once the screen shows
    ``ready`` (or ``wait`` s passed), type ``keys`` until it exits; an interface still up
    2 min later is killed (return code < 0, which no preset's check accepts)."""
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
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None and ready not in b"".join(chunks):
        time.sleep(0.5)
    # The interface starts after pienv's line and may not read keys for a while on a loaded
    # machine (opencode once ignored them 10 s in): type them again every 15 s, for 2 min.
    quit_by = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < quit_by:
        time.sleep(10)
        for key in keys:
            if proc.poll() is None:
                proc.stdin.write(key)
                proc.stdin.flush()
                time.sleep(2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    reader.join(10)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def configure(p: NonrootPienv, text: str) -> None:
    """The store's config.toml, owned by the user who runs pienv."""
    p.home.mkdir(parents=True, exist_ok=True)
    (p.home / "config.toml").write_text(text)
    subprocess.run(["chown", "-R", f"{p.uid}:{p.uid}", str(p.home)], check=True)


@pytest.mark.parametrize("name", list(PRESETS))
def test_two_sessions_of_a_preset_make_one_commit_at_most(
    name: str, nonroot_realistic: NonrootPienv
) -> None:
    p = nonroot_realistic
    preset = PRESETS[name]
    configure(p, f'[agent]\npreset = "{name}"\n')
    started = time.monotonic()
    try:
        if preset.manager == "pip":
            # The realistic base has python3 but no pip (on purpose: a stock Node image): the
            # install fails saying so, before any interface starts...
            r = p("run", check=False)
            assert r.code == 1, r.out + r.err
            assert "pip" in r.err and "missing" in r.err, r.err
            # ...and works once the user installed pip the way the message says (a run of
            # their own, with the image's sudo), as on a Python base.
            p("run", "--", "sh", "-c", PIP_INSTALL)
        said = f"installed {name} {preset.version} as"  # pienv's line, not pip's
        code, out = tty_session(p, QUIT[name], said.encode(), wait=900)
        assert said in out, out[-3000:]
        assert code in QUIT_CODES, (code, out[-3000:])
        _await_background_commits(p.home, timeout=120)
        # A login where the preset keeps it: a volume, so no commit and no layer.
        state = f"/home/agent/{preset.state[0]}/planted-login.json"
        p("run", "--", "sh", "-c", f"echo '{{\"k\": 1}}' > {state}")
        head = p.head()
        code, out = tty_session(p, QUIT[name], b"", wait=0)
        assert code in QUIT_CODES, (code, out[-3000:])
        _await_background_commits(p.home, timeout=120)
        if p.head() != head:
            shown = p("show", "HEAD").out
            pytest.fail(f"{name}: the second session committed:\n{shown[-3000:]}")
        assert p("run", "--", "cat", state).out == '{"k": 1}\n'
        assert not [x for x in layer_paths(head) if x.endswith("planted-login.json")]
    finally:
        print(f"{name}: {time.monotonic() - started:.0f} s")
        remove_volumes(p)
