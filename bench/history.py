#!/usr/bin/env python3
"""`log`, `log --graph`, `branch`, `status`, `reflog` over a 1,000-commit store, beside
`git log --graph` over a 1,000-commit git repo made the same way (same forks).

The store is written directly (commit index + refs + reflog, as runs would leave them); these
commands answer from the store, so no images are needed. Usage: python bench/history.py
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 1000


def build_store(home: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from pienv.model import Commit
    from pienv.store import Store

    store = Store(home)
    store.init()
    rng = random.Random(1)
    commits: list[Commit] = []
    heads: dict[str, str] = {}
    branch = "main"
    for i in range(N):
        if i and i % 100 == 0:  # a fork every 100 commits, from a random earlier commit
            branch = f"b{i}"
            parent: str | None = rng.choice(commits).id
        else:
            parent = heads.get(branch)
        cid = f"{i:064x}"
        c = Commit(id=cid, parents=(parent,) if parent else (), branch=branch,
                   message=f"run: step {i} (exit 0)", created=f"2026-01-01T00:{i // 60 % 60:02d}:"
                   f"{i % 60:02d}.{i:06d}Z", size=1000, layers=3)
        commits.append(c)
        store.add_commit(c)
        with store.transaction(f"run: step {i}") as txn:
            txn.move_branch(branch, heads.get(branch), cid)
        heads[branch] = cid


def build_git(path: Path) -> None:
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    rng = random.Random(1)
    # fast-import stream with the same shape: a fork every 100 commits.
    lines, marks, branch = [], [], "main"
    for i in range(N):
        mark = i + 1
        if i and i % 100 == 0:
            branch, parent = f"b{i}", rng.choice(marks)
        else:
            parent = None if not marks or (i % 100 == 0) else None
        msg = f"step {i}"
        lines.append(f"commit refs/heads/{branch}\nmark :{mark}\n"
                     f"committer b <b@b> {1700000000 + i} +0000\ndata {len(msg)}\n{msg}\n")
        if i and i % 100 == 0:
            lines.append(f"from :{parent}\n")
        marks.append(mark)
        lines.append("\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input="".join(lines).encode(),
                   env=env, check=True)


def median_time(cmd: list[str], env: dict[str, str], cwd: Path, n: int = 7) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "store"
        build_store(home)
        gitrepo = Path(tmp) / "git"
        build_git(gitrepo)
        env = {**os.environ, "PIENV_HOME": str(home), "NO_COLOR": "1"}
        count = len(json.loads(subprocess.run(
            [sys.executable, "-m", "pienv", "log", "--all", "--json"], env=env, cwd=tmp,
            capture_output=True, text=True, check=True).stdout))
        print(f"store: {count} commits; git repo: {N} commits, forks every 100\n")
        git_t = median_time(["git", "log", "--graph", "--oneline", "--all"], env, gitrepo)
        print(f"{'git log --graph --oneline --all':<34} {git_t:.3f} s")
        for args in (["log"], ["log", "--graph", "--all"], ["branch"], ["status"], ["reflog"]):
            t = median_time([sys.executable, "-m", "pienv", *args], env, Path(tmp))
            verdict = "ok" if t < 0.3 else "OVER 0.3 s"
            print(f"{'pienv ' + ' '.join(args):<34} {t:.3f} s  ({t / git_t:.1f}x git)  {verdict}")


if __name__ == "__main__":
    main()
