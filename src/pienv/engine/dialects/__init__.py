"""One dialect per engine, chosen once when the engine is identified (from the headers of its
first answer): everything that differs between Docker and Podman lives in these modules, and
a new engine is a new module here (base.py says what a dialect answers)."""

from __future__ import annotations

from collections.abc import Mapping

from pienv.engine.dialects.base import Dialect
from pienv.engine.dialects.docker import Docker
from pienv.engine.dialects.podman import Podman

# Mount points any engine pienv supports makes for itself (its init, the files it bind-mounts):
# not changes of a run, whichever engine made them.
INIT_MOUNTS = (*Docker.own_mounts, *Podman.own_mounts)


def identify(headers: Mapping[str, str]) -> Dialect:
    """The dialect of the engine that sent these (lower-case) response headers. Free with any
    answer: Podman's compat API names itself in its headers."""
    server = headers.get("server", "")
    if "libpod-api-version" in headers or server.startswith("Libpod"):
        return Podman()
    return Docker()


__all__ = ["INIT_MOUNTS", "Dialect", "Docker", "Podman", "identify"]
