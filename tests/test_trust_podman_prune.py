"""Podman's own prunes (`podman --remote image prune -a`, `system prune -a`, through its
libpod API) against a store, on a private Podman service this module starts: the Podman
column of docs/recovery.md's matrix, measured by hand before, held by a test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pienv, make_repo
from privatedocker import copy_image
from test_trust_prune import history

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which("podman") is None, reason="no podman"),
]
SERVICE = Path(__file__).parent / "podman" / "service.sh"


@pytest.fixture(scope="module")
def podman_host(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[str]:
    where = Path("/var/tmp") / f"pienv-podman-prune-{tmp_path_factory.getbasetemp().name}"
    host = (
        subprocess.run(
            ["bash", str(SERVICE), "start", str(where)], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    try:
        copy_image(base_image, host)
        yield host
    finally:
        subprocess.run(["bash", str(SERVICE), "stop", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def p(tmp_path: Path, podman_host: str, base_image: str) -> Pienv:
    pv = Pienv(tmp_path / "store", make_repo(tmp_path / "repo"), base_image)
    pv.env["DOCKER_HOST"] = podman_host
    if podman(pv, "image", "exists", base_image, check=False).returncode:
        copy_image(base_image, podman_host)  # the test before pruned it
    return pv


def podman(p: Pienv, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "--remote", "--url", p.env["DOCKER_HOST"], *args],
        capture_output=True,
        text=True,
        check=check,
    )


def test_podman_image_prune_all_keeps_heads_and_tags(p: Pienv) -> None:
    """Podman keeps the image a keeper uses, not its parents: the head and the tag stay,
    the commits between them go, and every command says how many."""
    commits = history(p)  # root, first (tagged), second, head
    podman(p, "image", "prune", "-af")
    assert p("run", "--", "ls", "/f2").code == 0  # the head is there
    p("reset", "first")
    assert p("run", "--", "ls", "/f0").code == 0  # and the tag
    assert podman(p, "image", "exists", commits[2], check=False).returncode != 0


def test_podman_system_prune_all_removes_the_keepers_and_is_said(p: Pienv) -> None:
    commits = history(p)
    podman(p, "system", "prune", "-af")
    gone = f"{len(commits)} of the {len(commits)} commits"
    assert gone in p("log").err
    r = p("reset", commits[1], check=False)
    assert r.code == 1 and "gone from the engine" in r.err
