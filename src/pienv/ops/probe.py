"""A command in a throwaway container from an env commit: bisect's probes, rebase's and
export's replays. The same wrapper and run user as `pienv run` (so PATH, HOME and the
npm prefix are what a run sees), no env commit, no ref moved."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pienv import gitrepo
from pienv.context import Context
from pienv.model import LABEL, SCHEMA
from pienv.runloop.commits import host_ids
from pienv.runloop.sandbox import (
    ENV_FILE,
    WORKSPACE,
    WRAPPER,
    container_env,
    env_file,
    run_name,
    write_env_file,
)

OUTPUT_KEEP = 4000  # bytes of a probe's output kept for its result


@dataclass(frozen=True)
class ProbeResult:
    exit_code: int
    output: str  # the last OUTPUT_KEEP bytes of stdout + stderr


def probe_labels(ctx: Context, role: str) -> dict[str, str]:
    # The store's label: two stores never see each other's probes; `role` keeps them out of
    # the orphan search (which looks for role=run).
    return {LABEL + "schema": str(SCHEMA), LABEL + "store": ctx.store_id, LABEL + "role": role}


def replay_env(ctx: Context, branch: str | None) -> dict[str, str]:
    """What every run's environment holds whatever the host: HOME, USER, the agent's git
    identity. None of the host's variables: a replay must not depend on the shell it was
    started from, and a Dockerfile (export) must carry no value of the user's."""
    return container_env(ctx.config, {}, (), branch)


@contextlib.contextmanager
def container(
    ctx: Context,
    image: str,
    command: tuple[str, ...],
    workspace: Path | None,
    role: str,
    user: str = "",
    workdir: str = "",
    branch: str | None = None,
) -> Iterator[str]:
    """A created (not started) container running ``command`` the way a run on ``branch``
    does (the same wrapper, env file, run user, and the branch's egress policy: a probe or a
    replay runs the agent's environment, so it gets the agent's network boundary), removed
    on the way out."""
    from pienv.runloop import egressrun

    token = os.urandom(6).hex()
    env_path = env_file(ctx.store.runs_dir, token)
    ctx.store.runs_dir.mkdir(parents=True, exist_ok=True)
    agent = ctx.config.agent_named(None)
    boundary = egressrun.prepare(ctx, branch, None, agent, {}, False)
    env = replay_env(ctx, branch) | dict(boundary.env if boundary else {})
    write_env_file(env_path, env)
    binds = {str(env_path): {"bind": ENV_FILE, "mode": "ro"}}
    if workspace:
        binds[str(workspace)] = {"bind": WORKSPACE, "mode": "rw"}
    cid = ""
    try:
        cid = ctx.engine().create(
            image,
            entrypoint=["/bin/sh", "-c", WRAPPER, ENV_FILE, *command],
            user=user or host_ids(),
            workdir=workdir or WORKSPACE,
            binds=binds,
            labels=probe_labels(ctx, role),
            network=boundary.network if boundary else ctx.config.network,
            dns=boundary.dns if boundary else (),
            cap_drop=boundary.cap_drop if boundary else (),
            name=run_name(ctx.store_id, token) + f"-{role}",
        )
        yield cid
    finally:
        if cid:
            ctx.engine().remove_container(cid, force=True)
        if boundary is not None and boundary.audit_id:
            # Kept as a run's is (`pienv egress log` shows what a probe reached).
            with contextlib.suppress(Exception):
                egressrun.keep_audit(ctx, boundary.audit_id, boundary.proxy)
        with contextlib.suppress(OSError):
            env_path.unlink()


def start(ctx: Context, cid: str) -> ProbeResult:
    """Start ``cid``, collect its output, and return its exit code (the container stays)."""
    engine = ctx.engine()
    out = bytearray()
    for chunk_out, chunk_err in engine.run_streaming(cid):
        for chunk in (chunk_out, chunk_err):
            if chunk:
                out += chunk
                del out[:-OUTPUT_KEEP]
    code = engine.wait(cid)
    return ProbeResult(code, out.decode(errors="replace"))


def run(
    ctx: Context,
    image: str,
    command: tuple[str, ...],
    workspace: Path | None,
    branch: str | None = None,
) -> ProbeResult:
    """``command`` in a throwaway container from ``image``; the container is removed."""
    with container(ctx, image, command, workspace, "probe", branch=branch) as cid:
        return start(ctx, cid)


@contextlib.contextmanager
def recorded_code(workspace: Path, head: str, code: str) -> Iterator[Path]:
    """A temporary directory holding the code recorded with a commit (its snapshot, else its
    HEAD), exported with `git archive`: the user's checkout is not touched."""
    tmp = Path(tempfile.mkdtemp(prefix="pienv-code-"))
    try:
        gitrepo.export_tree(workspace, code or head, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
