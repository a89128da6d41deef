"""A command in a throwaway container from an env commit: bisect's probes, rebase's and
export's replays. The same wrapper and run user as `pienv run` (so PATH, HOME and the
npm prefix are what a run sees), and the same box (runloop/box.py): these containers run
images the agent made, some with the workspace mounted read-write, so they get a run's
dropped capabilities, git metadata protections, mount gate, and after-run sweep and
quarantine. No env commit, no ref moved."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pienv import gitrepo
from pienv.context import Context
from pienv.errors import UsageError
from pienv.gitrepo import RepoInfo
from pienv.model import LABEL, SCHEMA
from pienv.runloop import box
from pienv.runloop.box import GitWatch
from pienv.runloop.commits import host_ids
from pienv.runloop.helpers import helper_labels
from pienv.runloop.launch import create, interruptible, uninterrupted
from pienv.runloop.pin import Gate
from pienv.runloop.plan import HostFacts, probe_spec
from pienv.runloop.sandbox import container_env, env_file, run_name, write_env_file
from pienv.runloop.spec import Mount
from pienv.runloop.sweep import Sweep, sweep
from pienv.runloop.workspace import find_workspace

if TYPE_CHECKING:
    from pienv.runloop.egressrun import EgressRun

OUTPUT_KEEP = 4000  # bytes of a probe's output kept for its result


@dataclass(frozen=True)
class ProbeResult:
    exit_code: int
    output: str  # the last OUTPUT_KEEP bytes of stdout + stderr
    notes: tuple[str, ...] = ()  # what the after-run checks defused (also on ctx.report)


@dataclass
class Probe:
    """A created probe container and what is checked after it (runloop/box.py)."""

    cid: str
    gate: Gate | None = None
    root: Path | None = None  # the workspace mounted read-write (None: none)
    repo: RepoInfo | None = None
    watch: GitWatch = field(default_factory=GitWatch)
    sweep: Sweep | None = None
    ended: bool = False  # the after-run checks ran
    egress: str = ""  # the policy hash it runs under ("": open), for a commit made of it
    egress_audit: str = ""  # the run whose audit the store keeps (its proxy token)

    def after(self, ctx: Context) -> list[str]:
        """What the command left on the host, defused: git metadata moved aside, planted
        privilege swept (each said on ``ctx.report`` too)."""
        if self.ended:
            return []
        self.ended = True
        notes: list[str] = []
        if self.root is not None:
            protect = ctx.config.protect_git
            notes += box.git_findings(self.root, self.repo, self.watch, protect)
        if self.sweep is not None:
            swept = sweep(ctx.engine(), self.sweep)
            notes += [swept] if swept else []
        for line in notes:
            ctx.report.note(line)
        return notes


def probe_labels(ctx: Context, role: str, workspace: Path | None) -> dict[str, str]:
    """The store (two stores never see each other's probes), the role (a helper kind, not
    a run: runloop/helpers.py), the pienv that made it and when, and the workspace it mounts
    read-write: a probe whose pienv was killed (kill -9) is listed by `pienv orphans`, and
    `pienv doctor` removes it and sweeps that workspace (ops/doctor.py)."""
    labels = {LABEL + "schema": str(SCHEMA), **helper_labels(ctx.store_id, role)}
    if workspace is not None:
        labels[LABEL + "workspace"] = str(workspace)
    return labels


def replay_env(ctx: Context, branch: str | None) -> dict[str, str]:
    """What every run's environment holds whatever the host: HOME, USER, the agent's git
    identity. None of the host's variables: a replay must not depend on the shell it was
    started from, and a Dockerfile (export) must carry no value of the user's."""
    return container_env(ctx.config, {}, (), branch)


def _checked(
    ctx: Context, workspace: Path | None
) -> tuple[Path | None, RepoInfo | None, tuple[Mount, ...]]:
    """The workspace's real path, its repository and its git metadata mounts, through the
    mount policy as a run's (box.checked); nothing without a workspace."""
    if workspace is None:
        return None, None, ()
    ws = find_workspace(workspace, workspace)
    checked, notes = box.checked(ctx, ws.path, ws.repo)
    for line in notes:
        ctx.report.note(line)
    return ws.path, ws.repo, checked


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
) -> Iterator[Probe]:
    """A created (not started) container running ``command`` the way a run on ``branch``
    does (the same wrapper, env file, run user, the branch's egress policy, and a run's box:
    a probe or a replay runs the agent's environment), removed on the way out, and what it
    left defused: also when ``start`` is interrupted by SIGTERM/SIGHUP (``Interrupted``,
    exit 128+n) or Ctrl-C, as a run's attach is."""
    from pienv.runloop import egressrun

    root, repo, checked = _checked(ctx, workspace)
    token = os.urandom(6).hex()
    env_path = env_file(ctx.store.runs_dir, token)
    ctx.store.runs_dir.mkdir(parents=True, exist_ok=True)
    agent = ctx.config.agent_named(None)
    boundary = egressrun.prepare(ctx, branch, None, agent, {}, False)
    host = HostFacts(
        user=user or host_ids(),
        environ={},
        env_file=str(env_path),
        name=run_name(ctx.store_id, token) + f"-{role}",
        store_id=ctx.store_id,
        checked=checked,
        boundary=boundary.boundary() if boundary else None,
    )
    spec = probe_spec(
        image,
        command,
        str(root) if root else None,
        replay_env(ctx, branch),
        ctx.config,
        host,
        probe_labels(ctx, role, root),
        workdir,
    )
    write_env_file(env_path, spec.env)
    engine = ctx.engine()
    gate, unverified = box.gate(engine, spec)
    if unverified and root is not None:
        ctx.report.note(unverified)
    # The workspace and its git dirs as the command will find them, taken before the
    # container exists: a signal at any point after it finds them known (not the user's own
    # symlinks taken for planted ones).
    watch = box.watch(root, repo, ctx.config.protect_git) if root is not None else GitWatch()
    job = box.sweep_job(ctx, spec.mounts, watch.started) if root is not None else None
    record = box.watch_file(ctx.store.runs_dir, token)
    probe: Probe | None = None
    try:
        cid = create(engine, spec)
        probe = Probe(cid, gate, root, repo, watch, job)
        if boundary is not None:
            probe.egress, probe.egress_audit = boundary.policy_hash, boundary.audit_id
        if root is not None:  # for `pienv doctor`, if this pienv is killed (kill -9):
            # written once the container exists, removed before it goes, so that a record
            # without its container is a killed pienv's.
            box.save_watch(record, root, watch)
        if gate is not None:
            gate.open(lambda: box.container_pid(cid))
        if boundary is not None:
            boundary.registered()  # its write overlapped the create
        yield probe
    finally:
        with uninterrupted():  # a second signal does not cut the sweep short
            if gate is not None:
                gate.close()
            with contextlib.suppress(OSError):
                record.unlink()
            _end(ctx, probe, boundary)
            with contextlib.suppress(OSError):
                env_path.unlink()


def _end(ctx: Context, probe: Probe | None, boundary: EgressRun | None) -> None:
    """The probe's container removed, what it left defused (also when it was interrupted),
    its slot freed and its audit kept as a run's is (`pienv egress log` shows it)."""
    from pienv.runloop import egressrun

    if probe is not None:
        ctx.engine().remove_container(probe.cid, force=True)
        probe.after(ctx)
    if boundary is None:
        return
    boundary.release()  # its container is gone
    if boundary.audit_id:
        with contextlib.suppress(Exception):
            egressrun.keep_audit(ctx, boundary.audit_id, boundary.proxy)


def start(ctx: Context, probe: Probe) -> ProbeResult:
    """Start the probe's container, collect its output, and return its exit code (the
    container stays); then what it left on the host is defused (``Probe.after``). A probe
    whose mounts were not what the policy checked is refused (nothing of it ran)."""
    engine = ctx.engine()
    out = bytearray()
    # SIGTERM/SIGHUP while the command runs raise Interrupted: ``container``'s way out
    # removes the container and defuses what it left (a commit after it is not interrupted).
    with interruptible():
        for chunk_out, chunk_err in engine.run_streaming(probe.cid):
            for chunk in (chunk_out, chunk_err):
                if chunk:
                    out += chunk
                    del out[:-OUTPUT_KEEP]
        code = engine.wait(probe.cid)
    if probe.gate is not None:
        probe.gate.close()
    problems = box.refused(probe.gate, code)
    notes = probe.after(ctx)
    if problems:
        raise UsageError(
            "refusing the probe: a host path changed between pienv's check and the engine's "
            f"mount ({'; '.join(problems)}); nothing ran",
            hint="something is moving that path (another run's agent?): check it",
        )
    return ProbeResult(code, out.decode(errors="replace"), tuple(notes))


def run(
    ctx: Context,
    image: str,
    command: tuple[str, ...],
    workspace: Path | None,
    branch: str | None = None,
) -> ProbeResult:
    """``command`` in a throwaway container from ``image``; the container is removed."""
    with container(ctx, image, command, workspace, "probe", branch=branch) as probe:
        return start(ctx, probe)


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
