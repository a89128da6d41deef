"""pienv run by a real non-root user (the `nonroot` fixture: uid 4321 in the docker group)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import NonrootPienv

pytestmark = [pytest.mark.engine, pytest.mark.nonroot]


def test_nonroot_driver_is_real(nonroot: NonrootPienv) -> None:
    """The driver runs this checkout's code, as uid 4321, with no access to root's files."""
    proc = subprocess.run(
        [
            nonroot.command[0], "-u", "pienvtest", "--", str(nonroot.venv / "bin" / "python"), "-c",
            "import os, pienv; print(os.getuid(), os.getgroups(), pienv.__file__,"
            " os.access('/root', os.R_OK))",
        ],
        env=nonroot.env,
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    uid, rest = proc.stdout.split(" ", 1)
    assert uid == "4321"
    src = Path(__file__).resolve().parent.parent / "src"
    assert f" {src}/pienv/__init__.py " in rest
    assert rest.split()[-1] == "False"


def test_nonroot_workspace_files_belong_to_the_host_user(nonroot: NonrootPienv) -> None:
    """Design rule 5: what the agent creates in /workspace is the host user's, not root's."""
    nonroot(
        "run", "--", "sh", "-c", "id -u > /workspace/uid; mkdir /workspace/d; touch /workspace/d/f"
    )
    assert (nonroot.repo / "uid").read_text().strip() == "4321"
    for path in (nonroot.repo / "uid", nonroot.repo / "d", nonroot.repo / "d" / "f"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (4321, 4321), path
    # The store is the user's too: pienv ran as uid 4321 on the host.
    assert os.stat(nonroot.home / "refs.json").st_uid == 4321
