"""Time travel against the real engine (issue 25): bisect over env history, code recorded
with commits and brought back, rebase onto a new base, export as a Dockerfile."""

from __future__ import annotations

import math
import time

import pytest
from conftest import Pienv

from pienv.ops import bisect
from pienv.ops.context import Context
from pienv.store import Store

pytestmark = pytest.mark.engine


def ctx_of(p: Pienv) -> Context:
    return Context(store=Store(p.home))


def test_bisect_run_finds_the_run_that_removed_a_tool_in_log2_probes(pienv: Pienv) -> None:
    n = 8
    for i in range(1, n + 1):
        cmd = ["touch", f"/t{i}"]
        if i == 1:  # the tool: a script on PATH
            cmd = ["sh", "-c", "printf '#!/bin/sh\\necho hi\\n' >/bin/hello; chmod +x /bin/hello"]
        if i == 5:
            cmd = ["rm", "/bin/hello"]
        pienv("run", "-m", f"run {i}", "--", *cmd)
    ctx = ctx_of(pienv)
    commits = ctx.store.commits()
    culprit = next(c for c in commits.values() if c.message == "run 5")
    root = next(c for c in commits.values() if not c.parents)
    heads = pienv.refs()
    step = bisect.start(ctx, "main", [root.id])
    assert step.next is not None and step.remaining == n - 1
    began = time.monotonic()
    out = bisect.run(ctx, ("hello",), pienv.repo)
    took = time.monotonic() - began
    names = {c.id: c.message for c in ctx.store.commits().values()}
    tried = [(names.get(p.commit), p.exit_code) for p in out.probed]
    assert out.step.first_bad == culprit.id, tried
    assert len(out.probed) <= math.ceil(math.log2(n)), out.probed
    assert {p.mark for p in out.probed} <= {"good", "bad"}
    # no env commit, no ref moved; the state survives until reset
    assert ctx.store.commits().keys() == commits.keys()
    assert pienv.refs()["branches"] == heads["branches"]
    assert any(line.startswith("bad ") for line in bisect.log(ctx))
    assert bisect.reset(ctx) and not bisect.reset(ctx)
    print(f"bisect: {len(out.probed)} probes in {took:.1f}s")


def test_bisect_by_hand_with_skip_and_an_aborting_command(pienv: Pienv) -> None:
    for i in range(1, 4):
        pienv("run", "-m", f"run {i}", "--", "touch", f"/t{i}")
    ctx = ctx_of(pienv)
    step = bisect.start(ctx, "main", ["main~3"])
    assert step.next is not None
    with pytest.raises(Exception, match="under way"):
        bisect.start(ctx, "main", ["main~3"])
    step = bisect.mark(ctx, "skip", None)
    out = bisect.run(ctx, ("sh", "-c", "exit 200"), pienv.repo)
    assert out.aborted is not None and out.aborted.exit_code == 200
    out = bisect.run(ctx, ("sh", "-c", "test ! -e /t2"), pienv.repo)
    assert out.step.first_bad is not None or out.step.ambiguous
    bisect.reset(ctx)
