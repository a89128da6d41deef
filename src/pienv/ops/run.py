"""`pienv run` / `pienv shell`: one agent run in a temporary container, committed on exit."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pienv import gitrepo, locks
from pienv.engine import depth
from pienv.errors import ConcurrentUpdate, EngineError, PienvError, UsageError
from pienv.model import Commit, RunInfo, check_ref_name, now_rfc3339, short
from pienv.ops import guard as guardmod
from pienv.ops.commits import commit_container, flatten_image, host_ids, make_root, mount_filter
from pienv.ops.context import Context
from pienv.store import Refs

WORKSPACE = "/workspace"
ENV_FILE = "/run/pienv/env"
DETACHED = "HEAD"  # lock name of a detached-HEAD run
AGENT_HOME = "/home/agent"
# The container's entry: load the env file (never container Env, which a commit would keep),
# install the agent when it is missing, then become the command.
WRAPPER = (
    'set -a; [ -r "$0" ] && . "$0"; set +a; '
    'if [ -n "$PIENV_INSTALL" ] && ! command -v "$1" >/dev/null 2>&1; then '
    'echo "pienv: installing $1: $PIENV_INSTALL" >&2; sh -c "$PIENV_INSTALL" || exit 127; fi; '
    'unset PIENV_INSTALL; exec "$@"'
)
LOGIN_SHELL = ("sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l")
# Paths never bind-mounted, whatever the config says (rule 4).
HOME_SECRETS = (".ssh", ".gnupg", ".aws", ".config/gcloud", ".kube", ".docker", ".azure")


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


@dataclass
class RunResult:
    exit_code: int
    branch: str  # "" for a detached HEAD
    rule: str
    parent: str
    commit: Commit | None = None
    changes: int = 0
    notes: list[str] = field(default_factory=list)
    kept_container: str = ""


@dataclass(frozen=True)
class Workspace:
    path: Path
    repo: gitrepo.RepoInfo | None


def find_workspace(cwd: Path, workdir: Path | None) -> Workspace:
    """The git repo root containing ``cwd`` (linked worktrees too), or ``cwd`` outside a
    repo; ``-w DIR`` is taken as given. / and the home directory itself are refused."""
    given = (workdir or cwd).expanduser()
    if not given.is_dir():
        raise UsageError(f"workspace {given} is not a directory")
    repo = gitrepo.find(given)
    root = Path(os.path.realpath(given if workdir or repo is None else repo.root))
    if repo is not None and repo.root != root:
        repo = None  # a subdirectory of a repo: git metadata is not inside it
    if root == Path("/"):
        raise UsageError("refusing to mount / as the workspace", hint="cd into a project first")
    if root == gitrepo.home_dir():
        raise UsageError(
            f"refusing to mount your home directory {root} as the workspace",
            hint="cd into a project directory, or pass -w DIR",
        )
    return Workspace(path=root, repo=repo)


def select_branch(
    refs: Refs, explicit: str | None, environ: Mapping[str, str], workspace: Path
) -> tuple[str, str]:
    """(branch, rule): --branch > PIENV_PROFILE > worktree binding > HEAD ("" = detached)."""
    if explicit:
        return explicit, "--branch"
    profile = environ.get("PIENV_PROFILE")
    if profile:
        return profile, "PIENV_PROFILE"
    bound = refs.worktrees.get(str(workspace))
    if bound:
        return bound, f"worktree binding of {workspace}"
    if refs.head_branch:
        return refs.head_branch, "HEAD"
    return "", "detached HEAD"


def validate_mount(spec: str, home: Path) -> tuple[str, str, str]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"bad mount {spec!r} in config: use HOST:CONTAINER[:ro|rw]")
    host = Path(os.path.realpath(os.path.expanduser(parts[0])))
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"bad mount {spec!r} in config: mode must be ro or rw")
    forbidden = [home, *(home / p for p in HOME_SECRETS)]
    if "docker.sock" in host.name or any(host == f or f in host.parents for f in forbidden[1:]):
        raise UsageError(f"refusing to mount {host}: credentials and the Docker socket never are")
    if host == home or host == Path("/"):
        raise UsageError(f"refusing to mount {host}: the home directory and / never are")
    return str(host), parts[1], mode


def container_env(
    ctx: Context, req: RunRequest, branch: str, environ: Mapping[str, str]
) -> dict[str, str]:
    env = ctx.config.container_env(dict(environ), req.env_names)
    env.update(
        {
            "HOME": AGENT_HOME,
            "USER": "agent",
            "PIENV": "1",
            "PIENV_BRANCH": branch,
            # The agent's identity for git, unsigned commits, no host credential helpers.
            "GIT_AUTHOR_NAME": "pienv agent",
            "GIT_AUTHOR_EMAIL": "agent@pienv.invalid",
            "GIT_COMMITTER_NAME": "pienv agent",
            "GIT_COMMITTER_EMAIL": "agent@pienv.invalid",
            "GIT_CONFIG_COUNT": "4",
            "GIT_CONFIG_KEY_0": "commit.gpgsign",
            "GIT_CONFIG_VALUE_0": "false",
            "GIT_CONFIG_KEY_1": "tag.gpgsign",
            "GIT_CONFIG_VALUE_1": "false",
            "GIT_CONFIG_KEY_2": "safe.directory",
            "GIT_CONFIG_VALUE_2": "*",
            "GIT_CONFIG_KEY_3": "credential.helper",
            "GIT_CONFIG_VALUE_3": "",
        }
    )
    if not req.command and not req.shell and ctx.config.agent_install:
        env["PIENV_INSTALL"] = ctx.config.agent_install
    return env


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    lines = [
        f"{k}={shlex.quote(v)}\n"
        for k, v in sorted(env.items())
        if re.fullmatch(r"[A-Za-z_]\w*", k)
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(lines)


def ensure_root(ctx: Context, branch: str, notes: list[str]) -> str:
    """The branch's head, creating the store's first (root) commit when there is none."""
    refs = ctx.refs()
    head = refs.branches.get(branch) if branch else refs.head_detached
    if head:
        return head
    if refs.branches or refs.head_detached:
        # A new branch starts from HEAD (the git way), or from the first branch when HEAD is
        # unborn (e.g. HEAD names a deleted branch).
        start = refs.head_commit() or next(iter(refs.branches.values()))
        with ctx.store.transaction(f"branch: created from {short(start)}") as txn:
            txn.move_branch(branch, None, start)
        notes.append(f"created branch {branch!r} at {short(start)}")
        return start
    from pienv.ops import base as basemod

    result = basemod.ensure(ctx)
    if result.built:
        notes.append(f"built the base image from {result.source}")
    root = make_root(ctx, result.image, branch or "main")
    with ctx.store.transaction(f"root: base {result.image}") as txn:
        txn.move_branch(branch or "main", None, root.id)
        txn.refs.base = result.image
    notes.append(f"created root commit {root.short} from base {result.image}")
    return root.id


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


Sink = Callable[[bytes], None]


def run(
    ctx: Context,
    req: RunRequest,
    cwd: Path,
    environ: Mapping[str, str],
    out: Sink,
    err: Sink,
    stdin_fd: int | None = None,
) -> RunResult:
    """One run. ``stdin_fd``: forwarded to a non-interactive command until EOF (None: the
    command's stdin is empty)."""
    ws = find_workspace(cwd, req.workdir)
    ctx.store.init()
    refs = ctx.refs()
    branch, rule = select_branch(refs, req.branch, environ, ws.path)
    if branch:
        check_ref_name(branch)
    notes: list[str] = []
    engine = ctx.engine()
    lock, stale = locks.acquire(ctx.store.locks_dir, branch or DETACHED, str(ws.path), req.wait)
    guard = None
    env_path: Path | None = None
    try:
        if stale and stale.pid != os.getpid():
            notes.append(f"took over the lock of {branch or DETACHED!r} from dead pid {stale.pid}")
        from pienv.ops import recovery

        notes.extend(recovery.auto_recover(ctx, branch))
        parent = ensure_root(ctx, branch, notes)
        parent_image = engine.inspect_image(parent)
        if parent_image is None:
            raise EngineError(
                f"the image of commit {short(parent)} is gone from the engine",
                hint="`pienv fsck` shows what is missing; `pienv reset REV` moves past it",
            )
        if depth(parent_image) >= ctx.config.flatten_at:
            flat = flatten_image(ctx, parent, branch)
            _move(ctx, branch, parent, flat.id, f"flatten: {depth(parent_image)} layers -> 1")
            notes.append(
                f"flattened {short(parent)} ({depth(parent_image)} layers) to {flat.short}"
            )
            parent, parent_image = flat.id, engine.inspect_image(flat.id) or {}

        command = req.command or (LOGIN_SHELL if req.shell else ctx.config.agent_command)
        token = os.urandom(6).hex()
        env_path = env_file = ctx.store.runs_dir / f"{token}.env"
        write_env_file(env_path, container_env(ctx, req, branch, environ))
        binds = {str(ws.path): {"bind": WORKSPACE, "mode": "rw"}}
        binds[str(env_path)] = {"bind": ENV_FILE, "mode": "ro"}
        if ws.repo is not None and ws.repo.is_linked_worktree:
            # The worktree's .git file names a host path under the main repo's .git: make the
            # common git dir visible at that same path so git works inside.
            binds[str(ws.repo.common_dir)] = {"bind": str(ws.repo.common_dir), "mode": "rw"}
        home = gitrepo.home_dir()
        for spec in ctx.config.mounts:
            host, target, mode = validate_mount(spec, home)
            binds[host] = {"bind": target, "mode": mode}
        info = RunInfo(
            store=refs.store_id,
            branch=branch,
            parent=parent,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=locks.process_start(os.getpid()),
            started=now_rfc3339(),
            workspace=str(ws.path),
            command=tuple(command),
            message=req.message or "",
        )
        forward_stdin = stdin_fd is not None and not req.interactive and engine.forwards_stdin
        cid = engine.create(
            parent,
            entrypoint=["/bin/sh", "-c", WRAPPER, ENV_FILE, *command],
            user=host_ids(),
            workdir=WORKSPACE,
            binds=binds,
            labels=info.labels(),
            tty=req.interactive,
            stdin=req.interactive or forward_stdin,
            network=ctx.config.network,
            name=f"pienv-{refs.store_id[:6]}-{token}",
        )
        mounts = [b["bind"] for b in binds.values()]
        store_home = ctx.store.home

        def takeover() -> None:
            # In the forked finalizer after pienv died: fresh engine, same store.
            from pienv.engine import Engine
            from pienv.store import Store

            child = Context(store=Store(store_home), _engine=Engine())
            child.engine().wait(cid)
            finalize(child, cid, info, None, req.no_commit, mounts)
            with contextlib.suppress(OSError):
                os.unlink(env_file)

        guard = guardmod.spawn(lock, str(ws.path), takeover, str(ctx.store.log_path))
        exit_code = _attach(
            engine, cid, req.interactive, out, err, stdin_fd if forward_stdin else None
        )
        # From here on nothing may interrupt the commit (a second signal included).
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        result = finalize(ctx, cid, info, exit_code, req.no_commit, mounts)
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


def _attach(
    engine: Any, cid: str, interactive: bool, out: Sink, err: Sink, stdin_fd: int | None
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


def finalize(
    ctx: Context,
    cid: str,
    info: RunInfo,
    exit_code: int | None,
    no_commit: bool,
    mounts: list[str] | None = None,
) -> RunResult:
    """Commit a finished run container onto its branch, or drop it when nothing changed.

    Shared by `run`, the finalizer and `recover`. The branch moves by compare-and-swap from the
    run's parent; if it moved meanwhile the commit goes to a new ``recovered/<id>`` branch.
    A failed commit keeps the container (and says how to recover it).
    """
    engine = ctx.engine()
    # Recovery paths (the finalizer, `recover`) pass no exit code. Only there can the container
    # already be committed (its pienv died between commit and remove); a live run just made it,
    # so it skips reading the whole commit index (~12 ms at 1,000 commits).
    recovering = exit_code is None
    if exit_code is None or mounts is None:
        # Read what the finished run no longer knows from the container.
        state = engine.inspect_container(cid)
        if state is None:
            raise EngineError(f"container {cid[:12]} is gone")
        if exit_code is None:
            exit_code = int(state["State"].get("ExitCode", 0))
        if mounts is None:
            mounts = [m["Destination"] for m in state.get("Mounts", [])]
    result = RunResult(exit_code=exit_code, branch=info.branch, rule="", parent=info.parent)
    made = [c for c in ctx.store.commits().values() if c.container == cid] if recovering else []
    if made:
        engine.remove_container(cid, force=True)
        result.commit = made[0]
        result.notes.append(f"container {cid[:12]} was already committed as {made[0].short}")
        return result
    changes = mount_filter(engine.diff(cid), mounts)
    result.changes = len(changes)
    if no_commit or not changes:
        engine.remove_container(cid, force=True)
        return result
    parent_image = engine.inspect_image(info.parent) or {}
    cmd = " ".join(info.command) or "agent"
    draft = Commit.draft(
        info.branch,
        info.message or f"run: {cmd} (exit {exit_code})",
        "run",
        parents=(info.parent,),
        command=info.command,
        exit_code=exit_code,
        workspace=info.workspace,
        # The checkout the environment ended up paired with (the agent may commit meanwhile).
        git_head=gitrepo.head_commit(Path(info.workspace)) if info.workspace else "",
        changes=len(changes),
        run_host=info.host,
        run_pid=info.pid,
        run_started=info.started,
    )
    try:
        commit = commit_container(ctx, cid, draft, parent_image, changes)
    except PienvError as exc:
        result.kept_container = cid
        raise EngineError(
            f"commit failed, the container {cid[:12]} is kept and the branch did not move: {exc}",
            hint=f"free space or fix the engine, then `pienv recover {cid[:12]}`",
        ) from exc
    result.commit = commit
    try:
        _move(ctx, info.branch, info.parent, commit.id, f"run: {cmd} (exit {exit_code})")
    except ConcurrentUpdate:
        name = f"recovered/{commit.short}"
        with ctx.store.transaction(f"recover: {info.branch or DETACHED} had moved") as txn:
            txn.move_branch(name, None, commit.id)
        result.branch = name
        result.notes.append(
            f"{info.branch or DETACHED!r} moved during the run; the commit is on branch {name!r}"
        )
    engine.remove_container(cid, force=True)
    return result


def _move(ctx: Context, branch: str, expected: str, new: str, what: str) -> None:
    with ctx.store.transaction(what) as txn:
        if branch:
            txn.move_branch(branch, expected, new)
        else:
            txn.move_detached(expected, new)
