#!/usr/bin/env python3
"""No-op run with an egress policy against `docker run --rm`, beside run_overhead.py.

Usage: python bench/egress_overhead.py [--rounds N] [--clean-venv] [--only busybox|realistic]

Per base (the busybox test base, the realistic base): one store whose branch has an
allow-list (`pienv egress allow --no-agent example.org`: every run goes through the store's
proxy, is registered with it, joins its egress slot with the proxy as resolver; the
finalizer copies its audit out), one store without a policy (open), and
`docker run --rm -v WS:/workspace HEAD true`. Medians of N interleaved rounds, timed to
pienv's exit (the commit and the audit copy are in the background finalizer, waited for
untimed). Target: policy no-op <= 1.3x docker run. The proxy is started once, before the
rounds (it is long-lived and shared by the store's runs); the stores, their images and the
proxy are removed afterwards. pienv runs under this interpreter, or with --clean-venv under a
fresh venv holding only pienv and its dependencies (what `pipx install .` gives a user: its
modules compiled once at install; a development tree under PYTHONDONTWRITEBYTECODE compiles
every module pienv imports on every run, ~60 ms here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import _store
from run_overhead import BUSYBOX, Subject, clean_venv, realistic, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clean-venv", action="store_true", help="measure pienv from a fresh venv")
    ap.add_argument("--only", choices=["busybox", "realistic"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        python = clean_venv(Path(tmp) / "venv") if args.clean_venv else sys.executable
        bases = []
        if args.only != "realistic":
            bases.append(("busybox", BUSYBOX))
        if args.only != "busybox":
            bases.append(("realistic", realistic()))
        pairs = []
        for name, base in bases:
            open_s = Subject(f"{name}-open", base, python, tmp)
            policy_s = Subject(f"{name}-policy", base, python, tmp)
            timed(
                [python, "-m", "pienv", "egress", "allow", "--no-agent", "example.org"],
                policy_s.env,
                policy_s.ws,
            )
            policy_s.pienv(policy_s.noop)  # starts the proxy (and builds its image): untimed
            # The same container in the proxy's slot as plain Docker runs it: what the engine
            # itself costs for joining the slot's network namespace.
            holder = slot_holder(policy_s.home)
            policy_s.docker_internal = [  # type: ignore[attr-defined]
                *policy_s.docker[:3],
                "--network",
                f"container:{holder}",
                "--cap-drop",
                "NET_RAW",
                *policy_s.docker[3:],
            ]
            pairs.append((name, open_s, policy_s))
        times: dict[tuple[str, str], list[float]] = {}
        load = os.getloadavg()
        try:
            for _ in range(args.rounds):
                for name, open_s, policy_s in pairs:
                    times.setdefault((name, "docker"), []).append(
                        timed(policy_s.docker, policy_s.env, policy_s.ws)
                    )
                    times.setdefault((name, "docker-int"), []).append(
                        timed(policy_s.docker_internal, policy_s.env, policy_s.ws)  # type: ignore[attr-defined]
                    )
                    times.setdefault((name, "open"), []).append(open_s.pienv(open_s.noop))
                    times.setdefault((name, "policy"), []).append(policy_s.pienv(policy_s.noop))
        finally:
            print(
                f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after: "
                + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            med = {k: statistics.median(v) for k, v in times.items()}
            where = "a clean venv" if args.clean_venv else python
            print(f"pienv from {where}; medians of {args.rounds} interleaved rounds")
            print(
                f"{'base':<10} {'docker run':>10} {'open':>8} {'ratio':>6}"
                f" {'policy':>8} {'ratio':>6}"
                f" {'docker run in the slot':>30} {'policy ratio to it':>19}"
            )
            for name, _, _ in pairs:
                if (name, "policy") not in med:
                    continue
                d, o, p = med[(name, "docker")], med[(name, "open")], med[(name, "policy")]
                di = med[(name, "docker-int")]
                print(
                    f"{name:<10} {d:>8.3f} s {o:>6.3f} s {o / d:>6.2f} {p:>6.3f} s {p / d:>6.2f}"
                    f" {di:>28.3f} s {p / di:>19.2f}"
                )
            for _, open_s, policy_s in pairs:
                drop_proxy(policy_s.home)
                _store.drop(open_s.home)
                _store.drop(policy_s.home)


def slot_holder(home: Path) -> str:
    """The holder of the store's first egress slot (made by the untimed first run)."""
    import json

    from pienv import egressnet

    store_id = json.loads((home / "refs.json").read_text())["store_id"]
    return egressnet.names(store_id) + ".0"


def drop_proxy(home: Path) -> None:
    import json

    from pienv import egressnet
    from pienv.engine import Engine

    store_id = json.loads((home / "refs.json").read_text())["store_id"]
    egressnet.remove(Engine(), store_id)


if __name__ == "__main__":
    main()
