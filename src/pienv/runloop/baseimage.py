"""The base image: PIENV_BASE_IMAGE, or `base-images/default` built for the host user."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pienv.context import Context
from pienv.errors import EngineError, UsageError

BASE_TAG = "pienv-base:default"


def base_images_dir() -> Path:
    """Where `base-images/` is: inside the wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "base-images", here.parent.parent / "base-images"):
        if (candidate / "default" / "Dockerfile").is_file():
            return candidate
    raise UsageError("base-images/default is missing from this pienv installation")


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def build_args() -> dict[str, str]:
    # uid 0 already exists in the image: a root host user gets the usual 1000 for `agent`
    # (root in the container can still write everything the agent owns).
    return {"AGENT_UID": str(os.getuid() or 1000), "AGENT_GID": str(os.getgid() or 1000)}


@dataclass(frozen=True)
class BaseResult:
    image: str
    built: bool
    source: str


def build(ctx: Context, directory: Path | None, on_line: Callable[[str], None]) -> BaseResult:
    context = directory or base_images_dir() / "default"
    if not (context / "Dockerfile").is_file():
        raise UsageError(f"no Dockerfile in {context}")
    try:
        image = ctx.engine().build(context, BASE_TAG, build_args(), on_line)
    except EngineError as exc:
        if directory is not None:  # the user's own Dockerfile: its error says it all
            raise EngineError(exc.message, hint=f"fix {context / 'Dockerfile'}") from exc
        raise EngineError(
            exc.message,
            hint="the default base pulls ubuntu:24.04 and NodeSource: it needs a registry; "
            "or set PIENV_BASE_IMAGE to an image this engine already has",
        ) from exc
    return BaseResult(image=image, built=True, source=str(context))


def ensure(ctx: Context, on_line: Callable[[str], None] | None = None) -> BaseResult:
    """The image new roots start from: PIENV_BASE_IMAGE, else the default base (built once)."""
    engine = ctx.engine()
    named = os.environ.get("PIENV_BASE_IMAGE")
    if named:
        info = engine.inspect_image(named)
        if info is None:
            raise UsageError(
                f"PIENV_BASE_IMAGE={named}: no such image on this engine",
                hint="build or pull it first, or unset PIENV_BASE_IMAGE to build the default",
            )
        return BaseResult(image=named, built=False, source="PIENV_BASE_IMAGE")
    if engine.inspect_image(BASE_TAG) is not None:
        return BaseResult(image=BASE_TAG, built=False, source=BASE_TAG)
    return build(ctx, None, on_line or (lambda _line: None))
