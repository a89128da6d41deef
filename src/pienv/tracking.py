"""Remote-tracking refs: ``remotes.json`` beside refs.json (remote URLs, and what the last
fetch or push saw of each remote's branches and tags), written atomically under the store
lock. Read by revisions (``origin/main``), listings and prune; ops/remote.py writes it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pienv.errors import StoreError
from pienv.store import Store, write_atomic

REMOTES = "remotes.json"
SCHEMA = 1


@dataclass
class Remotes:
    urls: dict[str, str] = field(default_factory=dict)  # name -> REGISTRY/REPOSITORY
    # name -> {"branches": {name: id}, "tags": {name: id}}: what the last fetch/push saw.
    tracking: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def branches(self, remote: str) -> dict[str, str]:
        return self.tracking.setdefault(remote, {}).setdefault("branches", {})

    def tags(self, remote: str) -> dict[str, str]:
        return self.tracking.setdefault(remote, {}).setdefault("tags", {})


def load(store: Store) -> Remotes:
    path = store.home / REMOTES
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Remotes()
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is corrupt ({exc.__class__.__name__}); left untouched") from exc
    schema = data.get("schema", 0) if isinstance(data, dict) else None
    if isinstance(schema, int) and schema > SCHEMA:
        raise StoreError(f"{path} is newer than this pienv understands; left untouched")
    urls = data.get("remotes", {}) if isinstance(data, dict) else None
    tracking = data.get("tracking", {}) if isinstance(data, dict) else None
    if not isinstance(schema, int) or not _names(urls) or not _shaped(tracking):
        raise StoreError(f"{path} is corrupt (not what pienv writes); left untouched")
    assert isinstance(urls, dict) and isinstance(tracking, dict)  # for mypy: checked above
    return Remotes(dict(urls), dict(tracking))


def _names(d: object) -> bool:
    """Whether ``d`` is a {str: str} mapping."""
    return isinstance(d, dict) and all(isinstance(v, str) for v in d.values())


def _shaped(tracking: object) -> bool:
    """Whether ``tracking`` is {remote: {"branches"|"tags": {name: id}}}."""
    return isinstance(tracking, dict) and all(
        isinstance(per, dict)
        and all(k in ("branches", "tags") and _names(v) for k, v in per.items())
        for per in tracking.values()
    )


def save(store: Store, remotes: Remotes) -> None:
    """Write remotes.json (caller holds the store lock)."""
    data = {"schema": SCHEMA, "remotes": remotes.urls, "tracking": remotes.tracking}
    write_atomic(store.home / REMOTES, json.dumps(data, indent=1, sort_keys=True).encode())


def tracking_refs(store: Store) -> dict[str, str]:
    """Every remote-tracking branch as ``REMOTE/BRANCH`` -> commit id."""
    r = load(store)
    return {f"{name}/{b}": cid for name in r.urls for b, cid in r.branches(name).items()}


def tracked_commits(store: Store) -> list[str]:
    """Heads prune must keep: remote-tracking branches and tags."""
    r = load(store)
    return [c for name in r.urls for c in (*r.branches(name).values(), *r.tags(name).values())]


def resolve_tracking(store: Store, text: str) -> str | None:
    """``REMOTE/BRANCH`` -> commit id, for revisions; None if it names no tracking ref."""
    if "/" not in text or not (store.home / REMOTES).exists():
        return None
    return tracking_refs(store).get(text)
