"""The realistic tier: pienv on a stock Debian bookworm + Node 22 image (tests/realistic/build.sh)
instead of the busybox test base."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import Pienv

pytestmark = [pytest.mark.engine, pytest.mark.realistic]


def test_realistic_image_is_a_stock_image(realistic_image: str) -> None:
    """What the tier promises the tests built on it: Node 22 and npm on PATH, sudo, and no
    user prepared for pienv (no `agent`, empty /home)."""
    script = "node --version; npm --version; command -v sudo; ls -A /home; getent passwd agent"
    proc = subprocess.run(
        ["docker", "run", "--rm", realistic_image, "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.split()
    assert lines[0] == "v22.23.3"
    assert lines[1].startswith("10.")
    assert lines[2] == "/usr/bin/sudo"
    assert len(lines) == 3, proc.stdout  # nothing in /home, no agent user
    assert proc.returncode == 2  # getent: not found


def test_realistic_image_reaches_npm_and_debian(realistic_image: str) -> None:
    """The recipe's network part: the npm registry over https through the proxy (the host's CA
    bundle copied in, NODE_EXTRA_CA_CERTS) and Debian's mirror over http, as the agent tests
    on this tier need to install things."""
    script = "npm view left-pad version && apt-get update -qq && apt-cache policy jq | head -1"
    proc = subprocess.run(
        ["docker", "run", "--rm", realistic_image, "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1.3.0", "jq:"], proc.stdout


def test_realistic_run_node_and_noop(realistic_pienv: Pienv) -> None:
    p = realistic_pienv
    # The first run after the root commit may still commit Docker's mount points on this
    # merged-/usr base; from then on a no-op run must add nothing.
    p("run", "--", "true")
    head = p.head()
    r = p("run", "--", "node", "--version")
    assert r.out.strip() == "v22.23.3"
    r = p("run", "--", "true")
    assert "no commit" in r.err
    assert p.head() == head


def test_realistic_diff_packages_sees_what_runs_install(realistic_pienv: Pienv) -> None:
    """`diff --packages` lists what a run really installs: an apt package, and `npm install -g`
    and `pip install --user`, which a run puts in the agent's home (~/.local: the wrapper's
    NPM_CONFIG_PREFIX), not in /usr/local."""
    p = realistic_pienv
    p("run", "--", "true")
    p("tag", "before")
    p(
        "run",
        "--",
        "bash",
        "-c",
        "npm install -g --silent left-pad@1.3.0 && "
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip "
        ">/dev/null && pip install -q --user --break-system-packages six==1.16.0",
    )
    data = json.loads(p("diff", "before", "--packages", "--json").out)["packages"]
    assert data["npm"] == {"added": ["left-pad 1.3.0"], "removed": [], "upgraded": []}
    assert "six 1.16.0" in data["pip"]["added"]
    assert any(a.startswith("python3-pip ") for a in data["dpkg"]["added"])
    # Debian's own dist-packages are dpkg's: python3-pip is not listed again under pip.
    assert not any(a.startswith("pip ") for a in data["pip"]["added"]), data["pip"]


def test_realistic_run_cannot_set_file_capabilities_and_commit_drops_user_xattrs(
    realistic_pienv: Pienv,
) -> None:
    """Pins what a run can leave in a file's extended attributes (docs/concepts.md,
    docs/security.md): a run has no CAP_SETFCAP (rule 13), so even root cannot write file
    capabilities (security.capability) into the environment; `user.*` attributes are set in
    the run but not committed (Docker's layer tars carry security.capability alone; if an
    engine starts keeping user.*, this test says so)."""
    p = realistic_pienv
    p("run", "--", "true")
    cap = "01000002" + "00040000" + "00" * 12  # v2, effective; permitted: cap_net_bind_service
    write = (
        "import os; open('/opt/x', 'w').close(); "
        "os.setxattr('/opt/x', 'user.pienv', b'lost')\n"
        "try: os.setxattr('/opt/x', 'security.capability', bytes.fromhex('" + cap + "'))\n"
        "except PermissionError: print('no setfcap')\n"
        "print(sorted(os.listxattr('/opt/x')))"
    )
    r = p("run", "--", "python3", "-c", write)
    assert r.out.split("\n")[:2] == ["no setfcap", "['user.pienv']"], r.out  # root in the run
    r = p("run", "--", "python3", "-c", "import os; print(sorted(os.listxattr('/opt/x')))")
    assert r.out.strip() == "[]"


def test_realistic_diff_of_800_paths_is_quick(realistic_pienv: Pienv) -> None:
    """The engine writing out the whole image for every diff took 7-10 s here; reading the
    layers above the shared base takes well under a second (margin for a loaded machine)."""
    import time

    p = realistic_pienv
    p("run", "--", "true")
    p(
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p ~/many && cd ~/many && for i in $(seq 800); do : > f$i; done",
    )
    start = time.monotonic()
    r = p("diff", "HEAD~1", "HEAD")
    took = time.monotonic() - start
    assert r.out.splitlines()[0].endswith(": 801 added, 0 changed, 0 deleted"), r.out[:200]
    assert took < 2.0, f"diff of 800 paths took {took:.2f} s"


def test_shell_keeps_the_run_path_order_over_etc_profile(realistic_pienv: Pienv) -> None:
    """Debian's /etc/profile resets PATH: `pienv shell`'s npm must be the one `pienv run`
    (and `diff --packages`) resolves, ~/.local/bin first."""
    import os
    import sys

    run_path = realistic_pienv("run", "--no-commit", "--", "sh", "-c", "echo $PATH").out.strip()
    assert run_path.split(":")[0].endswith("/.local/bin")
    proc = subprocess.run(
        ["script", "-qec", f"{sys.executable} -m pienv shell --no-commit", "/dev/null"],
        cwd=realistic_pienv.repo,
        env=realistic_pienv.env,
        capture_output=True,
        text=True,
        timeout=120,
        input="echo P=$PATH; exit\n",
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("P=/"))
    shell_path = line.removeprefix("P=").strip().split(":")
    assert shell_path[: len(run_path.split(":"))] == run_path.split(":"), (line, run_path)
    assert os.sep in shell_path[0]
