"""The default base: its Dockerfile parses and builds its context; PIENV_BASE_IMAGE bypasses it.

The real base needs a registry (FROM ubuntu:24.04), which this machine does not have, so the
build itself is checked up to the point where the engine asks for the parent image."""

from __future__ import annotations

import json

import pytest
from conftest import Pienv

from pienv.runloop import baseimage as base


def test_dockerfile_parses_with_expected_parts() -> None:
    steps = base.parse_dockerfile(base.base_images_dir() / "default" / "Dockerfile")
    words = [w for w, _ in steps]
    assert steps[0] == ("FROM", "ubuntu:24.04")
    assert {"ARG", "RUN", "ENV", "USER", "WORKDIR"} <= set(words)
    text = " ".join(a for _, a in steps)
    for needed in (
        "AGENT_UID",
        "AGENT_GID",
        "build-essential",
        "git",
        "ripgrep",
        "nodesource",
        "NOPASSWD",
        "useradd",
    ):
        assert needed in text
    assert ("USER", "agent") in steps and ("WORKDIR", "/workspace") in steps


def test_build_args_are_the_host_user() -> None:
    import os

    args = base.build_args()
    assert args["AGENT_UID"] == str(os.getuid() or 1000)
    assert args["AGENT_GID"] == str(os.getgid() or 1000)


@pytest.mark.engine
def test_default_base_build_sends_context_and_needs_only_a_registry(pienv: Pienv) -> None:
    env = {k: v for k, v in pienv.env.items() if k != "PIENV_BASE_IMAGE"}
    r = pienv("base", "build", env=env | {"PIENV_BASE_IMAGE": ""}, check=False)
    assert r.code == 1
    # The context was read and the first step reached: only the missing registry stops it.
    assert "base build failed" in r.err and "registry" in r.err
    # The build's steps are shown as it goes; the error itself is one line.
    *steps, last = r.err.strip().splitlines()
    assert steps and all(line.startswith("pienv: Step ") for line in steps)
    assert last.startswith("pienv: error: base build failed") and "set PIENV_BASE_IMAGE" in last
    assert "Traceback" not in r.err


@pytest.mark.engine
def test_pienv_base_image_bypasses_the_build(pienv: Pienv, base_image: str) -> None:
    pienv("run", "--", "true")
    status = json.loads(pienv("status", "--json").out)
    assert status["base"].startswith(base_image)
    root = json.loads(pienv("log", "--json").out)[-1]
    assert root["kind"] == "root" and root["message"] == f"root: base {base_image}"
