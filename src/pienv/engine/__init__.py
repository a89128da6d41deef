"""The only package that talks to Docker (and to engines that speak its API).

Its parts: records.py (what ops get instead of Docker's JSON: ImageInfo, ImageRow,
ContainerState, ContainerRow, EngineVersion, EngineInfo; failures as EngineError, HTTPError
with a status, MaxDepthExceeded), client.py (`Engine`: the connection and its JSON calls),
streams.py (attach, build output, export/import and archive streams), http.py (HTTP/1.1 on a
local unix socket, no docker-py), connect.py (which engine, and docker-py's client for the
rest), and dialects/ (one per engine, chosen once: everything that differs between Docker
and Podman). Ops import from here: `from pienv.engine import Engine, ImageInfo, ...`.
"""

from __future__ import annotations

from pienv.engine.client import INIT_MOUNTS, Engine
from pienv.engine.http import HTTPError
from pienv.engine.records import (
    EMPTY_LAYER,
    MAX_DEPTH,
    ContainerRow,
    ContainerState,
    ContainerStatus,
    EngineInfo,
    EngineVersion,
    ImageInfo,
    ImageRow,
)
from pienv.engine.streams import ChunkReader
from pienv.errors import MaxDepthExceeded

__all__ = [
    "EMPTY_LAYER",
    "INIT_MOUNTS",
    "MAX_DEPTH",
    "ChunkReader",
    "ContainerRow",
    "ContainerState",
    "ContainerStatus",
    "Engine",
    "EngineInfo",
    "EngineVersion",
    "HTTPError",
    "ImageInfo",
    "ImageRow",
    "MaxDepthExceeded",
]
