#!/usr/bin/env python3
"""No-op `pienv run -- true` against plain `docker run --rm IMAGE true`, interleaved.

Usage: python bench/run_overhead.py [--rounds N] [--image IMAGE]
Prints the median of each and their ratio (target <= 1.3). Uses a throwaway store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--image", default="pienv-test/busybox-git:1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PIENV_HOME": f"{tmp}/store", "PIENV_BASE_IMAGE": args.image}
        ws = f"{tmp}/ws"
        os.mkdir(ws)
        pienv = [sys.executable, "-m", "pienv", "run", "--", "true"]
        timed(pienv, env, ws)  # first run creates the root commit: not measured
        head = subprocess.run([sys.executable, "-m", "pienv", "log", "--json", "-n", "1"],
                              env=env, cwd=ws, capture_output=True, text=True, check=True)
        import json

        image = json.loads(head.stdout)[0]["id"]
        docker = ["docker", "run", "--rm", "--init", image, "true"]
        timed(docker, env, ws)
        p_times, d_times = [], []
        for _ in range(args.rounds):
            d_times.append(timed(docker, env, ws))
            p_times.append(timed(pienv, env, ws))
        p, d = statistics.median(p_times), statistics.median(d_times)
        print(f"docker run --rm      median {d:.3f} s  (n={args.rounds})")
        print(f"pienv run -- true    median {p:.3f} s  (n={args.rounds})")
        print(f"ratio                {p / d:.2f}  (target <= 1.30)")
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


if __name__ == "__main__":
    main()
