#!/usr/bin/env python3
"""No-op `pienv run -- true` against plain `docker run --rm --init IMAGE true`, interleaved.

Usage: python bench/run_overhead.py [--rounds N] [--image IMAGE] [--clean-venv]

Prints the median of each and their ratio (target <= 1.3). Uses a throwaway store and
removes its images afterwards. pienv runs under this interpreter, or with --clean-venv under
a fresh venv holding only pienv and its dependencies (what `pipx install .` gives a user):
an interpreter whose site-packages run extra .pth start-up hooks pays for them on every
command, and that cost is the interpreter's, not pienv's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _store

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def clean_venv(where: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = str(where / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(REPO)], check=True)
    return python


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--image", default="pienv-test/busybox-git:2")
    ap.add_argument("--clean-venv", action="store_true", help="measure pienv from a fresh venv")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        python = clean_venv(Path(tmp) / "venv") if args.clean_venv else sys.executable
        env = {**os.environ, "PIENV_HOME": f"{tmp}/store", "PIENV_BASE_IMAGE": args.image}
        ws = f"{tmp}/ws"
        os.mkdir(ws)
        pienv = [python, "-m", "pienv", "run", "--", "true"]
        timed(pienv, env, ws)  # first run creates the root commit: not measured
        head = subprocess.run([python, "-m", "pienv", "log", "--json", "-n", "1"],
                              env=env, cwd=ws, capture_output=True, text=True, check=True)
        image = json.loads(head.stdout)[0]["id"]
        docker = ["docker", "run", "--rm", "--init", image, "true"]
        timed(docker, env, ws)
        p_times, d_times = [], []
        for _ in range(args.rounds):
            d_times.append(timed(docker, env, ws))
            p_times.append(timed(pienv, env, ws))
        p, d = statistics.median(p_times), statistics.median(d_times)
        where = "clean venv" if args.clean_venv else python
        print(f"pienv from           {where}")
        print(f"docker run --rm      median {d:.3f} s  (n={args.rounds})")
        print(f"pienv run -- true    median {p:.3f} s  (n={args.rounds})")
        print(f"ratio                {p / d:.2f}  (target <= 1.30)")
        _store.drop(Path(tmp) / "store")


if __name__ == "__main__":
    main()
