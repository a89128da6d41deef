"""Names for shell completion, read straight from the store's files: no Store object, no
engine, nothing that could fail loudly or take long under a TAB key."""

from __future__ import annotations

import contextlib
import json

from pienv.store import default_home


def ref_names(kinds: tuple[str, ...]) -> list[str]:
    """ "head" (HEAD), "branches" and/or "tags", in that order; [] without a store."""
    try:
        data = json.loads((default_home() / "refs.json").read_text())
    except (OSError, ValueError):
        return []
    names: list[str] = []
    for kind in kinds:
        names.extend(["HEAD"] if kind == "head" else sorted(data.get(kind, {})))
    return names


def commit_ids(prefix: str) -> list[str]:
    """Short ids of indexed commits starting with ``prefix``."""
    found: list[str] = []
    with contextlib.suppress(OSError), open(default_home() / "commits.jsonl") as fh:
        for line in fh:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                cid = str(json.loads(line)["id"])[:12]
                if cid.startswith(prefix) and cid not in found:
                    found.append(cid)
    return found


def remote_names() -> list[str]:
    """The store's remotes (remotes.json)."""
    try:
        data = json.loads((default_home() / "remotes.json").read_text())
    except (OSError, ValueError):
        return []
    return sorted(data.get("remotes", {})) if isinstance(data, dict) else []
