#!/usr/bin/env python3
"""Run overhead of pienv against plain Docker, on the busybox test base and the realistic base
(Debian bookworm + Node 22, tests/realistic/build.sh), side by side.

Usage: python bench/run_overhead.py [--rounds N] [--clean-venv] [--only busybox|realistic]

Rows, each the median of N interleaved rounds (one round runs every command once, in turn,
so load from other processes falls on all of them alike):

- no-op: `pienv run -- true` against `docker run --rm -v WS:/workspace IMAGE true` on the same
  image (the branch's head), target ratio <= 1.3 on both bases. Timed to pienv's exit, which
  is what a user waits for at the prompt: the commit is made in the background by the forked
  finalizer (`[run] commit = "background"`, the default). Before the next command starts,
  the bench waits (untimed) until the finalizer has freed the branch, so no commit overlaps
  a timed command;
- no-op, foreground: the same with `[run] commit = "foreground"` (the commit before exit);
- two no-ops back to back on one branch: `pienv run -- true; pienv run -- true`, timed to the
  second's exit (the second waits for the first's background commit), against two
  `docker run --rm` in a row: what a script running pienv in a loop pays;
- one-file change: `pienv run -- sh -c 'echo N > /f'` (a commit each time, in the foreground
  so the commit is timed) on busybox and on the realistic base grown to ~40k files, target:
  within 0.3 s of each other.

Uses throwaway stores and removes their images afterwards. pienv runs under this interpreter,
or with --clean-venv under a fresh venv holding only pienv and its dependencies (what
`pipx install .` gives a user).
"""

from __future__ import annotations

import argparse
import fcntl
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
BUSYBOX = "pienv-test/busybox-git:2"
BIG_FILES = 40_000


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


def realistic() -> str:
    out = subprocess.run(["bash", str(REPO / "tests" / "realistic" / "build.sh")],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def grown(image: str, files: int) -> str:
    """``image`` with small files added until it holds about ``files`` (cached by tag)."""
    tag = f"pienv-bench/grown:{image.rsplit(':', 1)[-1]}-{files}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    have = int(subprocess.run(
        ["docker", "run", "--rm", image, "sh", "-c", "find / -xdev | wc -l"],
        capture_output=True, text=True, check=True).stdout)
    more = max(files - have, 0)
    script = (f"mkdir -p /opt/filler && cd /opt/filler && i=0; while [ $i -lt {more} ]; do "
              "echo $i > f$i; i=$((i+1)); done")
    cid = subprocess.run(["docker", "create", image, "sh", "-c", script],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "start", "-a", cid], check=True)
    subprocess.run(["docker", "commit", cid, tag], check=True, capture_output=True)
    subprocess.run(["docker", "rm", cid], check=True, capture_output=True)
    return tag


class Subject:
    """One store on one base: its workspace, the pienv and docker commands to time."""

    def __init__(self, name: str, base: str, python: str, tmp: str) -> None:
        self.name, self.base = name, base
        self.home = Path(tmp) / f"store-{name}"
        self.ws = f"{tmp}/ws-{name}"
        os.mkdir(self.ws)
        self.env = {**os.environ, "PIENV_HOME": str(self.home), "PIENV_BASE_IMAGE": base}
        fg = Path(tmp) / f"foreground-{name}.toml"
        fg.write_text('[run]\ncommit = "foreground"\n')
        self.fg_env = {**self.env, "PIENV_CONFIG": str(fg)}
        self.python = python
        self.noop = [python, "-m", "pienv", "run", "--", "true"]
        timed(self.noop, self.env, self.ws)  # the root commit: not measured
        self.settle()
        self.docker = ["docker", "run", "--rm", "-v", f"{self.ws}:/workspace", self.head(),
                       "true"]
        timed(self.docker, self.env, self.ws)
        self.n = 0

    def settle(self) -> None:
        """Wait until no background commit holds the branch (untimed)."""
        fd = os.open(self.home / "locks" / "main.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)

    def pienv(self, cmd: list[str], env: dict[str, str] | None = None) -> float:
        took = timed(cmd, env or self.env, self.ws)
        self.settle()
        return took

    def pair(self, cmd: list[str]) -> float:
        start = time.perf_counter()
        timed(cmd, self.env, self.ws)
        timed(cmd, self.env, self.ws)
        took = time.perf_counter() - start
        self.settle()
        return took

    def head(self) -> str:
        out = subprocess.run([self.python, "-m", "pienv", "log", "--json", "-n", "1"],
                             env=self.env, cwd=self.ws, capture_output=True, text=True,
                             check=True).stdout
        return str(json.loads(out)[0]["id"])

    def change(self) -> list[str]:
        self.n += 1
        return [self.python, "-m", "pienv", "run", "--", "sh", "-c", f"echo {self.n} > /f"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clean-venv", action="store_true", help="measure pienv from a fresh venv")
    ap.add_argument("--only", choices=["busybox", "realistic"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        python = clean_venv(Path(tmp) / "venv") if args.clean_venv else sys.executable
        subjects = []
        if args.only != "realistic":
            subjects.append(Subject("busybox", BUSYBOX, python, tmp))
        if args.only != "busybox":
            real = realistic()
            subjects.append(Subject("realistic", real, python, tmp))
            subjects.append(Subject(f"realistic+{BIG_FILES // 1000}k", grown(real, BIG_FILES),
                                    python, tmp))
        times: dict[tuple[str, str], list[float]] = {}
        load = os.getloadavg()
        try:
            for _ in range(args.rounds):
                for s in subjects:
                    def add(what: str, took: float, s: Subject = s) -> None:
                        times.setdefault((s.name, what), []).append(took)

                    add("docker", timed(s.docker, s.env, s.ws))
                    add("noop", s.pienv(s.noop))
                    add("noop-fg", s.pienv(s.noop, s.fg_env))
                    add("docker2", timed(s.docker, s.env, s.ws) + timed(s.docker, s.env, s.ws))
                    add("pair", s.pair(s.noop))
                    add("change", s.pienv(s.change(), s.fg_env))
        finally:
            print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
                  f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            report(times, subjects, args.rounds, "clean venv" if args.clean_venv else python)
            for s in subjects:
                _store.drop(s.home)


def report(times: dict[tuple[str, str], list[float]], subjects: list[Subject], rounds: int,
           where: str) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"pienv from {where}; medians of {rounds} interleaved rounds")
    print(f"{'base':<16} {'docker run':>10} {'no-op':>8} {'ratio':>6} {'no-op fg':>9} {'ratio':>6}"
          f" {'2x docker':>10} {'2 no-ops':>9} {'ratio':>6} {'1-file change':>14}")
    for s in subjects:
        if (s.name, "change") not in med:
            continue
        d, p, f = med[(s.name, "docker")], med[(s.name, "noop")], med[(s.name, "noop-fg")]
        d2, p2, c = med[(s.name, "docker2")], med[(s.name, "pair")], med[(s.name, "change")]
        print(f"{s.name:<16} {d:>8.3f} s {p:>6.3f} s {p / d:>6.2f} {f:>7.3f} s {f / d:>6.2f}"
              f" {d2:>8.3f} s {p2:>7.3f} s {p2 / d2:>6.2f} {c:>12.3f} s")
    if len(subjects) == 3:
        gap = med[(subjects[2].name, "change")] - med[(subjects[0].name, "change")]
        print(f"1-file change, {subjects[2].name} minus busybox: {gap:+.3f} s (target <= 0.3)")


if __name__ == "__main__":
    main()
