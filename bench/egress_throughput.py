#!/usr/bin/env python3
"""Download speed through the egress proxy against `docker run --rm`, beside egress_overhead.py.

Usage: python bench/egress_throughput.py [--rounds N] [--mb N] [--only busybox|realistic]

A run with a policy reaches the outside only through two hops pienv runs in Python: the
slot's relay (127.0.0.1:3128 in the run's namespace, to the proxy's unix socket) and the
proxy (to the upstream). This measures what they cost a download, apart from the internet's
own speed: an HTTP server on this machine (its default route's address, which the proxy
reaches only because an allow rule names it exactly) serves N MB, and times each transfer
from the request to the last byte written. Per base, interleaved rounds of:

- `docker run --rm IMAGE` fetching it on the default bridge (the baseline);
- `pienv run` in an open store (the same bridge, the run's box around it);
- `pienv run` on a branch whose allow-list names the server: plain HTTP through the proxy
  (busybox `wget`, `curl`), and on the realistic base also `curl -p`, a CONNECT tunnel: how
  every https download (npm, pip, the model API) goes.

Medians, in MB/s and as a ratio to the baseline. Throwaway stores, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import _store
from egress_overhead import drop_proxy
from run_overhead import BUSYBOX, Subject, realistic, timed

CHUNK = b"\0" * (1 << 20)


class Blobs(BaseHTTPRequestHandler):
    """GET /<id>/<mb>: <mb> MiB of zeros, the time from the request to the last write kept
    under <id>."""

    took: ClassVar[dict[str, float]] = {}

    def do_GET(self) -> None:
        start = time.perf_counter()
        _, ident, mb = self.path.split("/")
        self.send_response(200)
        self.send_header("Content-Length", str(int(mb) << 20))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        for _ in range(int(mb)):
            self.wfile.write(CHUNK)
        self.wfile.flush()
        Blobs.took[ident] = time.perf_counter() - start

    def log_message(self, *args: object) -> None:
        pass


def host_address() -> str:
    """This machine's address on its default route's interface (not loopback, not docker0:
    the proxy never connects to its own networks)."""
    route = subprocess.run(
        ["ip", "-4", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout.split()
    dev = route[route.index("dev") + 1]
    addr = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True, text=True, check=True
    ).stdout.split()
    return addr[addr.index("inet") + 1].split("/")[0]


def fetch(tool: str, url: str) -> list[str]:
    """The container's command fetching ``url`` to nowhere."""
    if tool == "wget":
        return ["wget", "-q", "-O", "/dev/null", url]
    return ["curl", "-sS", "-o", "/dev/null", *(["-p"] if tool == "curl-tunnel" else []), url]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mb", type=int, default=200, help="MiB per download")
    ap.add_argument("--only", choices=["busybox", "realistic"])
    args = ap.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", 0), Blobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"{host_address()}:{server.server_address[1]}"
    bases = []
    if args.only != "realistic":
        bases.append(("busybox", BUSYBOX, ("wget",)))
    if args.only != "busybox":
        bases.append(("realistic", realistic(), ("curl", "curl-tunnel")))
    with tempfile.TemporaryDirectory() as tmp:
        python = sys.executable
        subjects = []
        for name, base, tools in bases:
            open_s = Subject(f"{name}-open", base, python, tmp)
            policy_s = Subject(f"{name}-policy", base, python, tmp)
            timed(
                [python, "-m", "pienv", "egress", "allow", "--no-agent", address],
                policy_s.env,
                policy_s.ws,
            )
            policy_s.pienv(policy_s.noop)  # starts the proxy: untimed
            subjects.append((name, tools, open_s, policy_s))
        speeds: dict[tuple[str, str, str], list[float]] = {}

        def once(
            key: tuple[str, str, str], prefix: list[str], script: str, subject: Subject
        ) -> None:
            ident = uuid.uuid4().hex
            subprocess.run(
                [*prefix, "sh", "-c", script.replace("ID", ident)],
                env=subject.env,
                cwd=subject.ws,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            subject.settle()
            took = Blobs.took.pop(ident)
            speeds.setdefault(key, []).append(args.mb * 1.048576 / took)

        load = os.getloadavg()
        try:
            for _ in range(args.rounds):
                for name, tools, open_s, policy_s in subjects:
                    url = f"http://{address}/ID/{args.mb}"
                    run = [python, "-m", "pienv", "run", "--"]
                    plain = " ".join(fetch(tools[0], url))
                    docker = ["docker", "run", "--rm", policy_s.head()]
                    once((name, tools[0], "docker"), docker, plain, open_s)
                    once((name, tools[0], "open"), run, plain, open_s)
                    for tool in tools:
                        once((name, tool, "policy"), run, " ".join(fetch(tool, url)), policy_s)
        finally:
            print(
                f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after: "
                + " ".join(f"{x:.2f}" for x in os.getloadavg())
            )
            report(speeds, subjects, args)
            for _, _, open_s, policy_s in subjects:
                drop_proxy(policy_s.home)
                _store.drop(open_s.home)
                _store.drop(policy_s.home)
            server.shutdown()


def report(
    speeds: dict[tuple[str, str, str], list[float]], subjects: list, args: argparse.Namespace
) -> None:
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"{args.mb} MiB downloads from this machine, medians of {args.rounds} rounds (MB/s)")
    print(
        f"{'base':<10} {'client':<12} {'docker run':>10} {'open':>8} {'ratio':>6}"
        f" {'policy':>8} {'ratio':>6}"
    )
    for name, tools, _, _ in subjects:
        d = med.get((name, tools[0], "docker"))
        o = med.get((name, tools[0], "open"))
        for tool in tools:
            p = med.get((name, tool, "policy"))
            if d is None or p is None:
                continue
            first = tool == tools[0] and o is not None
            print(
                f"{name:<10} {tool:<12} {d:>10.0f} "
                + (f"{o:>8.0f} {o / d:>6.2f}" if first and o else f"{'':>8} {'':>6}")
                + f" {p:>8.0f} {p / d:>6.2f}"
            )


if __name__ == "__main__":
    main()
