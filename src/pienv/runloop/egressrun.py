"""A run's side of the network boundary: which network it gets, its registration with the
store's proxy before it starts, its audit kept when it ends.

Modes: ``open`` (the default, today's behaviour: the configured network, no proxy, nothing
recorded), ``allow-list`` (only the branch's hosts, through the proxy), ``observe`` (`run
--egress observe`: every host, through the proxy, recorded for `pienv egress learn`), ``none``
(no network at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pienv import egress, egressaudit
from pienv.config import Agent
from pienv.context import Context
from pienv.egress import Policy, PolicyStore
from pienv.errors import UsageError
from pienv.runloop.plan import Boundary
from pienv.runloop.spec import Mount

if TYPE_CHECKING:
    from pienv.egressnet import RunNetwork, Slot

# Raw sockets and interface changes would let root in the container (or sudo) spoof or
# sniff the internal network it shares with other runs of the store; no run needs them.
CAP_DROP = ("NET_RAW", "NET_ADMIN")


@dataclass(frozen=True)
class EgressRun:
    mode: str  # allow-list | observe | none
    policy_hash: str  # recorded in the commit's label ("" for observe: no policy applied)
    network: str
    dns: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # overrides of the env file
    audit_id: str = ""  # the proxy token; the store keeps the audit under it
    proxy: str = ""  # the proxy container
    cap_drop: tuple[str, ...] = CAP_DROP
    notes: tuple[str, ...] = ()
    registration: RunNetwork | None = None
    slot: Slot | None = None  # the run's own network, claimed until its container exits
    mounts: tuple[Mount, ...] = ()  # the slot's resolver, hosts and hostname, read-only
    # Agent state and caches of the run's own policy (agent.volume_mounts): "" for observe,
    # which reaches what an open run does.
    volume_scope: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)  # for the run's container

    def boundary(self) -> Boundary:
        """What the run's container gets of it (runloop/plan.py)."""
        return Boundary(
            self.network,
            self.dns,
            self.env,
            self.cap_drop,
            self.labels,
            self.mounts,
            self.volume_scope,
        )

    def registered(self) -> None:
        """Before the agent starts: its registration with the proxy has landed."""
        if self.registration is not None:
            self.registration.registered()

    @property
    def slot_fd(self) -> int:
        """The slot's claim, which the forked finalizer shares (-1: none)."""
        return self.slot.fd if self.slot is not None else -1

    def release(self) -> None:
        """The run's container has exited (or was never started): its slot is free."""
        if self.slot is not None:
            self.slot.release()


def policy_store(ctx: Context) -> PolicyStore:
    return PolicyStore(ctx.store.home)


def _head_policy_hash(ctx: Context, head: str | None) -> str:
    if not head:
        return ""
    commit = ctx.store.commits().get(head)
    return commit.egress if commit else ""


def current(ctx: Context, run_branch: str | None = "") -> tuple[str | None, Policy, str]:
    """(branch, its policy, where the policy came from) for ctx's HEAD (rule 11 applied), or
    for ``run_branch`` (a run's branch; None: a detached run)."""
    refs = ctx.refs()
    branch = refs.head_branch if run_branch == "" else run_branch
    head = refs.branches.get(branch) if branch else refs.head_commit()
    store = policy_store(ctx)
    head_hash = _head_policy_hash(ctx, head)
    if branch and store.has_branch(branch):
        return branch, store.of_branch(branch), "branch"
    if head_hash:
        return branch, store.of_branch(branch or "", {egress.LABEL: head_hash}), "head commit"
    return branch, egress.DEFAULT, "default"


def label_of(ctx: Context, branch: str | None) -> str:
    """The policy hash a commit made for ``branch`` outside a run carries (a root, a
    `reset --system` root): the branch's policy, so that a reset there keeps it; "" when the
    store has no policies or the branch is open."""
    if not (ctx.store.home / "egress").is_dir():
        return ""
    _, policy, _ = current(ctx, branch)
    # As a run's commit (prepare): an open branch's commits carry none.
    return "" if policy.mode == "open" else policy_store(ctx).save(policy)


def effective_mode(ctx: Context, branch: str | None, requested: str | None) -> egress.Policy:
    """The policy a run on ``branch`` gets (``requested``: `run --egress MODE`)."""
    if requested is not None and requested not in egress.RUN_MODES:
        raise UsageError(
            f"unknown --egress mode {requested!r}", hint=f"one of {', '.join(egress.RUN_MODES)}"
        )
    _, policy, _ = current(ctx, branch)
    if requested is None or requested == policy.mode:
        return policy
    if requested == "observe":
        return egress.Policy("open", (), policy.deny)  # open but recorded; denies still hold
    if requested == "allow-list" and not policy.allow:
        raise UsageError(
            "--egress allow-list with nothing allowed: every connection would be refused",
            hint="`pienv egress allow HOST ...` first",
        )
    return egress.Policy(requested, policy.allow, policy.deny)


def injected_keys(agent: Agent, environ: Mapping[str, str]) -> dict[str, str]:
    """provider -> the real key, for the agent's providers whose key is set on the host and
    which the proxy can inject (a base-URL variable the agent reads)."""
    out = {}
    for need in egress.PRESET_NEEDS.get(agent.preset, ()):
        spec = egress.PROVIDERS.get(need)
        if spec and spec.base_env and environ.get(spec.key_env):
            out[need] = environ[spec.key_env]
    return out


def prepare(
    ctx: Context,
    branch: str | None,
    requested: str | None,
    agent: Agent,
    environ: Mapping[str, str],
    inject: bool,
) -> EgressRun | None:
    """None for an open run (nothing changes); else the run's network and registration."""
    policy = effective_mode(ctx, branch, requested)
    observe = requested == "observe"
    if policy.mode == "open" and not observe:
        return None
    store = egress.PolicyStore(ctx.store.home)
    digest = store.save(policy) if not observe else ""
    if policy.mode == "none":
        return EgressRun("none", digest, "none", env={}, volume_scope=digest[:12])
    from pienv import egressnet

    engine = ctx.engine()
    proxy = egressnet.ensure_proxy(engine, ctx.store_id)
    slot = egressnet.claim(engine, proxy, ctx.store_id, slots_dir(ctx))
    try:
        keys = injected_keys(agent, environ) if inject else {}
        net = egressnet.register(engine, proxy, slot, policy, branch or "", keys, background=True)
    except BaseException:
        slot.release()
        raise
    notes = []
    if keys:
        notes.append(f"keys of {', '.join(sorted(keys))} stay with pienv's proxy (placeholders)")
    return EgressRun(
        "observe" if observe else policy.mode,
        digest,
        net.network,
        net.dns,
        net.env,
        net.token,
        proxy.container,
        notes=tuple(notes),
        registration=net,
        slot=slot,
        volume_scope="" if observe else digest[:12],
        labels={egressnet.SLOT_LABEL: slot.name},
        mounts=tuple(
            Mount(source, target, True, "the egress slot's resolver and hosts", directory=False)
            for target, source in slot.files.items()
        ),
    )


def slots_dir(ctx: Context) -> Path:
    """Where the runs of the store claim their egress slots (egressnet.claim)."""
    return ctx.store.home / "egress-slots"


def keep_audit(ctx: Context, audit_id: str, proxy: str) -> list[egressaudit.Attempt]:
    """Copy a finished run's audit out of the proxy into the store; its attempts."""
    from pienv import egressnet

    engine = ctx.engine()
    found = egressnet.Proxy(proxy, "")
    raw = egressnet.collect(engine, found, audit_id)
    egressaudit.save(ctx.store.home, audit_id, raw)
    return egressaudit.parse(raw.splitlines())


def denied_note(attempts: list[egressaudit.Attempt]) -> str | None:
    hosts = egressaudit.denied_hosts(attempts)
    if not hosts:
        return None
    return f"egress refused {', '.join(hosts)}; to allow: pienv egress allow {' '.join(hosts)}"


def proxy_of_store(ctx: Context) -> str:
    from pienv import egressnet

    return egressnet.names(ctx.store_id)
