"""push, fetch, pull and clone against a real registry (Docker Distribution 2.8.2 on
127.0.0.1, tests/registry.py): every commit travels, two stores pushing at once never lose a
commit, a credential file anywhere in the history stops a push, garbage collection keeps every
pushed commit, and a missing login is one line."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import Pienv, _cleanup
from registry import Registry, running

from pienv import registry as regmod
from pienv.ops.remotelayout import parse_index, record_tag

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture
def clone_store(tmp_path: Path, repo: Path, base_image: str) -> Iterator[Pienv]:
    p = Pienv(tmp_path / "clone", repo, base_image)
    yield p
    _cleanup(p)


def remote(reg: Registry, name: str) -> str:
    return f"{reg.address}/t/{name}"


def tags(reg: Registry, repo: str) -> list[str]:
    return regmod.Client(regmod.parse_location(remote(reg, repo))).tags()


def pushed_digest(reg: Registry, repo: str, cid: str) -> str:
    """The hex of the manifest digest commit ``cid`` has on the remote."""
    got = regmod.Client(regmod.parse_location(remote(reg, repo))).head_manifest(f"c-{cid[:12]}")
    assert got is not None
    return got[0].removeprefix("sha256:")


def ids(p: Pienv) -> list[str]:
    return [c["id"] for c in json.loads(p("log", "--json").out)]


def test_push_then_clone_elsewhere_brings_every_commit_and_runs(
    pienv: Pienv, clone_store: Pienv, reg: Registry
) -> None:
    pienv("run", "--", "sh", "-c", "echo one > /etc/one")
    pienv("run", "--", "sh", "-c", "echo two > /etc/two")
    pienv("tag", "v1")
    pienv("remote", "add", "origin", remote(reg, "roundtrip"))
    pushed = json.loads(pienv("push", "--all", "--json").out)
    assert [(r["kind"], r["name"], r["outcome"]) for r in pushed["refs"]] == [
        ("branch", "main", "created"),
        ("tag", "v1", "created"),
    ]
    history = ids(pienv)
    assert pushed["commits"] == len(history) == 3
    assert {"b-main", "t-v1"} <= set(tags(reg, "roundtrip"))
    again = json.loads(pienv("push", "--all", "--json").out)
    assert again["commits"] == 0 and {r["outcome"] for r in again["refs"]} == {"up to date"}

    # The machine the branch was made on is gone: none of its images is left here.
    _cleanup(pienv)
    client = docker.from_env()
    for cid in history:
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("sha256:" + cid)

    # A clone that fails half-way (the registry loses a commit's manifest) leaves nothing.
    broken = Pienv(clone_store.home.parent / "broken", clone_store.repo, None)
    data = reg.root / "data/docker/registry/v2/repositories/t/roundtrip/_manifests/revisions"
    shutil.copytree(data, reg.root / "saved-revisions")
    shutil.rmtree(data / "sha256" / f"{pushed_digest(reg, 'roundtrip', history[0])}")
    r = broken("clone", remote(reg, "roundtrip"), check=False)
    assert r.code == 1 and r.err.count("\n") == 1, r.err
    assert not broken.home.exists()
    shutil.rmtree(data)
    shutil.copytree(reg.root / "saved-revisions", data)

    cloned = json.loads(clone_store("clone", remote(reg, "roundtrip"), "--json").out)
    assert cloned["branch"] == "main" and cloned["head"] == history[0]
    assert cloned["fetch"]["commits"] == 3  # pulled, each by its own manifest
    assert ids(clone_store) == history  # same ids: the same image configs
    assert clone_store("tag", "--json").out.count('"v1"') == 1
    assert clone_store.refs()["head"] == {"branch": "main"}
    out = clone_store("run", "--", "cat", "/etc/one", "/etc/two").out
    assert out.split() == ["one", "two"]
    clone_store("run", "--", "touch", "/etc/three")
    result = json.loads(clone_store("push", "--json").out)
    assert result["commits"] == 1 and result["refs"][0]["outcome"] == "pushed"
    assert clone_store("fsck").code == 0


def test_pull_fast_forwards_and_refuses_diverged_heads_naming_both(
    pienv: Pienv, clone_store: Pienv, reg: Registry
) -> None:
    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "pull"))
    pienv("push")
    clone_store("clone", remote(reg, "pull"))
    clone_store("run", "--", "touch", "/etc/b")
    clone_store("push", "main")  # `push BRANCH`: the default remote
    theirs = clone_store.head()
    r = json.loads(pienv("pull", "main", "--json").out)  # a branch, for the default remote
    assert (r["outcome"], r["new"]) == ("fast-forward", theirs)
    assert pienv.head() == theirs
    assert "(up to date" in pienv("pull").out
    assert json.loads(pienv("remote", "list", "--json").out) == [
        {"name": "origin", "url": remote(reg, "pull"), "branches": {"main": theirs}, "tags": {}}
    ]
    # Both go on from the same head: whoever pushes second is refused, nothing moves.
    pienv("run", "--", "touch", "/etc/mine")
    clone_store("run", "--", "touch", "/etc/yours")
    clone_store("push")
    mine, yours = pienv.head(), clone_store.head()
    refused = pienv("push", check=False)
    assert refused.code == 1 and refused.err.count("\n") == 1, refused.err
    assert "not a fast-forward" in refused.err and theirs[:12] not in refused.err
    assert yours[:12] in refused.err and mine[:12] in refused.err
    diverged = pienv("pull", check=False)
    assert diverged.code == 1 and "diverged" in diverged.err, diverged.err
    assert mine[:12] in diverged.err and yours[:12] in diverged.err
    assert pienv.head() == mine
    # origin/main is a revision, listed, drawn and counted.
    assert json.loads(pienv("log", "-n", "1", "--json", "origin/main").out)[0]["id"] == yours
    rows = json.loads(pienv("branch", "-a", "--json").out)
    assert [(r["name"], r["head"]) for r in rows] == [
        ("main", mine),
        ("remotes/origin/main", yours),
    ]
    graph = pienv("log", "--graph", "--all").out
    assert "origin/main" in graph and "HEAD -> main" in graph
    assert "origin/main: 1 ahead, 1 behind" in pienv("status").out
    status = json.loads(pienv("status", "--json").out)
    assert status["remotes"] == [{"remote": "origin", "head": yours, "ahead": 1, "behind": 1}]


def test_two_stores_pushing_at_once_one_wins_the_other_loses_nothing(
    pienv: Pienv, clone_store: Pienv, reg: Registry
) -> None:
    pienv("remote", "add", "origin", remote(reg, "race"))
    pienv("run", "--", "touch", "/etc/base")
    pienv("push")
    clone_store("clone", remote(reg, "race"))
    pienv("run", "--", "touch", "/etc/from-a")
    clone_store("run", "--", "touch", "/etc/from-b")
    a_head, b_head = pienv.head(), clone_store.head()
    procs = [pienv.popen("push"), clone_store.popen("push")]
    codes = [p.wait(timeout=120) for p in procs]
    errs = [p.stderr.read() if p.stderr else "" for p in procs]
    assert sorted(codes) == [0, 1], errs
    winner, loser = (pienv, clone_store) if codes[0] == 0 else (clone_store, pienv)
    won, lost = (a_head, b_head) if codes[0] == 0 else (b_head, a_head)
    assert codes[codes.index(1)] == 1 and "nothing was" in errs[codes.index(1)], errs
    # The loser's branch and commit are untouched; the remote has the winner's head and
    # reports no lost update.
    assert loser.head() == lost
    assert docker.from_env().images.get("sha256:" + lost)
    fetched = json.loads(loser("fetch", "--json").out)
    assert fetched["lost"] == []
    assert json.loads(loser("remote", "list", "--json").out)[0]["branches"]["main"] == won
    assert loser("push", check=False).code == 1  # now plainly not a fast-forward
    assert winner.head() == won
    # Different branches at once: separate objects on the remote, both go through.
    loser("branch", "mine")
    winner("branch", "theirs")
    procs = [loser.popen("push", "origin", "mine"), winner.popen("push", "origin", "theirs")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert {"b-mine", "b-theirs"} <= set(tags(reg, "race"))


def test_a_lost_update_shows_at_the_next_fetch(pienv: Pienv, reg: Registry) -> None:
    """A registry without compare-and-swap lets a racing writer put an older index back
    after our read-back: the push record makes the next fetch say so."""
    pienv("remote", "add", "origin", remote(reg, "lost"))
    pienv("run", "--", "touch", "/etc/one")
    pienv("push")
    client = regmod.Client(regmod.parse_location(remote(reg, "lost")))
    got = client.manifest("b-main")
    assert got is not None
    pienv("run", "--", "touch", "/etc/two")
    pienv("push")
    second = pienv.head()
    client.put_manifest("b-main", got[2], regmod.INDEX)  # the other writer lands last
    rec = client.manifest(record_tag(second, "main"))
    assert rec is not None
    body = json.loads(rec[2])
    body["annotations"]["dev.pienv.pushed"] = "2026-01-01T00:00:00Z"  # out of its grace time
    client.put_manifest(record_tag(second, "main"), json.dumps(body).encode(), regmod.INDEX)
    r = pienv("fetch", "--json")
    lost = json.loads(r.out)["lost"]
    assert [x["head"] for x in lost] == [second[:12]] and lost[0]["branch"] == "main"
    assert "lost update" in pienv("fetch").err
    assert f"c-{second[:12]}" in tags(reg, "lost")  # its commit is still on the remote


def test_a_credential_file_anywhere_in_the_history_stops_the_push(
    pienv: Pienv, reg: Registry
) -> None:
    pienv("remote", "add", "origin", remote(reg, "secrets"))
    pienv("run", "--", "touch", "/etc/clean")
    pienv("branch", "leaky")
    pienv("branch", "dotenv")
    pienv(
        "run", "-b", "leaky", "--", "sh", "-c", "mkdir -p /root/.ssh && echo k > /root/.ssh/id_rsa"
    )
    planted = pienv.head("leaky")
    pienv("run", "-b", "leaky", "--", "rm", "-rf", "/root/.ssh")  # gone from the head only
    r = pienv("push", "origin", "leaky", check=False)
    assert r.code == 1 and r.err.count("\n") == 1, r.err
    assert "/root/.ssh/id_rsa" in r.err and planted[:12] in r.err and "nothing was pushed" in r.err
    # The same finding where layer directories cannot be read (a remote or rootless
    # engine): from one engine export.
    from pienv.engine import Engine
    from pienv.ops.pushscan import _scan_export

    found = _scan_export(Engine(), [planted])
    assert [(f.commit, f.path) for f in found] == [(planted, "/root/.ssh/id_rsa")]
    # --squash sends the head's files only: the deleted key is not among them.
    squashed = json.loads(pienv("push", "--squash", "origin", "leaky", "--json").out)
    assert squashed["commits"] == 1 and squashed["refs"][0]["outcome"] == "created"
    again = json.loads(pienv("push", "--squash", "origin", "leaky", "--json").out)
    assert again["commits"] == 0 and again["refs"][0]["outcome"] == "up to date"
    secret = "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz"
    pienv(
        "run",
        "-b",
        "dotenv",
        "--",
        "sh",
        "-c",
        f"mkdir -p /srv/app && echo {secret} > /srv/app/.env",
    )
    r = pienv("push", "origin", "dotenv", check=False)
    assert r.code == 1 and "/srv/app/.env" in r.err and "OPENAI_API_KEY" in r.err, r.err
    assert len([t for t in tags(reg, "secrets") if t.startswith("c-")]) == 1  # the squash
    # A commit made before logins moved out of images is refused unless forced.
    index = pienv.home / "commits.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    root = rows[0]["id"]
    rows[0]["created"] = "2026-11-01T00:00:00.000000Z"
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = pienv("push", check=False)
    assert r.code == 1 and "before agent logins moved out" in r.err and root[:12] in r.err
    assert json.loads(pienv("push", "--force", "--json").out)["refs"][0]["outcome"] == "created"


def test_registry_garbage_collection_keeps_every_pushed_commit(
    pienv: Pienv, tmp_path: Path
) -> None:
    with running(tmp_path / "gc-registry") as reg:
        pienv("remote", "add", "origin", remote(reg, "gc"))
        pienv("run", "--", "sh", "-c", "echo 1 > /etc/one")
        pienv("run", "--", "sh", "-c", "echo 2 > /etc/two")
        pienv("push")
        pienv("branch", "side", "HEAD~1")
        pienv("run", "-b", "side", "--", "sh", "-c", "echo s > /etc/side")
        pienv("push", "origin", "side")
        client = regmod.Client(regmod.parse_location(remote(reg, "gc")))
        commits = {}
        for tag in ("b-main", "b-side"):
            got = client.manifest(tag)
            ref = parse_index(got[2], got[0]) if got else None
            assert ref is not None
            commits.update({d.digest: d for d in ref.commits.values()})
        assert len(commits) == 4
        reg.garbage_collect("--delete-untagged")
        for digest in commits:
            got = client.manifest(digest)
            assert got is not None, f"manifest {digest} was collected"
            layers = json.loads(got[2])["layers"]
            for layer in layers:
                url = f"http://{reg.address}/v2/t/gc/blobs/{layer['digest']}"
                req = urllib.request.Request(url, method="HEAD")
                assert urllib.request.urlopen(req).status == 200


def test_a_missing_login_is_one_line_and_the_engines_login_is_used(
    pienv: Pienv, tmp_path: Path
) -> None:
    import base64
    import warnings

    with warnings.catch_warnings():  # deprecated in 3.11; bcrypt is the registry's one scheme
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    # The lowest cost: the registry checks the hash on every request of a push.
    hashed = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    with running(tmp_path / "auth-registry", htpasswd=f"alice:{hashed}\n") as reg:
        pienv("remote", "add", "origin", remote(reg, "auth"))
        pienv("run", "--", "touch", "/etc/x")
        empty = tmp_path / "no-login"
        empty.mkdir()
        r = pienv("push", check=False, env={"DOCKER_CONFIG": str(empty)})
        assert r.code == 1 and r.err.count("\n") == 1, r.err
        assert f"docker login {reg.address}" in r.err
        conf = tmp_path / "docker-config"
        conf.mkdir()
        token = base64.b64encode(b"alice:s3cret").decode()
        (conf / "config.json").write_text(json.dumps({"auths": {reg.address: {"auth": token}}}))
        out = json.loads(pienv("push", "--json", env={"DOCKER_CONFIG": str(conf)}).out)
        assert out["refs"][0]["outcome"] == "created"


def test_push_of_one_more_run_sends_about_its_layer(pienv: Pienv, reg: Registry) -> None:
    pienv("remote", "add", "origin", remote(reg, "incremental"))
    pienv("run", "--", "touch", "/etc/first")
    first = json.loads(pienv("push", "--json").out)
    pienv("run", "--", "sh", "-c", "head -c 3000000 /dev/urandom > /etc/blob")
    t = time.monotonic()
    second = json.loads(pienv("push", "--json").out)
    assert time.monotonic() - t < 60
    assert second["commits"] == 1
    assert 2_900_000 <= second["bytes"] <= 3_400_000, (first["bytes"], second["bytes"])
