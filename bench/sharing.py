#!/usr/bin/env python3
"""Remotes: `pienv clone` of a realistic env branch against `docker pull` of the same images,
and what a push of one more run sends.

Usage: python bench/sharing.py [--rounds N] [--base IMAGE]

- A branch on the realistic base (Debian bookworm + Node 22, tests/realistic/build.sh; 469 MB)
  with three runs: a 30 MB tool under /opt, 3,000 small files, a config edit. Pushed to a
  Docker Distribution 2.8.2 (`docker-registry`) on 127.0.0.1 with its storage in a temp dir.
- clone vs pull: on a *private* dockerd (own data root, exec root, socket and bridge; its
  image store emptied between rounds, so every layer is downloaded each time), the time of
  `pienv clone REGISTRY/REPO` against `docker pull REGISTRY/REPO@DIGEST` of every commit of
  the branch in turn (the same manifests and layers, what a user without pienv would have to
  pull to get the history). Interleaved rounds, medians; target ratio <= 1.1.
- one more run: after the first push, one run that writes 2 MB; the push's wall time, the
  bytes the engine reported uploading, and how much the registry's storage grew.

Needs root (the private dockerd, its bridge). Everything it makes is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from registry import Registry  # noqa: E402  # the test fixture's registry

BRIDGE = "pienvbench0"


def sh(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} -> {proc.returncode}\n{proc.stderr[-2000:]}")
    return proc.stdout


def timed(*args: str, env: dict[str, str] | None = None) -> float:
    t = time.monotonic()
    sh(*args, env=env)
    return time.monotonic() - t


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class PrivateEngine:
    """A dockerd of our own, so its image store can be emptied (never the shared one's)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], capture_output=True)
        subprocess.run(["ip", "addr", "add", "10.237.0.1/24", "dev", BRIDGE], capture_output=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], capture_output=True)
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115  # lives with the process
        self.proc = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'docker.pid'}",
                f"--host={self.host}",
                f"--bridge={BRIDGE}",
                "--iptables=false",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        for _ in range(240):
            if (
                subprocess.run(["docker", "-H", self.host, "info"], capture_output=True).returncode
                == 0
            ):
                return
            time.sleep(0.5)
        raise SystemExit(f"private dockerd did not start: see {self.root / 'dockerd.log'}")

    def wipe(self) -> None:
        ids = sh("docker", "-H", self.host, "images", "-aq").split()
        if ids:
            sh("docker", "-H", self.host, "rmi", "-f", *sorted(set(ids)), check=False)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def make_branch(work: Path, base: str, location: str) -> dict[str, str]:
    """A store on the shared engine with three runs on ``base``, pushed; its environment."""
    env = {**os.environ, "PIENV_HOME": str(work / "store"), "PIENV_BASE_IMAGE": base}
    env["BENCH_WS"] = str(work / "ws")  # a plain directory: no worktree mount point commit
    env["NO_COLOR"] = "1"
    pienv = [sys.executable, "-m", "pienv"]
    ws = work / "ws"
    ws.mkdir()
    # Each run's commit before the next command (timing the push, not a background commit).
    (work / "store").mkdir()
    (work / "store" / "config.toml").write_text('[run]\ncommit = "foreground"\n')
    runs = [
        "mkdir -p /opt/tool && head -c 30000000 /dev/urandom > /opt/tool/bin",
        "mkdir -p /opt/many && cd /opt/many && i=0; while [ $i -lt 3000 ]; do "
        "echo $i > f$i; i=$((i+1)); done",
        "echo 'color = true' > /etc/tool.conf",
    ]
    for cmd in runs:
        subprocess.run([*pienv, "run", "--", "sh", "-c", cmd], env=env, cwd=ws, check=True)
    sh(*pienv, "remote", "add", "origin", location, env=env)
    t = timed(*pienv, "push", env=env)
    print(f"first push (base + 3 runs, {len(runs) + 1} commits): {t:.1f} s")
    return env


def branch_digests(location: str) -> list[str]:
    """The manifests of every commit of the remote's main, head first (its index)."""
    from pienv.registry import Client, parse_location

    got = Client(parse_location(location)).manifest("b-main")
    assert got is not None
    return [m["digest"] for m in json.loads(got[2])["manifests"]]


def one_more_run(env: dict[str, str], reg: Registry) -> None:
    pienv = [sys.executable, "-m", "pienv"]
    cmd = "head -c 2000000 /dev/urandom > /etc/more"
    subprocess.run([*pienv, "run", "--", "sh", "-c", cmd], env=env, cwd=env["BENCH_WS"], check=True)
    before = du(reg.root / "data")
    t = time.monotonic()
    out = json.loads(sh(*pienv, "push", "--json", env=env))
    took = time.monotonic() - t
    grew = du(reg.root / "data") - before
    print(
        f"push of one more run (2 MB written): {took:.2f} s, {out['commits']} commit, "
        f"engine uploaded {out['bytes'] / 1e6:.2f} MB, registry grew {grew / 1e6:.2f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", default=None, help="default: tests/realistic/build.sh's image")
    args = ap.parse_args()
    base = args.base or sh("bash", str(ROOT / "tests/realistic/build.sh")).split()[-1]
    work = Path(tempfile.mkdtemp(prefix="pienv-bench-sharing-", dir="/var/tmp"))
    reg = Registry(work / "registry").start()
    engine = PrivateEngine(work / "engine")
    location = f"{reg.address}/bench/env"
    env: dict[str, str] = {}
    try:
        env = make_branch(work, base, location)
        one_more_run(env, reg)
        digests = branch_digests(location)  # what a clone brings: every commit
        engine.start()
        private = {k: v for k, v in os.environ.items() if not k.startswith("PIENV_")}
        private |= {"DOCKER_HOST": engine.host, "NO_COLOR": "1"}
        clone_t, pull_t = [], []
        for n in range(args.rounds):
            for what in ("clone", "pull") if n % 2 == 0 else ("pull", "clone"):
                engine.wipe()
                if what == "clone":
                    home = work / f"clone{n}"
                    clone_t.append(
                        timed(
                            sys.executable,
                            "-m",
                            "pienv",
                            "clone",
                            location,
                            env={**private, "PIENV_HOME": str(home)},
                        )
                    )
                else:
                    t = time.monotonic()
                    for d in digests:
                        sh("docker", "-H", engine.host, "pull", "-q", f"{location}@{d}")
                    pull_t.append(time.monotonic() - t)
        c, p = statistics.median(clone_t), statistics.median(pull_t)
        print(
            f"clone of {len(digests)} commits: {c:.1f} s; docker pull of the same: {p:.1f} s; "
            f"ratio {c / p:.2f} (rounds: clone {[round(x, 1) for x in clone_t]}, "
            f"pull {[round(x, 1) for x in pull_t]})"
        )
    finally:
        engine.stop()
        reg.stop()
        if env:
            sys.path.insert(0, str(ROOT / "bench"))
            from _store import drop

            drop(Path(env["PIENV_HOME"]))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
