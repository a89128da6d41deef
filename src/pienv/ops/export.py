"""`pienv export --dockerfile [REV]`: a branch as a Dockerfile, by the same replay as
`pienv rebase` (ops.replay): one RUN per replayable run, in the run's user, working
directory and wrapper (so PATH, HOME and npm's prefix are what the run had), interactive
sessions listed as comments to redo by hand.

It starts from the branch's base (a build argument, so a team can point it at a registry
copy) with pienv's small root layer unpacked on it (the host user's passwd entry, home, sudo
rule, mount points: a gzipped tar inline, a few KiB); where that layer cannot be carried so,
from the root commit itself."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from pienv.context import Context
from pienv.engine import INIT_MOUNTS
from pienv.errors import PienvError
from pienv.model import Commit, JsonResult, short
from pienv.ops import probe, replay
from pienv.runloop.commits import host_ids
from pienv.runloop.sandbox import ENV_FILE, WRAPPER

# What a label may hold to become a Dockerfile instruction's argument: labels come with a
# pulled branch too, and a newline or a `$` there would add or change instructions.
_PLAIN = {
    "base": re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*"),
    "user": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"),
    "workdir": re.compile(r"/[A-Za-z0-9_./@+,=-]*"),
}


def plain(what: str, value: str) -> str:
    """``value`` when it is a plain base image, user or working directory; else refuse."""
    if not _PLAIN[what].fullmatch(value):
        raise PienvError(
            f"the recorded {what} {value!r} is not a plain value (a label from another "
            "store?): not writing it into a Dockerfile"
        )
    return value


@dataclass(frozen=True)
class Exported(JsonResult):
    head: str
    root: str
    dockerfile: str
    replayed: int
    by_hand: int


def _comment(text: str) -> str:
    return "\n".join(f"# {line}" for line in text.splitlines() or [""])


def run_line(command: tuple[str, ...], env: dict[str, str], exit_code: int | None) -> str:
    """The RUN of one replayed run: exec form (JSON, so any argument survives), through
    `env` (a RUN has no env file) and pienv's wrapper. A run that exited non-zero, and was
    committed so, must not stop the build when it exits the same way again."""
    argv = ["/bin/sh", "-c", WRAPPER, ENV_FILE, *command]
    if exit_code:
        check = f'"$0" "$@"; c=$?; [ $c -eq 0 ] || [ $c -eq {exit_code} ] || exit $c'
        argv = ["/bin/sh", "-c", check, *argv]
    pairs = [f"{k}={v}" for k, v in sorted(env.items())]
    return "RUN " + json.dumps(["env", *pairs, *argv])


def root_layer(ctx: Context, root: str, base: str) -> bytes | None:
    """The root commit's own layers (pienv's files for the host user, the mount points: what
    it holds beyond ``base``) as a gzipped tar, or None when the base is gone or they hold
    what a tar cannot carry over (a whiteout, a device). Headers come from the engine's
    layers (owners, modes, times as committed), file contents from a never-started
    container of the root."""
    import copy
    import gzip
    import io
    import tarfile

    engine = ctx.engine()
    base_info = engine.inspect_image(base)
    if base_info is None:
        return None
    # (Podman may add an empty layer to a commit: every layer past the base's counts.)
    own = engine.image_layers(root)[len(base_info.layers) :]
    latest = {h.name: h for layer in own for h in layer}
    # The engine's own paths (init, /etc/hosts, Podman's /run/.containerenv and /etc/mtab):
    # every engine makes them again, and a build's RUN has them mounted (busy to tar).
    ours = {p.strip("/") for p in (*INIT_MOUNTS, *(p for p, _ in engine.made_paths()))}
    headers = [h for n, h in latest.items() if n.removeprefix("./").strip("/") not in ours]
    if any(".wh." in h.name or not (h.isfile() or h.isdir() or h.issym()) for h in headers):
        return None
    cid = engine.create_stopped(root, kind="export")
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
            for h in headers:
                entry = copy.copy(h)
                if not h.isfile():
                    out.addfile(entry)
                    continue
                data = engine.read_archive(cid, "/" + h.name.removeprefix("./"))
                with tarfile.open(fileobj=io.BytesIO(data or b""), mode="r:") as one:
                    member = one.next()
                    fh = one.extractfile(member) if member is not None else None
                    content = fh.read() if fh is not None else b""
                entry.size = len(content)
                out.addfile(entry, io.BytesIO(content))
    finally:
        engine.remove_container(cid, force=True)
    return gzip.compress(buf.getvalue(), mtime=0)


# A RUN argument stays well under the kernel's 128 KiB limit for one argument.
INLINE_MAX = 96 << 10


def _from_lines(ctx: Context, root: Commit, base: str) -> list[str]:
    """FROM the base with pienv's root layer unpacked on it; else FROM the root commit."""
    layer = root_layer(ctx, root.id, base) if base else None
    encoded = base64.b64encode(layer).decode() if layer else ""
    if not encoded or len(encoded) > INLINE_MAX:
        return [
            f"# The root commit {root.short}: base {base or '?'} plus pienv's layer for the "
            "host user.",
            f"ARG PIENV_ROOT={ctx.repository()}:{root.short}",
            "FROM ${PIENV_ROOT}",
        ]
    unpack = 'echo "$0" | base64 -d | tar -xzpf - -C /'
    return [
        f"ARG PIENV_BASE={plain('base', base)}",
        "FROM ${PIENV_BASE}",
        _comment(
            f"pienv's root layer ({root.short}): the host user's passwd/group entry, its home "
            "/home/agent,\nthe sudo rule when the base has sudo, the mount points of a run."
        ),
        "USER 0:0",
        "RUN " + json.dumps(["/bin/sh", "-c", unpack, encoded]),
    ]


def dockerfile(ctx: Context, rev: str | None) -> Exported:
    refs = ctx.refs()
    head = ctx.resolve(rev or "HEAD", refs)
    root, items = replay.plan(ctx.store.commits(), head, replay.session_commands(ctx.config))
    env = probe.replay_env(ctx, None)
    base = root.message.removeprefix("root: base ").split(" (")[0] if root.message else ""
    lines = [
        f"# pienv export of {rev or 'HEAD'} ({short(head)}): its runs, replayed.",
        "# Build: docker build -t NAME - < Dockerfile",
        *_from_lines(ctx, root, base if root.message.startswith("root: base ") else ""),
    ]
    user = "0:0" if lines[-1].startswith("RUN ") else ""
    workdir = ""
    replayed = by_hand = 0
    for item in items:
        c = item.commit
        if item.action == "skip":
            continue
        lines.append("")
        lines.append(_comment(f"{c.short} {c.message}"))
        if item.action == "manual":
            by_hand += 1
            cmd = " ".join(c.command) or "(none)"
            lines.append(_comment(f"BY HAND: {item.why}; command: {cmd}"))
            continue
        replayed += 1
        if (item.user or host_ids()) != user:
            user = item.user or host_ids()
            lines.append(f"USER {plain('user', user)}")
        if item.workdir != workdir:
            workdir = item.workdir
            lines.append(f"WORKDIR {plain('workdir', workdir)}")
        lines.append(run_line(c.command, env, c.exit_code))
    return Exported(head, root.id, "\n".join(lines) + "\n", replayed, by_hand)
