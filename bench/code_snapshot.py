"""Bench: the code snapshot every run records (gitrepo.snapshot_code) on a big repository.

    PYTHONPATH=src python3 bench/code_snapshot.py [FILES] [DIRTY]

Makes a repository of FILES small files (default 10,000) in a temporary directory, commits
them, dirties DIRTY tracked files and adds DIRTY untracked ones (default 50 each), then
times three snapshots and checks the user's index and `git status` are untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pienv import gitrepo


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    dirty = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    env = {
        **os.environ,
        **{f"GIT_{w}_{k}": "b" for w in ("AUTHOR", "COMMITTER") for k in ("NAME", "EMAIL")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        for i in range(files):
            d = root / f"d{i // 100}"
            d.mkdir(exist_ok=True)
            (d / f"f{i % 100}").write_text(f"file {i}\n" * 20)
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", "init"], cwd=root, check=True, env=env)
        for i in range(dirty):
            (root / f"d{i}" / "f0").write_text("changed\n")
            (root / f"new{i}").write_text("new\n")
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True)
        index = (root / ".git" / "index").read_bytes()
        for _ in range(3):
            began = time.perf_counter()
            snap = gitrepo.snapshot_code(root)
            print(f"{files} files, {2 * dirty} dirty paths: {time.perf_counter() - began:.3f} s")
            assert snap is not None and snap.code != snap.head
        after = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True)
        assert after.stdout == status.stdout and (root / ".git" / "index").read_bytes() == index


if __name__ == "__main__":
    main()
