"""Time travel against the real engine (issue 25): bisect over env history, code recorded
with commits and brought back, rebase onto a new base, export as a Dockerfile."""

from __future__ import annotations

import json
import math
import time

import pytest
from conftest import Pienv

from pienv.errors import UsageError
from pienv.ops import bisect, export, rebase
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


def second_base(base: str) -> str:
    """A second base: the busybox one plus a marker file (the "security update")."""
    import io

    import docker

    tag = "pienv-test/busybox-base2:1"
    client = docker.from_env()
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        recipe = f"FROM {base}\nRUN touch /base2\n".encode()
        client.images.build(fileobj=io.BytesIO(recipe), tag=tag, rm=True)
    return tag


def test_rebase_onto_a_second_base_with_one_conflict_resolved(
    pienv: Pienv, base_image: str
) -> None:
    pienv("run", "-m", "a", "--", "touch", "/a")
    # passes on the first base, fails on the second: the conflict
    pienv("run", "-m", "b", "--", "sh", "-c", "test ! -e /base2 && touch /b")
    pienv("run", "-m", "c", "--", "touch", "/c")
    ctx = ctx_of(pienv)
    old_head = pienv.head()
    base2 = second_base(base_image)
    out = rebase.start(ctx, base2)
    assert out.stopped_at and "exited 1" in out.reason
    assert ctx.commit(out.stopped_at).message == "b"
    assert pienv.head() == old_head  # the branch has not moved
    assert pienv.refs()["head"].get("detached") == out.new_head  # HEAD waits at the replayed tip
    with pytest.raises(UsageError, match="under way"):
        rebase.start(ctx, base2)
    pienv("run", "-m", "b, fixed", "--", "touch", "/b")  # the fix, on the detached tip
    out = rebase.continue_(ctx)
    assert not out.stopped_at and out.new_head == pienv.head() != old_head
    commits = ctx_of(pienv).store.commits()
    line = [commits[pienv.head()]]
    while line[-1].parents:
        line.append(commits[line[-1].parents[0]])
    assert [c.message for c in line[:3]] == ["c", "b, fixed", "a"]
    assert line[0].replays == commits[old_head].id and line[2].replays
    assert line[-1].kind == "root" and "busybox-base2" in line[-1].message
    r = pienv("run", "--", "sh", "-c", "ls /a /b /c /base2")
    assert r.code == 0
    assert pienv.refs()["head"] == {"branch": "main"}
    # the old branch stays reachable through the reflog
    assert any(e["old"] == old_head for e in map(json.loads, reflog_lines(pienv)))


def reflog_lines(p: Pienv) -> list[str]:
    return (p.home / "reflog.jsonl").read_text().splitlines()


def test_rebase_abort_changes_nothing_and_skip_drops_the_commit(
    pienv: Pienv, base_image: str
) -> None:
    pienv("run", "--", "touch", "/a")
    pienv("run", "--", "sh", "-c", "test ! -e /base2 && touch /x")
    ctx = ctx_of(pienv)
    before = pienv.refs()
    base2 = second_base(base_image)
    assert rebase.start(ctx, base2).stopped_at
    out = rebase.abort(ctx)
    assert out.aborted
    after = pienv.refs()
    assert (after["branches"], after["head"]) == (before["branches"], {"branch": "main"})
    assert rebase.start(ctx, base2).stopped_at
    out = rebase.skip(ctx)
    assert not out.stopped_at and len(out.replayed) == 2 and out.replayed[1][1] == ""


def test_export_dockerfile_builds_the_branch(pienv: Pienv) -> None:
    import io

    import docker

    pienv("run", "-m", "tool", "--", "sh", "-c", "mkdir -p /opt/t && echo 1 >/opt/t/v")
    pienv("run", "-m", "fails, kept", "--", "sh", "-c", "touch /opt/t/w; exit 3", check=False)
    ctx = ctx_of(pienv)
    out = export.dockerfile(ctx, None)
    assert out.replayed == 2 and out.by_hand == 0
    assert out.dockerfile.count("\nRUN ") == 2
    client = docker.from_env()
    image, _ = client.images.build(fileobj=io.BytesIO(out.dockerfile.encode()), rm=True)
    try:
        got = client.containers.run(
            image.id, ["sh", "-c", "cat /opt/t/v; ls /opt/t"], remove=True, entrypoint=[]
        )
        assert got.decode().split() == ["1", "v", "w"]
        from pienv.ops import fsdiff

        diff, _ = fsdiff.package_diff(ctx.engine(), pienv.head(), image.id, {})
        assert all(not any(v.values()) for v in diff.values()), diff
    finally:
        client.images.remove(image.id, force=True)
