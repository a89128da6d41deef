"""`pienv run` / `pienv shell`: one agent run in a temporary container, committed on exit.

A run is a `Session` taken through short named steps, in this order:

    check -> lock -> recover -> root (flatten) -> install -> create -> finalizer -> attach
          -> after (git metadata checks) -> hand over (background) or finalize (foreground)

What the container gets is decided by `plan.plan` (pure); this module only gathers what the
plan needs from the host, and acts on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pienv import locks
from pienv.config import Agent
from pienv.context import Context
from pienv.errors import EngineError, UsageError
from pienv.limits import host_defaults, killed_for_memory
from pienv.locks import BranchLock, name_of
from pienv.model import RunInfo, check_ref_name, now_rfc3339, short
from pienv.runloop import agent as agent_step
from pienv.runloop import box, orphans
from pienv.runloop.box import GitWatch
from pienv.runloop.commits import (
    flatten_image,
    host_ids,
    known_mount_points,
    make_prepared,
    make_root,
)
from pienv.runloop.finalizer import Finalizer, Job, Report
from pienv.runloop.finish import RunResult, finalize
from pienv.runloop.install import install as install_agent
from pienv.runloop.launch import Sink, attach, attach_failed, create, has_input
from pienv.runloop.pin import Gate
from pienv.runloop.plan import (
    HostFacts,
    Parent,
    RunRequest,
    command_of,
    env_names,
    install_spec,
    plan,
)
from pienv.runloop.sandbox import env_file, run_name, validate_mount, write_env_file
from pienv.runloop.spec import ContainerSpec, Mount
from pienv.runloop.sweep import sweep
from pienv.runloop.workspace import Workspace, find_workspace, select_branch
from pienv.secrets import Redaction
from pienv.store import crashpoint

if TYPE_CHECKING:
    from pienv.engine import ImageInfo
    from pienv.runloop.egressrun import EgressRun

__all__ = ["Report", "RunRequest", "RunResult", "commits_in_background", "ensure_root", "run"]


def ensure_root(ctx: Context, branch: str | None, notes: list[str]) -> str:
    """The branch's head, creating the store's first (root) commit when there is none."""
    refs = ctx.refs()
    head = refs.branches.get(branch) if branch else refs.head_detached
    if head:
        return head
    if refs.branches or refs.head_detached:
        # A new branch starts from HEAD (the git way), or from the first branch when HEAD is
        # unborn (e.g. HEAD names a deleted branch).
        # A finished run still being committed on HEAD's branch lands first (`pienv run --
        # CMD; pienv run -b new` starts from CMD's commit, as `pienv branch new` would).
        if ctx.settle("HEAD", refs):
            refs = ctx.refs()
        start = refs.head_commit() or next(iter(refs.branches.values()))
        with ctx.store.transaction(f"branch: created from {short(start)}") as txn:
            txn.move_head(branch, None, start)
        notes.append(f"created branch {name_of(branch)!r} at {short(start)}")
        return start
    from pienv.runloop import baseimage as basemod

    result = basemod.ensure(ctx)
    if result.built:
        notes.append(f"built the base image from {result.source}")
    from pienv.runloop.egressrun import label_of

    # Made for a branch whose allow-list may predate its first run: a reset there keeps it.
    root = make_root(ctx, result.image, branch or "main", egress=label_of(ctx, branch or "main"))
    with ctx.store.transaction(f"root: base {result.image}") as txn:
        txn.move_branch(branch or "main", None, root.id)
        txn.refs.base = result.image
    notes.append(f"created root commit {root.short} from base {result.image}")
    return root.id


def commits_in_background(ctx: Context, req: RunRequest) -> bool:
    """Whether this run's commit is handed to the finalizer (`[run] commit`, default
    "background"). A session (`pienv shell`, the agent on a terminal) commits in the
    foreground: the person in it spends minutes there, not 0.1 s, and wants to see the
    "committed X" line before the prompt comes back."""
    session = req.shell or (req.interactive and not req.command)
    return ctx.config.commit == "background" and not session


@dataclass
class Session:
    """One run's state, filled in step by step (see the module's docstring)."""

    ctx: Context
    req: RunRequest
    environ: Mapping[str, str]
    err: Sink
    ws: Workspace
    checked: tuple[Mount, ...]  # git metadata and [run] mounts, through the mount policy
    branch: str | None
    rule: str
    lock: BranchLock
    notes: list[str] = field(default_factory=list)
    parent: str = ""
    parent_image: ImageInfo | None = None
    env_path: Path | None = None
    spec: ContainerSpec | None = None
    cid: str = ""
    finalizer: Finalizer | None = None
    watch: GitWatch = field(default_factory=GitWatch)
    egress: EgressRun | None = None  # the run's network boundary (None: an open run)
    gate: Gate | None = None

    # -- check, lock ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        ctx: Context,
        req: RunRequest,
        cwd: Path,
        environ: Mapping[str, str],
        err: Sink,
    ) -> Session:
        """Check the workspace and mounts, pick the branch, take its lock."""
        ws = find_workspace(cwd, req.workdir)
        # Before anything is written: a workspace holding the store, the config or the
        # engine's socket would hand the agent what widens its own sandbox (rules 4 and 9).
        policy = box.policy(ctx)
        git, git_notes = box.checked(ctx, ws.path, ws.repo, policy)
        configured = [validate_mount(spec, policy) for spec in ctx.config.mounts]
        ctx.store.init()
        branch, rule = select_branch(ctx.refs(), req.branch, environ, ws.path)
        if branch:
            check_ref_name(branch)
        lock, stale = locks.acquire(
            ctx.store.locks_dir, name_of(branch), str(ws.path), req.wait, ctx.report.note
        )
        s = cls(ctx, req, environ, err, ws, (*git, *configured), branch, rule, lock)
        s.notes.extend(git_notes)
        if stale and stale.pid != os.getpid():
            s.notes.append(f"took over the lock of {name_of(branch)!r} from dead pid {stale.pid}")
        return s

    # -- recover, root, flatten ----------------------------------------------------------

    def recover(self) -> None:
        """Commit this branch's finished orphans first (their pienv died)."""
        self.notes.extend(orphans.auto_recover(self.ctx, self.branch))

    def root(self) -> None:
        """The parent: the branch's head (made if there is none), flattened at depth."""
        ctx = self.ctx
        parent = ensure_root(ctx, self.branch, self.notes)
        image = ctx.engine().inspect_image(parent)
        if image is None:
            raise EngineError(
                f"the image of commit {short(parent)} is gone from the engine",
                hint="`pienv fsck` shows what is missing; `pienv reset REV` moves past it",
            )
        if image.depth >= ctx.config.flatten_at:  # rule 2: no dead end at depth
            flat = flatten_image(ctx, parent, self.branch)
            with ctx.store.transaction(f"flatten: {image.depth} layers -> 1") as txn:
                txn.move_head(self.branch, parent, flat.id)
            self.notes.append(f"flattened {short(parent)} ({image.depth} layers) to {flat.short}")
            parent, image = flat.id, ctx.engine().inspect_image(flat.id)
        self.parent, self.parent_image = parent, image

    # -- plan, install, create -----------------------------------------------------------

    def plan(self, forward_stdin: bool) -> ContainerSpec:
        """Decide the container (plan.plan) and write its env file."""
        ctx, req = self.ctx, self.req
        agent = ctx.config.agent_named(req.agent)
        token = os.urandom(6).hex()
        self.env_path = env_file(ctx.store.runs_dir, token)
        store_id = ctx.store_id
        # The network boundary (runloop/egressrun.py): None for an open run, else the run is
        # registered with the store's proxy and gets its network, resolver and variables
        # (which replace the agent's real keys with placeholders when they are injected).
        egress = None
        if req.egress is not None or (ctx.store.home / "egress").is_dir():
            # (A store that never had a policy pays nothing, not even the imports.)
            from pienv.runloop import egressrun

            egress = egressrun.prepare(
                ctx, self.branch, req.egress, agent, self.environ, ctx.config.inject_keys
            )
        self.egress = egress
        if egress is not None:
            self.notes.extend(egress.notes)
        host = HostFacts(
            user=host_ids(),
            environ=self.environ,
            env_file=str(self.env_path),
            name=run_name(store_id, token),
            store_id=store_id,
            checked=self.checked,
            forward_stdin=forward_stdin,
            defaults=host_defaults(),
            boundary=egress.boundary() if egress else None,
        )
        image = self.parent_image
        parent = Parent(self.parent, frozenset(known_mount_points(image)) if image else frozenset())
        # What is recorded of the command and message (labels, index, reflog) names a
        # credential's or passed variable's value as $NAME (secrets.py).
        redaction = Redaction.of(self.environ, ctx.config.passed_names(agent) + list(req.env_names))
        info = self._info(agent, redaction)
        if egress is not None:
            info = replace(info, egress=egress.policy_hash, egress_audit=egress.audit_id)
        spec = plan(req, self.ws, ctx.config, agent, parent, info, host, self.branch)
        write_env_file(self.env_path, spec.env)
        dropped = ctx.config.dropped_env(dict(self.environ), env_names(req, agent))
        if dropped:
            self.err(f"pienv: not passed: {', '.join(dropped)}\n".encode())
        if notice := redaction.notice():
            self.err(f"pienv: {notice}\n".encode())
        return spec

    def _info(self, agent: Agent, redaction: Redaction) -> RunInfo:
        return RunInfo(
            store=self.ctx.store_id,
            branch=self.branch,
            parent=self.parent,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=locks.process_start(os.getpid()),
            started=now_rfc3339(),
            workspace=str(self.ws.path),
            command=redaction.command(command_of(self.req, agent)),
            # A shell's command is pienv's login-shell wrapper: call the commit what it was.
            message=redaction.text(self.req.message or "") or ("shell" if self.req.shell else ""),
        )

    def install(self, spec: ContainerSpec) -> ContainerSpec:
        """The agent's install, its own committed step, when the parent lacks it."""
        ctx, req = self.ctx, self.req
        agent = ctx.config.agent_named(req.agent)
        labels = self.parent_image.labels if self.parent_image else {}
        if req.command or req.shell or agent_step.installed(labels, agent):
            return spec
        step = install_spec(spec, agent, ctx.config, ctx.store_id)
        policy = ("", "")
        if self.egress is not None:
            self.egress.registered()
            # Made under the policy: a reset to it keeps the policy (ops/egress.follow).
            policy = (self.egress.policy_hash, self.egress.audit_id)
        installed = install_agent(ctx, step, self.branch, agent, self.err, policy)
        self.notes.append(f"installed {agent.label} as {installed.short}")
        self.parent = installed.id
        # A fresh mtime: `doctor` spares young env files of runs about to start.
        with contextlib.suppress(OSError):
            os.utime(spec.env_file)
        # The install's image has its parent's mount points (labels are inherited): the
        # ones the run still needs are still to be prepared, not committed by the run.
        return replace(spec.on_image(installed.id), prepare=spec.prepare)

    def create(self, spec: ContainerSpec) -> None:
        """The prepare commit (mount points the image lacks), then the container."""
        if spec.prepare:
            ctx = self.ctx
            policy = self.egress.policy_hash if self.egress is not None else ""
            prepared = make_prepared(ctx, spec.image, self.branch, spec.prepare, policy)
            with ctx.store.transaction(prepared.message) as txn:
                txn.move_head(self.branch, spec.image, prepared.id)
            self.notes.append(f"{prepared.message} ({prepared.short})")
            spec = spec.on_image(prepared.id)
        if spec.info is not None:  # started now (an install may have taken minutes)
            spec = replace(spec, info=replace(spec.info, started=now_rfc3339()))
        self.parent = spec.image
        self.spec = spec
        engine = self.ctx.engine()
        # The env file becomes the gate: the container waits there, its mounts made, until
        # they are verified (runloop/pin.py).
        self.gate, unverified = box.gate(engine, spec)
        if unverified:
            self.notes.append(unverified)
        self.cid = create(engine, spec)
        if self.gate is not None:
            cid = self.cid
            self.gate.open(lambda: box.container_pid(cid))
        if self.egress is not None:
            self.egress.registered()  # its write overlapped the create

    # -- finalizer, attach, after --------------------------------------------------------

    def start_finalizer(self, report: Report | None) -> None:
        assert self.spec is not None and self.spec.info is not None and self.env_path
        job = Job(
            store_home=self.ctx.store.home,
            cid=self.cid,
            info=self.spec.info,
            no_commit=self.req.no_commit,
            workspace=str(self.ws.path),
            env_file=self.env_path,
            rule=self.rule,
            sweep=box.sweep_job(self.ctx, self.spec.mounts, self.watch.started),
            slot_fd=self.egress.slot_fd if self.egress is not None else -1,
        )
        self.finalizer = Finalizer(job, self.lock, report)
        self.finalizer.start(str(self.ctx.store.log_path))

    def attach(self, out: Sink, stdin_fd: int | None) -> int:
        if self.watch.commondir_before:
            self.notes.append(
                f"warning: {self.watch.commondir} exists (git never writes one there): your "
                "git follows it to another config; check it"
            )
        # What happened before the command starts (a root commit, an install, a flatten) is
        # said now, not after an agent's whole session.
        for line in self.notes:
            self.ctx.report.note(line)
        self.notes.clear()
        assert self.spec is not None
        engine = self.ctx.engine()
        try:
            code = attach(
                engine,
                self.cid,
                self.req.interactive,
                out,
                self.err,
                stdin_fd if self.spec.stdin and not self.req.interactive else None,
            )
        except EngineError as exc:
            raise attach_failed(engine, self.cid, exc) from exc
        finally:
            if self.gate is not None:
                self.gate.close()
        if self.egress is not None:
            self.egress.release()  # the container has exited: its slot is the next run's
        self._check_gate(code)
        if code != 0:  # killed for memory? (an inspect only when the command failed)
            with contextlib.suppress(EngineError):
                state = engine.inspect_container(self.cid)
                killed = state and killed_for_memory(
                    code, state.oom_killed, self.spec.limits.memory
                )
                if killed:
                    self.notes.append(killed)
        return code

    def _check_gate(self, code: int) -> None:
        """Refuse the run when a mount was not what the policy checked (runloop/pin.py):
        the command never ran; its container goes, uncommitted."""
        problems = box.refused(self.gate, code)
        if not problems:
            return
        with contextlib.suppress(EngineError):
            self.ctx.engine().remove_container(self.cid, force=True)
        raise UsageError(
            "refusing the run: a host path changed between pienv's check and the engine's "
            f"mount ({'; '.join(problems)}); nothing ran",
            hint="something is moving that path (another run's agent?): check it",
        )

    def after(self) -> None:
        """What the run left in the git metadata that would make the host's git run it."""
        ws = self.ws
        self.notes.extend(
            box.git_findings(ws.path, ws.repo, self.watch, self.ctx.config.protect_git)
        )

    # -- hand over, finalize -------------------------------------------------------------

    def finish(self, exit_code: int, background: bool) -> RunResult:
        # From here on nothing may interrupt the commit (a second signal included).
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if background and self._hand_over(exit_code):
            crashpoint("handed")  # tests: pienv killed right after the handoff
            self.lock.hand_over()
            return RunResult(
                exit_code=exit_code,
                branch=self.branch,
                rule=self.rule,
                parent=self.parent,
                notes=self.notes,
                pending=True,
            )
        assert self.spec is not None and self.spec.info is not None
        assert self.finalizer is not None and self.finalizer.job.sweep is not None
        swept = sweep(self.ctx.engine(), self.finalizer.job.sweep)
        result = finalize(self.ctx, self.cid, self.spec.info, exit_code, self.req.no_commit)
        result.rule = self.rule
        result.notes[:0] = [*self.notes, *([swept] if swept else [])]
        return result

    def _hand_over(self, exit_code: int) -> bool:
        """Give the commit to the finalizer; False when it cannot take it (commit here)."""
        assert self.finalizer is not None
        workspace = str(self.ws.path)
        # Record the finalizer as the committing holder before telling it: from the moment
        # pienv exits, a run that wants this branch must see whom to wait for.
        try:
            self.lock.record(
                workspace, pid=self.finalizer.pid, phase=locks.COMMITTING, container=self.cid
            )
            self.finalizer.hand_over(exit_code)
            return True
        except OSError:
            # A full disk, or the finalizer is gone (killed: its pipe has no reader, so
            # nothing else commits this container): commit here, where errors are seen.
            with contextlib.suppress(OSError):
                self.lock.record(workspace, phase=locks.COMMITTING, container=self.cid)
            return False

    def close(self) -> None:
        if self.egress is not None:
            self.egress.release()
        if self.finalizer is not None:
            self.finalizer.done()
        self.lock.release()
        if self.env_path is not None:
            with contextlib.suppress(OSError):
                self.env_path.unlink()


def run(
    ctx: Context,
    req: RunRequest,
    cwd: Path,
    environ: Mapping[str, str],
    out: Sink,
    err: Sink,
    stdin_fd: int | None = None,
    report: Report | None = None,
) -> RunResult:
    """One run. ``stdin_fd``: forwarded to a non-interactive command until EOF (None: the
    command's stdin is empty). What must be said before the run ends (waiting for a busy
    branch) goes to ``ctx.report``.

    ``report``: given, and the run commits in the background (``commits_in_background``),
    the commit is handed to the forked finalizer once the container has exited: the result
    comes back at once with ``pending`` set, and ``report`` hears the commit's outcome later,
    in the finalizer, with pienv's stderr as its stderr. Without it, the run commits before
    it returns."""
    s = Session.open(ctx, req, cwd, environ, err)
    try:
        s.recover()
        s.root()
        # Forwarded on every transport; /dev/null is not (the container's own stdin is
        # empty already, and over ssh an attach costs a channel).
        spec = s.plan(forward_stdin=not req.interactive and has_input(stdin_fd))
        spec = s.install(spec)
        s.create(spec)
        s.watch = box.watch(s.ws.path, s.ws.repo, ctx.config.protect_git)
        s.start_finalizer(report)
        exit_code = s.attach(out, stdin_fd)
        s.after()
        return s.finish(exit_code, report is not None and commits_in_background(ctx, req))
    finally:
        s.close()
