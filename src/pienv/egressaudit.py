"""A run's egress audit: every connection attempt, kept in the store beside the commit.

The proxy appends JSON lines (``open``/``deny``/``error`` when it decides, ``close`` with the
bytes when a connection ends); pienv copies the run's file out of the proxy when the run ends
and keeps it as egress/audit/RUN.jsonl, naming RUN in the commit's ``dev.pienv.egress-audit``
label. Pure: parsing, merging, the allow-list a run's traffic suggests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pienv.egress import DEFAULT_PORTS


@dataclass(frozen=True)
class Attempt:
    time: str  # UTC, RFC 3339
    host: str
    port: int
    allowed: bool
    sent: int | None  # None: the connection had not ended when the run did
    received: int | None
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def parse(lines: Iterable[bytes | str]) -> list[Attempt]:
    """The attempts in a proxy audit (torn or foreign lines are skipped)."""
    opened: dict[Any, dict[str, Any]] = {}
    closed: dict[Any, dict[str, Any]] = {}
    order: list[Any] = []
    for raw in lines:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(event, dict) or "id" not in event:
            continue
        key = event["id"]
        kind = event.get("event")
        if kind in ("open", "deny"):
            opened[key] = event
            order.append(key)
        elif kind == "close":
            closed[key] = event
        elif kind == "error" and key in opened:
            opened[key] = {**opened[key], "why": event.get("why", ""), "failed": True}
    out = []
    for key in order:
        e = opened[key]
        c = closed.get(key, {})
        ok = e.get("event") == "open"
        out.append(
            Attempt(
                time=_rfc3339(float(e.get("t", 0))),
                host=str(e.get("host", "")),
                port=int(e.get("port", 0)),
                allowed=ok,
                sent=int(c["sent"]) if "sent" in c else (0 if not ok else None),
                received=int(c["received"]) if "received" in c else (0 if not ok else None),
                why=str(e.get("why", "")),
            )
        )
    return out


def save(root: Path, run_id: str, raw: bytes) -> Path:
    """Keep a run's raw audit in the store (written whole, atomically)."""
    from pienv.store import write_atomic

    path = root / "egress" / "audit" / f"{run_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, raw)
    return path


def load(root: Path, run_id: str) -> list[Attempt] | None:
    """A run's attempts, or None when the store keeps no audit for it."""
    try:
        data = (root / "egress" / "audit" / f"{run_id}.jsonl").read_bytes()
    except OSError:
        return None
    return parse(data.splitlines())


def learn(attempts: Iterable[Attempt]) -> list[str]:
    """The allow rules that would have let every attempt through, sorted."""
    rules = {a.host if a.port in DEFAULT_PORTS else f"{a.host}:{a.port}" for a in attempts}
    return sorted(r for r in rules if r)


def denied_hosts(attempts: Iterable[Attempt]) -> list[str]:
    return learn(a for a in attempts if not a.allowed)
