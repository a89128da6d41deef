"""Time travel against the real engine (issue 25): bisect over env history, code recorded
with commits and brought back, rebase onto a new base, export as a Dockerfile."""

from __future__ import annotations

import json
import math
import time

import pytest
from conftest import BASE_TAG, Pienv, git

from pienv.context import Context
from pienv.errors import UsageError
from pienv.ops import bisect, export, probe, rebase
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
    heads = pienv.refs()
    r = pienv("bisect", "start", "main", "main~8")
    assert f"{n - 1} commits left to test" in r.out
    began = time.monotonic()
    r = pienv("bisect", "run", "--", "hello")
    took = time.monotonic() - began
    probes = [line for line in r.err.splitlines() if "exit " in line]
    assert f"{culprit.short} is the first bad commit." in r.out, r.out + r.err
    assert "run 5  (rm /bin/hello)" in r.out
    assert len(probes) <= math.ceil(math.log2(n)), probes
    # no env commit, no ref moved; the state survives until reset
    assert ctx.store.fresh_commits().keys() == commits.keys()
    assert pienv.refs()["branches"] == heads["branches"]
    assert pienv("bisect", "log").out.startswith("start bad ")
    assert pienv("bisect", "reset").out.strip() == "Bisection ended."
    r = pienv("bisect", "good", check=False)
    assert r.code == 1 and r.err.startswith("pienv: error: no bisection is under way")
    print(f"bisect: {len(probes)} probes in {took:.1f}s")


@pytest.mark.one_engine
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
    # probes run the branch's environment, so they get its network boundary
    routes = ("sh", "-c", "wc -l < /proc/net/route")
    assert probe.run(ctx, pienv.head(), routes, None, "main").output.strip() != "1"
    pienv("egress", "mode", "none")
    assert probe.run(ctx, pienv.head(), routes, None, "main").output.strip() == "1"


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


@pytest.mark.one_engine
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
    assert "a rebase is under way" in pienv("status").err
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
    # FROM the base, pienv's root layer inline, then one RUN per run
    assert f"ARG PIENV_BASE={BASE_TAG}\nFROM ${{PIENV_BASE}}\n" in out.dockerfile
    assert out.dockerfile.count("\nRUN ") == 3
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


def test_env_and_code_roll_back_together_across_three_git_commits(pienv: Pienv) -> None:
    repo = pienv.repo
    # Each run's code is recorded by its background commit: `show HEAD` waits for it to
    # land before the test changes the tree (a script that does not wait may see its next
    # edits recorded too: docs/time-travel.md).
    pienv("run", "-m", "env1", "--", "touch", "/env1")  # code: the clean first commit
    pienv("show", "HEAD")
    c1 = git(repo, "rev-parse", "HEAD")
    (repo / "README").write_text("v2\n")
    git(repo, "commit", "-qam", "v2")
    c2 = git(repo, "rev-parse", "HEAD")
    (repo / "README").write_text("v2, uncommitted\n")
    (repo / "notes.txt").write_text("untracked notes\n")
    pienv("run", "-m", "env2", "--", "touch", "/env2")  # code: c2 + the dirty state
    pienv("show", "HEAD")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v3")
    c3 = git(repo, "rev-parse", "HEAD")
    pienv("run", "-m", "env3", "--", "touch", "/env3")
    ctx = ctx_of(pienv)
    by_msg = {c.message: c for c in ctx.store.fresh_commits().values()}
    e1, e2, e3 = by_msg["env1"], by_msg["env2"], by_msg["env3"]
    assert (e1.git_head, e1.code) == (c1, c1) and (e3.git_head, e3.code) == (c3, c3)
    assert e2.git_head == c2 and e2.code not in ("", c2)
    assert "+ uncommitted]" in pienv("log", "--graph", "--code").out
    assert e2.code in pienv("show", e2.id[:12]).out

    # bisect --with-code probes against each commit's recorded code, not the checkout's
    r = pienv("bisect", "start", "--with-code", "main", "main~2")
    r = pienv("bisect", "run", "--", "sh", "-c", "! grep -q v2 README")
    assert f"{e2.short} is the first bad commit." in r.out
    pienv("bisect", "reset")

    # A dirty tree is never overwritten: the code of env2 goes into a new worktree.
    (repo / "README").write_text("mine, not committed\n")
    r = pienv("reset", "--with-code", "HEAD~1")
    wt = repo.parent / f"repo-at-{e2.short}"
    assert f"the code is in the new worktree {wt}" in r.out
    assert (repo / "README").read_text() == "mine, not committed\n"
    assert git(repo, "rev-parse", "HEAD") == c3
    assert (wt / "README").read_text() == "v2, uncommitted\n"
    assert (wt / "notes.txt").read_text() == "untracked notes\n"
    assert git(wt, "rev-parse", "HEAD") == c2
    assert pienv.head() == e2.id and pienv.refs()["worktrees"][str(wt)] == "main"
    r = pienv("run", "--", "sh", "-c", "ls /env2 /env3 2>&1; cat README", cwd=wt, check=False)
    assert "v2, uncommitted" in r.out and "/env3: No such file" in r.out

    # A clean tree is switched: detached at the recorded commit.
    git(repo, "checkout", "README")
    r = pienv("checkout", "--with-code", e1.id[:12])
    assert f"{repo} is at {c1[:12]} (detached)" in r.out
    assert git(repo, "rev-parse", "HEAD") == c1
    assert (repo / "README").read_text() == "hello\n"
    assert pienv.refs()["head"] == {"detached": e1.id}

    # worktree add --at: environment and code of one commit, side by side.
    r = pienv("worktree", "add", "--at", e3.id[:12], str(repo.parent / "at3"))
    assert git(repo.parent / "at3", "rev-parse", "HEAD") == c3
    assert pienv.head("at3") == e3.id
    # nothing of the user's lost: every commit and the snapshot are still there
    for rev in (c1, c2, c3, e2.code, f"refs/pienv/code/{e2.code}"):
        git(repo, "cat-file", "-e", rev)


@pytest.mark.realistic
def test_realistic_export_builds_and_rebase_moves_an_install_branch(
    realistic_pienv: Pienv, realistic_image: str
) -> None:
    """On Debian + Node: the export's `docker build` has the branch's packages (dpkg, npm),
    and a rebase onto a second base replays the apt install, one conflict fixed by hand."""
    import io

    import docker

    from pienv.ops import fsdiff

    p = realistic_pienv
    p(
        "run",
        "-m",
        "jq",
        "--",
        "sh",
        "-c",
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends jq >/dev/null",
    )
    npm = "npm install -g --silent left-pad@1.3.0"
    p("run", "-m", "left-pad", "--", "sh", "-c", f"test ! -e /base2 && {npm}")
    head = p.head()
    ctx = ctx_of(p)
    engine = ctx.engine()
    client = docker.from_env()

    text = p("export", "--dockerfile").out
    assert "FROM ${PIENV_BASE}" in text and realistic_image in text
    image, _ = client.images.build(fileobj=io.BytesIO(text.encode()), rm=True)
    try:
        diff, _ = fsdiff.package_diff(engine, head, image.id, {})
        assert all(not any(v.values()) for v in diff.values()), diff
    finally:
        client.images.remove(image.id, force=True)

    base2 = "pienv-test/realistic-base2:" + realistic_image.rsplit(":", 1)[-1][:20]
    recipe = f"FROM {realistic_image}\nRUN touch /base2\n".encode()
    client.images.build(fileobj=io.BytesIO(recipe), tag=base2, rm=True)
    r = p("rebase", "--onto", base2, check=False)
    assert r.code == 1 and "Rebase stopped at" in r.out, r.out + r.err
    p("run", "-m", "left-pad, fixed", "--", "sh", "-c", npm)
    r = p("rebase", "--continue")
    assert f"main is now at {p.head()[:12]} (was {head[:12]})" in r.out
    diff, _ = fsdiff.package_diff(engine, head, p.head(), {})
    assert all(not any(v.values()) for v in diff.values()), diff
    assert p("run", "--", "sh", "-c", "test -e /base2 && jq --version").code == 0


def test_prune_releases_the_code_snapshots_of_removed_commits(pienv: Pienv) -> None:
    repo = pienv.repo
    pienv("run", "--", "touch", "/kept")
    (repo / "README").write_text("dirty\n")
    pienv("run", "--", "touch", "/dropped")
    code = ctx_of(pienv).commit(pienv.head()).code
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/pienv/code/").split() == [
        f"refs/pienv/code/{code}"
    ]
    pienv("reset", "HEAD~1")
    time.sleep(1.1)  # the reflog entry that still reaches it must be older than 1s
    r = pienv("prune", "--older-than", "1s")
    assert "released 1 code snapshot" in r.err
    assert git(repo, "for-each-ref", "refs/pienv/code/") == ""
    assert (repo / "README").read_text() == "dirty\n"  # the user's tree is never touched


def test_rebase_replays_the_agent_install_once(pienv: Pienv, base_image: str) -> None:
    # The TOML value holds backslash-n for printf, not a line break: Podman's commit refuses
    # a line break in a label's value (engine/dialects/podman.py).
    install = "mkdir -p ~/.local/bin && printf '#!/bin/sh\\\\necho hi\\\\n' > ~/.local/bin/myagent"
    install += " && chmod +x ~/.local/bin/myagent"
    pienv.home.mkdir(parents=True, exist_ok=True)
    (pienv.home / "config.toml").write_text(
        f'[agent]\ncommand = ["myagent"]\ninstall = "{install}"\n'
    )
    assert pienv("run").out == "hi\n"  # the install, then the agent (a session: by hand)
    pienv("run", "--", "touch", "/after")
    out = rebase.start(ctx_of(pienv), second_base(base_image))
    assert not out.stopped_at, out.reason
    r = pienv("run")
    assert r.out == "hi\n" and "installing" not in r.err
    assert pienv("run", "--", "ls", "/after", "/base2").code == 0
