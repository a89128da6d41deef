#!/usr/bin/env python3
"""1,000 state-changing runs on one branch: per-run time at the start and at the end must stay
flat (automatic flatten keeps the head below Docker's ~125-layer limit).

overlay2 makes each run a little slower per layer of the head (~2.5 ms here), and each flatten
resets that, so per-run time is a sawtooth with one tooth per flatten cycle. "Flat" therefore
compares whole cycles: the median of the first `flatten_at` runs against the last `flatten_at`.

Usage: python bench/depth.py [--runs N] [--image IMAGE]   (about 10 minutes for 1,000)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import _store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--image", default="pienv-test/busybox-git:2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"PIENV_HOME": f"{tmp}/store", "PIENV_BASE_IMAGE": args.image})
        from pienv.context import Context
        from pienv.ops import run as runmod
        from pienv.store import Store

        ws = Path(tmp) / "ws"
        ws.mkdir()
        ctx = Context(store=Store(Path(tmp) / "store"))
        times = []
        for i in range(args.runs):
            req = runmod.RunRequest(command=("sh", "-c", f"echo {i} >> /counter"))
            start = time.perf_counter()
            runmod.run(ctx, req, ws, os.environ, lambda b: None, lambda b: None)
            times.append(time.perf_counter() - start)
        k = min(ctx.config.flatten_at, args.runs // 2)  # one whole flatten cycle
        first, last = statistics.median(times[:k]), statistics.median(times[-k:])
        flattens = sum(1 for c in ctx.store.commits().values() if c.kind == "flatten")
        print(f"runs: {args.runs}, flattens: {flattens}")
        print(f"median per run, first {k}: {first:.3f} s; last {k}: {last:.3f} s "
              f"(ratio {last / first:.2f})")
        print(f"slowest run {max(times):.3f} s (a run that flattened first)")
        _store.drop(Path(tmp) / "store")


if __name__ == "__main__":
    main()
