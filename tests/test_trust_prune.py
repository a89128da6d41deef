"""What `docker image prune [-a]`, `docker system prune -a` and `docker rmi TAG` do to a store,
on a private dockerd this module starts (never the shared engine: these commands delete every
unused image of the engine they talk to). docs/recovery.md has the matrix these tests hold."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pienv, make_repo
from privatedocker import copy_image, private_dockerd

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def private_host(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[str]:
    with private_dockerd(
        Path("/var/tmp") / f"pienv-test-dockerd-{tmp_path_factory.getbasetemp().name}"
    ) as host:
        copy_image(base_image, host)
        yield host


@pytest.fixture
def p(tmp_path: Path, private_host: str, base_image: str) -> Pienv:
    pv = Pienv(tmp_path / "store", make_repo(tmp_path / "repo"), base_image)
    pv.env["DOCKER_HOST"] = private_host
    if docker(pv, "image", "inspect", base_image, check=False).returncode:
        copy_image(base_image, private_host)  # the test before pruned it
    return pv


def docker(p: Pienv, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", p.env["DOCKER_HOST"], *args],
        capture_output=True,
        text=True,
        check=check,
    )


def history(p: Pienv) -> list[str]:
    """Three runs on main, a tag on the first; the commits oldest first (root included)."""
    for n in range(3):
        p("run", "--", "touch", f"/f{n}")
        if n == 0:
            p("tag", "first")
    return [line.split()[0] for line in reversed(p("log").out.splitlines())]


def test_image_prune_all_keeps_heads_and_tags_and_their_history(p: Pienv) -> None:
    """Without keepers `docker image prune -a` deleted every commit and the base, and pienv
    stayed silent. A keeper (a never-started container) per branch head and tag keeps them,
    and on Docker their ancestors as parents; prune -a untags those, fsck --repair tags them
    again."""
    commits = history(p)
    docker(p, "image", "prune", "-af")
    log = p("log")
    assert "gone from the engine" not in log.err
    assert "lost their tag" in log.err
    p("fsck", "--repair")
    assert p("fsck").code == 0
    assert p("log").err == ""
    p("reset", commits[1])  # an ancestor, still there
    assert p("run", "--", "ls", "/f0").code == 0


def test_rmi_of_a_head_tag_is_refused_while_its_keeper_exists(p: Pienv) -> None:
    history(p)
    tag = f"pienv/{p.refs()['store_id']}:{p.head()[:12]}"
    r = docker(p, "rmi", tag, check=False)
    assert r.returncode != 0 and "container" in r.stderr
    # `docker tag OTHER TAG` takes the tag away; the keeper still keeps the image from
    # plain `docker image prune`, and fsck --repair puts the tag back.
    docker(p, "tag", "pienv-test/busybox-git:2", tag)
    docker(p, "image", "prune", "-f")
    assert "lost their tag" in p("status").err
    p("fsck", "--repair")
    assert p("fsck").code == 0


def test_system_prune_all_is_said_with_a_count_and_never_moved_onto(p: Pienv) -> None:
    """`docker system prune -a` removes stopped containers first, keepers included, then
    every image: what is gone is said at once by every command that reads the branch."""
    commits = history(p)
    docker(p, "system", "prune", "-af")
    gone = f"{len(commits)} of the {len(commits)} commits"
    assert gone in p("log").err
    assert gone in p("status").err
    r = p("reset", commits[1], check=False)
    assert r.code == 1 and "gone from the engine" in r.err
    r = p("fsck", check=False)
    assert r.code == 1 and "no such image" in r.out
