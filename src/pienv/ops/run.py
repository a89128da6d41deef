"""`pienv run` / `pienv shell`: one agent run in a temporary container, committed on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pienv import locks
from pienv.errors import EngineError, PienvError
from pienv.gitrepo import gitlinks
from pienv.locks import name_of
from pienv.model import RunInfo, check_ref_name, now_rfc3339, short
from pienv.ops import agent as agent_ops
from pienv.ops import guard as guardmod
from pienv.ops import recovery
from pienv.ops.commits import (
    MountPoint,
    flatten_image,
    host_ids,
    known_mount_points,
    make_prepared,
    make_root,
)
from pienv.ops.context import Context
from pienv.ops.finish import RunResult, finalize
from pienv.ops.sandbox import (
    ENV_FILE,
    LOGIN_SHELL,
    WORKSPACE,
    WRAPPER,
    MountPolicy,
    container_env,
    env_file,
    git_mounts,
    planted_commondir,
    planted_submodules,
    quarantine,
    quarantine_submodule,
    run_name,
    validate_mount,
    write_env_file,
)
from pienv.ops.workspace import find_workspace, select_branch
from pienv.secrets import Redaction
from pienv.store import crashpoint

if TYPE_CHECKING:
    from pienv.engine import Engine


@dataclass(frozen=True)
class RunRequest:
    command: tuple[str, ...] = ()  # empty: the configured agent
    branch: str | None = None
    workdir: Path | None = None
    message: str | None = None
    no_commit: bool = False
    interactive: bool = False
    shell: bool = False
    wait: float | None = None
    env_names: tuple[str, ...] = ()
    agent: str | None = None  # a preset name (`--agent`); None: the configured agent
    egress: str | None = None  # `--egress MODE` for this run; None: the branch's policy


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
    from pienv.ops import baseimage as basemod

    result = basemod.ensure(ctx)
    if result.built:
        notes.append(f"built the base image from {result.source}")
    root = make_root(ctx, result.image, branch or "main")
    with ctx.store.transaction(f"root: base {result.image}") as txn:
        txn.move_branch(branch or "main", None, root.id)
        txn.refs.base = result.image
    notes.append(f"created root commit {root.short} from base {result.image}")
    return root.id


class Interrupted(BaseException):
    """SIGHUP/SIGTERM during the attach, raised by the signal handler. A BaseException (as
    KeyboardInterrupt is), so no ``except Exception`` on the way can swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


Sink = Callable[[bytes], None]
# Hears, in the finalizer, how a commit handed to it ended: the result, or the error.
Report = Callable[[RunResult | None, Exception | None], None]


def commits_in_background(ctx: Context, req: RunRequest) -> bool:
    """Whether this run's commit is handed to the finalizer (`[run] commit`, default
    "background"). A session (`pienv shell`, the agent on a terminal) commits in the
    foreground: the person in it spends minutes there, not 0.1 s, and wants to see the
    "committed X" line before the prompt comes back."""
    session = req.shell or (req.interactive and not req.command)
    return ctx.config.commit == "background" and not session


def run(
    ctx: Context,
    req: RunRequest,
    cwd: Path,
    environ: Mapping[str, str],
    out: Sink,
    err: Sink,
    stdin_fd: int | None = None,
    notify: Callable[[str], None] | None = None,
    report: Report | None = None,
) -> RunResult:
    """One run. ``stdin_fd``: forwarded to a non-interactive command until EOF (None: the
    command's stdin is empty). ``notify`` hears what must be said before the run ends
    (waiting for a busy branch).

    ``report``: given, and the run commits in the background (``commits_in_background``),
    the commit is handed to the forked finalizer once the container has exited: the result
    comes back at once with ``pending`` set, and ``report`` hears the commit's outcome later,
    in the finalizer, with pienv's stderr as its stderr. Without it, the run commits before
    it returns."""
    ws = find_workspace(cwd, req.workdir)
    engine = ctx.engine()
    # Before anything is written: a workspace holding the store, the config or the engine's
    # socket would hand the agent what widens its own sandbox (rules 4 and 9).
    policy = MountPolicy.of(ctx.store.home, ctx.store.config_path, engine.base_url)
    policy.check(ws.path, "the workspace")
    mounts_wanted = [validate_mount(spec, policy) for spec in ctx.config.mounts]
    git_binds, git_notes = git_mounts(ws.path, ws.repo, policy, ctx.config.protect_git)
    ctx.store.init()
    refs = ctx.refs()
    branch, rule = select_branch(refs, req.branch, environ, ws.path)
    if branch:
        check_ref_name(branch)
    notes: list[str] = list(git_notes)
    lock, stale = locks.acquire(
        ctx.store.locks_dir, name_of(branch), str(ws.path), req.wait, notify
    )
    guard = None
    env_path: Path | None = None
    try:
        if stale and stale.pid != os.getpid():
            notes.append(f"took over the lock of {name_of(branch)!r} from dead pid {stale.pid}")
        notes.extend(recovery.auto_recover(ctx, branch))
        parent = ensure_root(ctx, branch, notes)
        parent_image = engine.inspect_image(parent)
        if parent_image is None:
            raise EngineError(
                f"the image of commit {short(parent)} is gone from the engine",
                hint="`pienv fsck` shows what is missing; `pienv reset REV` moves past it",
            )
        if parent_image.depth >= ctx.config.flatten_at:  # rule 2: no dead end at depth
            flat = flatten_image(ctx, parent, branch)
            with ctx.store.transaction(f"flatten: {parent_image.depth} layers -> 1") as txn:
                txn.move_head(branch, parent, flat.id)
            notes.append(f"flattened {short(parent)} ({parent_image.depth} layers) to {flat.short}")
            parent = flat.id

        agent = ctx.config.agent_named(req.agent)
        command = req.command or (LOGIN_SHELL if req.shell else agent.command)
        token = os.urandom(6).hex()
        env_path = env_file_path = env_file(ctx.store.runs_dir, token)
        env_names = (*req.env_names, *agent.env)
        # The network boundary (ops/egressrun.py): None for an open run, else the run is
        # registered with the store's proxy and gets its network, resolver and variables
        # (which replace the agent's real keys with placeholders when they are injected).
        boundary = None
        if req.egress is not None or (ctx.store.home / "egress").is_dir():
            # (A store that never had a policy pays nothing, not even the imports.)
            from pienv.ops import egressrun

            boundary = egressrun.prepare(
                ctx, branch, req.egress, agent, environ, ctx.config.inject_keys
            )
        notes.extend(boundary.notes if boundary else ())
        write_env_file(
            env_path,
            container_env(
                ctx.config,
                environ,
                env_names,
                branch,
                agent_ops.agent_env(agent, ctx.config.caches),
            )
            | ({"PIENV_SUBDIR": ws.subdir} if ws.subdir else {})
            | dict(boundary.env if boundary else {}),
        )
        dropped = ctx.config.dropped_env(dict(environ), env_names)
        if dropped:
            err(f"pienv: not passed: {', '.join(dropped)}\n".encode())
        # What is recorded of the command and message (labels, index, reflog) names a
        # credential's or passed variable's value as $NAME (secrets.py).
        redaction = Redaction.of(environ, ctx.config.passed_names(agent) + list(req.env_names))
        recorded = redaction.command(command)
        recorded_message = redaction.text(req.message or "")
        if notice := redaction.notice():
            err(f"pienv: {notice}\n".encode())
        # pienv's own volumes (agent state, package caches): named volumes, never committed.
        volumes = agent_ops.volume_binds(refs.store_id, agent, ctx.config.caches)
        env_bind = {str(env_path): {"bind": ENV_FILE, "mode": "ro"}}
        if (
            not req.command
            and not req.shell
            and not agent_ops.installed(parent_image.labels, agent)
        ):
            if boundary is not None:
                boundary.registered()
            installed = agent_ops.install(
                ctx,
                parent,
                branch,
                agent,
                {**env_bind, **volumes},
                err,
                boundary.network if boundary else ctx.config.network,
                run_name(refs.store_id, token) + "-install",
                dns=boundary.dns if boundary else (),
                cap_drop=boundary.cap_drop if boundary else (),
            )
            notes.append(f"installed {agent.label} as {installed.short}")
            parent = installed.id
            # A fresh mtime: `doctor` spares young env files of runs about to start.
            with contextlib.suppress(OSError):
                os.utime(env_path)
        binds = {str(ws.path): {"bind": WORKSPACE, "mode": "rw"}}
        binds.update(env_bind)
        binds.update(volumes)
        binds.update(git_binds)
        for host, target, mode in mounts_wanted:
            binds[host] = {"bind": target, "mode": mode}
        # Forwarded on every transport; /dev/null is not (the container's own stdin is
        # empty already, and over ssh an attach costs a channel).
        forward_stdin = not req.interactive and _has_input(stdin_fd)

        def create(parent: str) -> tuple[str, RunInfo]:
            info = RunInfo(
                store=refs.store_id,
                branch=branch,
                parent=parent,
                host=socket.gethostname(),
                pid=os.getpid(),
                pid_start=locks.process_start(os.getpid()),
                started=now_rfc3339(),
                workspace=str(ws.path),
                command=recorded,
                # A shell's command is pienv's login-shell wrapper: call the commit what it was.
                message=recorded_message or ("shell" if req.shell else ""),
                egress=boundary.policy_hash if boundary else "",
                egress_audit=boundary.audit_id if boundary else "",
            )
            cid = engine.create(
                parent,
                entrypoint=["/bin/sh", "-c", WRAPPER, ENV_FILE, *command],
                user=host_ids(),
                workdir=WORKSPACE,  # the wrapper enters ws.subdir (PIENV_SUBDIR)
                binds=binds,
                labels=info.labels(),
                tty=req.interactive,
                stdin=req.interactive or forward_stdin,
                network=boundary.network if boundary else ctx.config.network,
                name=run_name(refs.store_id, token),
                dns=boundary.dns if boundary else (),
                cap_drop=boundary.cap_drop if boundary else (),
            )
            return cid, info

        # pienv's own commits hold the mount points every run gets. Those that vary (a
        # linked worktree's git dir, configured mounts) go into a "prepare" commit the first
        # time a branch needs them, so that Docker creating them is never a change.
        # (A target inside another mount is made in that mount, on the host: not in the image.)
        known = known_mount_points(parent_image)
        targets = [b["bind"] for b in binds.values()]
        # pienv's own volumes (agent state, caches) are made by the root's prepare step.
        varying = {**git_binds, **{host: {"bind": target} for host, target, _ in mounts_wanted}}
        wanted = [
            MountPoint(b["bind"], directory=os.path.isdir(host))
            for host, b in varying.items()
            if b["bind"] not in known
            and not any(b["bind"].startswith(t.rstrip("/") + "/") for t in targets)
        ]
        if wanted:
            prepared = make_prepared(ctx, parent, branch, wanted)
            with ctx.store.transaction(prepared.message) as txn:
                txn.move_head(branch, parent, prepared.id)
            notes.append(f"{prepared.message} ({prepared.short})")
            parent = prepared.id
        cid, info = create(parent)
        if boundary is not None:
            boundary.registered()  # its write overlapped the create
        store_home = ctx.store.home

        background = report is not None and commits_in_background(ctx, req)

        def fresh() -> Context:
            # In the forked finalizer: its own engine connection (the parent's socket must
            # not be shared across the fork), the same store.
            from pienv.engine import Engine
            from pienv.store import Store

            return Context(store=Store(store_home), _engine=Engine())

        def takeover() -> None:
            # pienv died: wait for the container, then commit it.
            try:
                child = fresh()
                lock.record(str(ws.path), pid=os.getpid(), container=cid)
                child.engine().wait(cid)
                lock.record(str(ws.path), pid=os.getpid(), phase=locks.COMMITTING, container=cid)
                finalize(child, cid, info, None, req.no_commit)
                lock.release()
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(env_file_path)

        def handoff(exit_code: int) -> None:
            # pienv handed a finished run over (the lock record already names this process).
            assert report is not None
            try:
                done = finalize(fresh(), cid, info, exit_code, req.no_commit)
            except Exception as exc:
                # The container is kept; the lock frees when this process exits, its record
                # naming the finalizer that failed. Say what was kept (finalize says it only
                # for a failed commit; not, e.g., when the engine is gone before it).
                said = exc
                if isinstance(exc, PienvError) and cid[:12] not in exc.message:
                    said = EngineError(
                        f"{exc.message}; the run's container {cid[:12]} is kept with "
                        "everything it changed",
                        hint=(exc.hint + "; " if exc.hint else "")
                        + f"then `pienv recover {cid[:12]}` commits it (the next run on "
                        f"{name_of(branch)!r} does too)",
                    )
                report(None, said)
                raise
            # The branch is free before the result line (and the pipe's EOF) reaches a reader.
            lock.release()
            done.rule = rule
            report(done, None)

        guard = guardmod.spawn(takeover, handoff, str(ctx.store.log_path))
        commondir = planted_commondir(ws.path, ws.repo) if ctx.config.protect_git else None
        planted_before = commondir is not None and os.path.lexists(commondir)
        had_dotgit = os.path.lexists(ws.path / ".git")
        # ctimes are the filesystem's clock (whole seconds on some): a margin, not a race.
        started = time.time() - 1.0
        # Cheap without submodules: the index is only parsed when it holds a gitlink.
        gitlinks_before = (
            frozenset(gitlinks(ws.repo.gitdir))
            if ctx.config.protect_git and ws.repo is not None and not ws.repo.link_problem
            else frozenset()
        )
        if planted_before:
            notes.append(
                f"warning: {commondir} exists (git never writes one there): your git follows it "
                "to another config; check it"
            )
        try:
            exit_code = _attach(
                engine, cid, req.interactive, out, err, stdin_fd if forward_stdin else None
            )
        except EngineError as exc:
            raise _attach_failed(engine, cid, exc) from exc
        if commondir is not None and not planted_before and os.path.lexists(commondir):
            notes.append(quarantine(commondir))
        if ctx.config.protect_git:
            for nested in planted_submodules(ws.path, ws.repo, started, gitlinks_before):
                notes.append(quarantine_submodule(nested))
        new_repo = ws.path / ".git"
        if ws.repo is None and not had_dotgit and os.path.lexists(new_repo):
            # Not pienv's to remove (the agent may have meant it), but the host's git would
            # run what its config and hooks say: say so.
            notes.append(
                f"warning: the run created {new_repo}; its config and hooks are the agent's "
                "and run when you use git here (docs/security.md)"
            )
        # From here on nothing may interrupt the commit (a second signal included).
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if background:
            # Record the finalizer as the committing holder before telling it: from the
            # moment pienv exits, a run that wants this branch must see whom to wait for.
            try:
                lock.record(str(ws.path), pid=guard.pid, phase=locks.COMMITTING, container=cid)
                guard.hand_over(exit_code)
            except OSError:
                # A full disk, or the finalizer is gone (killed: its pipe has no reader, so
                # nothing else commits this container): commit here, where errors are seen.
                background = False
                with contextlib.suppress(OSError):
                    lock.record(str(ws.path), phase=locks.COMMITTING, container=cid)
        if background:
            crashpoint("handed")  # tests: pienv killed right after the handoff
            lock.hand_over()
            return RunResult(
                exit_code=exit_code,
                branch=branch,
                rule=rule,
                parent=parent,
                notes=notes,
                pending=True,
            )
        result = finalize(ctx, cid, info, exit_code, req.no_commit)
        result.rule = rule
        result.notes[:0] = notes
        return result
    finally:
        if guard is not None:
            guard.done()
        lock.release()
        if env_path is not None:
            with contextlib.suppress(OSError):
                env_path.unlink()


def _has_input(fd: int | None) -> bool:
    """Whether ``fd`` may bring input: anything but a closed fd or /dev/null (a terminal
    counts when the run is not interactive: output piped, input typed)."""
    import stat

    if fd is None:
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return not stat.S_ISCHR(mode) or os.isatty(fd)


def _attach_failed(engine: Engine, cid: str, exc: EngineError) -> EngineError:
    """The container did not start, or the engine went away mid-run: say what was kept."""
    try:
        state = engine.inspect_container(cid)
    except EngineError:
        state = None  # the engine is gone: the container is still there when it comes back
    if state is not None and state.status == "created":
        # It never ran, so it holds nothing: do not leave it behind as an orphan.
        with contextlib.suppress(EngineError):
            engine.remove_container(cid, force=True)
        return EngineError(f"the run's container could not start: {exc.message}", hint=exc.hint)
    return EngineError(
        f"{exc.message}; the run's container {cid[:12]} is kept with everything it changed",
        hint=f"when the engine is back, `pienv recover {cid[:12]}` commits it",
    )


def _attach(
    engine: Engine, cid: str, interactive: bool, out: Sink, err: Sink, stdin_fd: int | None
) -> int:
    """Run the container to its end; on SIGHUP/SIGTERM/Ctrl-C stop it and report 128+n."""
    previous = {
        sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGHUP, signal.SIGTERM)
    }
    if interactive:
        # Ctrl-C belongs to the agent (the TTY delivers it); pienv must not die of it.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if interactive:
            engine.attach_interactive(cid)
        else:
            sinks = _SafeSinks(out, err)
            for stdout, stderr in engine.run_streaming(cid, stdin_fd):
                if stdout:
                    sinks.out(stdout)
                if stderr:
                    sinks.err(stderr)
        return int(engine.wait(cid))
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        engine.stop(cid, timeout=10)
        engine.wait(cid)
        return 128 + int(signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _SafeSinks:
    """Output sinks that go quiet once the terminal is gone (EIO/EPIPE) instead of failing."""

    def __init__(self, out: Sink, err: Sink) -> None:
        self._out, self._err, self.broken = out, err, False

    def out(self, data: bytes) -> None:
        self._write(self._out, data)

    def err(self, data: bytes) -> None:
        self._write(self._err, data)

    def _write(self, sink: Sink, data: bytes) -> None:
        if self.broken:
            return
        try:
            sink(data)
        except OSError:
            self.broken = True
