#!/usr/bin/env python3
"""`pienv diff --packages` (and `flatten`) on the realistic base, whose head really changed
packages: an apt install (jq, python3-pip), a pip install and an `npm install -g`.

Usage: python bench/diff_packages.py [--rounds N] [--store DIR] [--no-flatten]

Builds a throwaway store on tests/realistic/build.sh's image (or reuses the one in --store,
kept afterwards, so a profile can be taken against it): BASE is the head after a first no-op
run, HEAD the head after the installs. Then, each the median of N interleaved rounds:

- `pienv diff --packages BASE HEAD` (target <= 1.5 s on this image), cold (neither image's
  package list kept in the store yet) and kept (both read before: answered from the store);
- baseline: `docker run --rm IMG cat /var/lib/dpkg/status` on HEAD's image (one container
  that reads one of the databases: what the engine alone costs);
- `pienv diff BASE HEAD` and the first `pienv show HEAD` (what the commits' layers hold: one
  export of HEAD's image, `docker save`) for scale.

Last (once, it rewrites the branch), `pienv flatten` of the realistic head.
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
INSTALLS = [
    # Debian's mirror over http; python3-pip brings pip-*.dist-info into dist-packages.
    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
    "--no-install-recommends jq python3-pip >/dev/null",
    # PyPI through the proxy (the image trusts its CA): /usr/local/lib/python3.11/dist-packages
    "pip install -q --break-system-packages --root-user-action=ignore six==1.16.0",
    # The npm registry through the proxy (NODE_EXTRA_CA_CERTS is set in the image).
    "npm install -g --silent left-pad@1.3.0",
    # pip --user: the agent home, as npm -g above (ops/sandbox.py's wrapper)
    "pip install -q --user --break-system-packages --root-user-action=ignore wcwidth==0.2.13",
]


def realistic() -> str:
    out = subprocess.run(["bash", str(REPO / "tests" / "realistic" / "build.sh")],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


class Store:
    def __init__(self, home: Path, base: str) -> None:
        self.home, self.ws = home, home.parent / "ws"
        self.ws.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PIENV_HOME": str(home), "PIENV_BASE_IMAGE": base,
                    "PYTHONPATH": str(REPO / "src")}

    def pienv(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "pienv", *args], env=self.env,
                              cwd=self.ws, check=True, capture_output=True, text=True).stdout

    def head(self) -> str:
        return str(json.loads(self.pienv("log", "--json", "-n", "1"))[0]["id"])

    def prepare(self) -> tuple[str, str]:
        """(BASE, HEAD); made once per store (the tag `bench-base` marks BASE)."""
        if (self.home / "refs.json").exists():
            refs = json.loads((self.home / "refs.json").read_text())
            if "bench-base" in refs.get("tags", {}):
                return refs["tags"]["bench-base"], self.head()
        self.pienv("run", "--", "true")
        base = self.head()
        self.pienv("tag", "bench-base", base)
        for script in INSTALLS:
            self.pienv("run", "-m", script.split()[0], "--", "bash", "-c", script)
        return base, self.head()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--store", type=Path, help="make or reuse the store here (kept)")
    ap.add_argument("--no-flatten", action="store_true")
    args = ap.parse_args()
    image = realistic()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.store.resolve() if args.store else Path(tmp) / "store"
        s = Store(home, image)
        try:
            t0 = time.perf_counter()
            base, head = s.prepare()
            print(f"store {home} on {image}: BASE {base[:12]}, HEAD {head[:12]} "
                  f"(made in {time.perf_counter() - t0:.0f} s)")
            print(s.pienv("diff", "--packages", base, head).rstrip())
            cmds = {
                "docker run --rm HEAD cat /var/lib/dpkg/status":
                    ["docker", "run", "--rm", head, "cat", "/var/lib/dpkg/status"],
                "pienv diff --packages BASE HEAD":
                    [sys.executable, "-m", "pienv", "diff", "--packages", base, head],
                "pienv diff BASE HEAD":
                    [sys.executable, "-m", "pienv", "diff", base, head],
            }
            show = [sys.executable, "-m", "pienv", "show", head]
            times: dict[str, list[float]] = {k: [] for k in [*cmds, "pienv show HEAD (first)"]}
            times["pienv diff --packages BASE HEAD (kept)"] = []
            for _ in range(args.rounds):
                for name, cmd in cmds.items():
                    if "--packages" in cmd:
                        # Cold: neither image's package list kept (changes/ID.packages.json).
                        for image in (base, head):
                            (home / "changes" / f"{image}.packages.json").unlink(missing_ok=True)
                    times[name].append(timed(cmd, s.env, str(s.ws)))
                times["pienv diff --packages BASE HEAD (kept)"].append(
                    timed(cmds["pienv diff --packages BASE HEAD"], s.env, str(s.ws)))
                # The first show of a commit reads its layers; later ones answer from the store.
                (home / "changes" / f"{head}.json").unlink(missing_ok=True)
                times["pienv show HEAD (first)"].append(timed(show, s.env, str(s.ws)))
            print(f"medians of {args.rounds} interleaved rounds; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            for name, ts in times.items():
                print(f"  {name:<48} {statistics.median(ts):7.3f} s"
                      f"  (min {min(ts):.3f}, max {max(ts):.3f})")
            if not args.no_flatten:
                size = int(subprocess.run(
                    ["docker", "image", "inspect", "-f", "{{.Size}}", head],
                    capture_output=True, text=True, check=True).stdout)
                t = timed([sys.executable, "-m", "pienv", "flatten"], s.env, str(s.ws))
                print(f"  pienv flatten (head {size / 1e6:.0f} MB, once)"
                      f"{'':<15} {t:7.3f} s; load average "
                      f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            if not args.store:
                _store.drop(home)


if __name__ == "__main__":
    main()
