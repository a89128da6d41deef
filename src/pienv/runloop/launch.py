"""Creating a run's container from its plan and running it to its end: the engine-facing
steps of a session (create, attach, stop on a signal)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pienv.errors import EngineError, Interrupted
from pienv.runloop.spec import ContainerSpec

if TYPE_CHECKING:
    from pienv.engine import Engine

Sink = Callable[[bytes], None]


def create(engine: Engine, spec: ContainerSpec) -> str:
    """Create (never start) the container ``spec`` describes; its id."""
    return engine.create(
        spec.image,
        entrypoint=list(spec.entrypoint),
        user=spec.user,
        workdir=spec.workdir,
        binds=spec.binds(),
        labels=spec.labels,
        tty=spec.tty,
        stdin=spec.stdin,
        network=spec.network,
        name=spec.name,
        dns=spec.dns,
        cap_drop=spec.cap_drop,
        cap_add=spec.cap_add,
        no_new_privileges=spec.no_new_privileges,
        resources=bodies_resources(spec),
    )


def bodies_resources(spec: ContainerSpec) -> dict[str, Any]:
    """The spec's limits, ports, tmpfs and GPUs as HostConfig fields (Docker's API names)."""
    from pienv.engine import bodies

    return bodies.resources(
        cpus=spec.limits.cpus,
        memory=spec.limits.memory,
        pids=spec.limits.pids,
        ports=spec.ports,
        tmpfs=spec.tmpfs,
        gpus=spec.gpus,
    )


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGHUP and SIGTERM raise ``Interrupted`` inside (as Ctrl-C raises KeyboardInterrupt),
    so that the ``finally`` of whoever started a container still removes it and defuses what
    it left (``uninterrupted`` around that cleanup). Outside the main thread (no signal
    handler can be set there) it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGHUP, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in sigs}
    try:
        yield
    finally:
        for sig in sigs:
            signal.signal(sig, previous[sig])


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """No SIGHUP, SIGTERM or SIGINT breaks what runs inside (a cleanup that must finish: the
    sweep of planted privilege); the handlers are restored after it."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig in sigs:
            signal.signal(sig, previous[sig])


def has_input(fd: int | None) -> bool:
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


def attach_failed(engine: Engine, cid: str, exc: EngineError) -> EngineError:
    """The container did not start, or the engine went away mid-run: say what was kept."""
    try:
        state = engine.inspect_container(cid)
    except EngineError:
        state = None  # the engine is gone: the container is still there when it comes back
    if state is not None and state.status == "created":
        # It never ran, so it holds nothing: do not leave it behind as an orphan.
        with contextlib.suppress(EngineError):
            engine.remove_container(cid, force=True)
        return start_failed(exc)
    return EngineError(
        f"{exc.message}; the run's container {cid[:12]} is kept with everything it changed",
        hint=f"when the engine is back, `pienv recover {cid[:12]}` commits it",
    )


def start_failed(exc: EngineError) -> EngineError:
    """Why a created container did not start, said as what the user asked for: a host port
    another run (or program) holds, GPUs the engine cannot give."""
    from pienv.engine import bodies

    if bodies.port_clash(exc.message):
        port = re.search(r":(\d+)", exc.message)
        which = f"host port {port.group(1)}" if port else "a host port it publishes"
        return EngineError(
            f"the run cannot publish {which}: another run or program on this machine "
            "already listens there",
            hint="pick another host port with -p HOST_PORT:PORT, or end the other run",
        )
    if "device driver" in exc.message and "gpu" in exc.message.lower():
        return EngineError(
            "this engine cannot pass GPUs through (--gpus, [run] gpus): it has no GPU "
            "device driver",
            hint="install the NVIDIA Container Toolkit for the engine, or run without --gpus",
        )
    return EngineError(f"the run's container could not start: {exc.message}", hint=exc.hint)


def attach(
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
            sinks = SafeSinks(out, err)
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


class SafeSinks:
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
