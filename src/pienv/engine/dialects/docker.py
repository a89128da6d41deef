"""Docker Engine: the reference every other dialect matches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pienv.engine.dialects.base import Calls, Dialect


class Docker(Dialect):
    name = "Docker"
    # Its tini (docker-init), bind-mounted for Init=true; on merged-/usr bases it lands at
    # /usr/sbin/docker-init through the /sbin link. Docker keeps /etc/hosts and friends in a
    # layer it never commits.
    own_mounts = ("/sbin/docker-init",)
    made_paths = ()
    default_network = "bridge"
    tmpfs_volume_options = "size=64m,mode=0700"

    def label_filters(self, filters: list[str]) -> list[str]:
        return filters

    def build_line(self, text: str) -> str:
        return text

    def build_step_runs(self, line: str) -> bool | None:
        return None  # "---> Running in ID" says a step runs

    def check_mounts(self, sources: Iterable[str]) -> None:
        return None

    def prepare_create(self, engine: Calls, config: dict[str, Any]) -> None:
        return None

    def commit_query(self, engine: Calls, cid: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # Docker applies the body's config

    def exists_after_404(self, headers: Mapping[str, str]) -> bool:
        return False
