"""Bench helper: remove every image and container a throwaway store left on the engine."""

from __future__ import annotations

import json
from pathlib import Path


def drop(home: Path) -> int:
    """Untag all of the store's commits (chains go once their last tag does); images left."""
    from pienv.engine import Engine

    try:
        store_id = json.loads((home / "refs.json").read_text())["store_id"]
    except (OSError, ValueError, KeyError):
        return 0
    engine = Engine()
    label = [f"dev.pienv.store={store_id}"]
    for c in engine.containers(label):
        engine.remove_container(c.id, force=True)
    for img in engine.images(label):
        for ref in img.tags or (img.id,):
            engine.untag(ref)
    return len(engine.images(label))
