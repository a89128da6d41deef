"""`pienv egress show|allow|deny|mode|reset|log|learn`: a branch's egress policy and what its
runs contacted. Results, never printing (cli/egress.py renders them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pienv import egress, egressaudit
from pienv.context import Context
from pienv.egress import Policy
from pienv.errors import UsageError
from pienv.model import JsonResult, short
from pienv.runloop.egressrun import current, policy_store


@dataclass
class PolicyResult(JsonResult):
    branch: str | None  # None: detached HEAD (the head commit's policy, read-only)
    mode: str
    allow: list[str]
    deny: list[str]
    hash: str
    source: str  # "branch" (set for it), "head commit", "default"
    added: list[str] = field(default_factory=list)  # what this command added for the agent
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data.pop("notes", None)
        return data


def _result(
    branch: str | None, policy: Policy, source: str, added: list[str] | None = None
) -> PolicyResult:
    return PolicyResult(
        branch,
        policy.mode,
        list(policy.allow),
        list(policy.deny),
        policy.hash,
        source,
        added or [],
    )


def show(ctx: Context) -> PolicyResult:
    return _result(*current(ctx))


def _branch_or_refuse(ctx: Context, branch: str | None) -> str:
    if branch is None:
        raise UsageError(
            "HEAD is detached: an egress policy belongs to a branch",
            hint="`pienv checkout -b NAME` makes one here",
        )
    return branch


def agent_needs(ctx: Context) -> list[str]:
    """The hosts the configured agent needs (its providers, its registry)."""
    preset = ctx.config.agent.preset
    if not preset:
        return []
    needs = egress.PRESET_NEEDS.get(preset, ())
    registries = egress.registry_hosts() if any(n.startswith("@") for n in needs) else {}
    return egress.preset_rules(preset, registries)


def allow(ctx: Context, rules: list[str], with_agent: bool = True) -> PolicyResult:
    """Allow ``rules`` on the branch. The first allow on an open branch turns it into an
    allow-list, with the hosts its agent needs (provider, registry) so the agent still works."""
    branch, policy, _ = current(ctx)
    name = _branch_or_refuse(ctx, branch)
    checked = [egress.check_rule(r) for r in rules]
    added: list[str] = []
    if policy.mode == "open" and with_agent:
        added = [r for r in agent_needs(ctx) if r not in checked]
    new = policy.allowing([*checked, *added])
    policy_store(ctx).set_branch(name, new)
    return _result(name, new, "branch", added)


def deny(ctx: Context, rules: list[str]) -> PolicyResult:
    branch, policy, _ = current(ctx)
    name = _branch_or_refuse(ctx, branch)
    new = policy.denying(rules)
    policy_store(ctx).set_branch(name, new)
    return _result(name, new, "branch")


def set_mode(ctx: Context, mode: str) -> PolicyResult:
    if mode not in egress.MODES:
        raise UsageError(f"unknown egress mode {mode!r}", hint=f"one of {', '.join(egress.MODES)}")
    branch, policy, _ = current(ctx)
    name = _branch_or_refuse(ctx, branch)
    added: list[str] = []
    if mode == "allow-list" and policy.mode == "open" and not policy.allow:
        added = agent_needs(ctx)
        policy = policy.allowing(added)
    from dataclasses import replace

    new = replace(policy, mode=mode)
    policy_store(ctx).set_branch(name, new)
    return _result(name, new, "branch", added)


def reset(ctx: Context) -> PolicyResult:
    """Back to the default (open, nothing listed)."""
    branch, _, _ = current(ctx)
    name = _branch_or_refuse(ctx, branch)
    policy_store(ctx).set_branch(name, egress.DEFAULT)
    return _result(name, egress.DEFAULT, "branch")


@dataclass
class AuditResult(JsonResult):
    commit: str
    run: str  # "" when the commit's run recorded no audit
    policy: str
    attempts: list[egressaudit.Attempt]

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "run": self.run,
            "policy": self.policy,
            "attempts": [a.to_json() for a in self.attempts],
        }


def audit(ctx: Context, rev: str | None) -> AuditResult:
    cid = ctx.resolve(rev or "HEAD")
    commit = ctx.commit(cid)
    if not commit.egress_audit:
        raise UsageError(
            f"commit {short(cid)} has no egress audit: its run was not through pienv's proxy",
            hint="runs with an allow-list or `pienv run --egress observe` record one",
        )
    attempts = egressaudit.load(ctx.store.home, commit.egress_audit)
    if attempts is None:
        raise UsageError(
            f"the audit of commit {short(cid)} (run {commit.egress_audit}) is not in the store"
        )
    return AuditResult(cid, commit.egress_audit, commit.egress, attempts)


@dataclass
class LearnResult(JsonResult):
    commit: str
    rules: list[str]
    new: list[str]  # not yet allowed on the current branch


def learn(ctx: Context, rev: str | None) -> LearnResult:
    """The allow-list a run's traffic suggests, and which of it the branch lacks."""
    found = audit(ctx, rev)
    rules = egressaudit.learn(found.attempts)
    _, policy, _ = current(ctx)
    new = [r for r in rules if r not in policy.allow]
    return LearnResult(found.commit, rules, new)


def follow(ctx: Context, branch: str | None, cid: str) -> Policy | None:
    """After `reset` moved ``branch`` to ``cid``: the branch takes the policy that commit ran
    under. None when it had none of its own and the branch has none set (nothing changes)."""
    if branch is None:
        return None
    commit = ctx.store.commits().get(cid)
    store = policy_store(ctx)
    digest = commit.egress if commit else ""
    if not digest and not store.has_branch(branch):
        return None
    return store.follow_commit(branch, {egress.LABEL: digest})
