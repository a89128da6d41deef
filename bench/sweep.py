#!/usr/bin/env python3
"""The after-run sweep (runloop/sweep.py) on a workspace of N files (default 100k).

Usage: python bench/sweep.py [--files N] [--rounds R]

Rows (medians of R rounds): the scan of a workspace where the run changed nothing (every
entry lstat'ed, none examined further), and where it touched every file (each examined:
mode, owner, security.capability). The fix container is not timed here: it starts only
when something was found (tests/test_box.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pienv.runloop.sweep import scan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_dir = 1000
        for d in range(max(args.files // per_dir, 1)):
            os.mkdir(root / f"d{d}")
            for f in range(per_dir):
                (root / f"d{d}" / f"f{f}").touch()
        for name, since in (("untouched", time.time() + 3600), ("all touched", 0.0)):
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                found = scan(root, since, os.getuid())
                times.append(time.perf_counter() - start)
            print(f"{name:12} {args.files} files: {statistics.median(times):.3f} s "
                  f"(found {len(found)}) load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
