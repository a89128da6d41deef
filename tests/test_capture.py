"""Change capture: every change a run leaves in the container's writable layer is
committed, whatever its kind; a run that only gained mount points makes no commit."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import docker
import pytest
from conftest import Pienv

pytestmark = pytest.mark.engine


def store_images(p: Pienv) -> set[str]:
    sid = p.refs()["store_id"]
    rows = docker.from_env().api.images(filters={"label": f"dev.pienv.store={sid}"})
    return {r["Id"] for r in rows}


def layers(image: str) -> list[str]:
    return list(docker.from_env().api.inspect_image(image)["RootFS"]["Layers"])


def run_in_process(p: Pienv, monkeypatch: pytest.MonkeyPatch, script: str):  # type: ignore[no-untyped-def]
    """One run without the interpreter start: back-to-back runs as tight as they get."""
    from pienv.context import Context
    from pienv.ops import run as runmod
    from pienv.store import Store

    for key, value in p.env.items():
        monkeypatch.setenv(key, value)
    req = runmod.RunRequest(command=("sh", "-c", script))
    ctx = Context(store=Store(p.home))
    return runmod.run(ctx, req, p.repo, p.env, lambda b: None, lambda b: None)


def test_back_to_back_same_size_rewrites_are_all_committed(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tight rewrite loop: `docker diff` misses about 1 in 3 of these (same size, same
    second as the previous write); each run must still give its own commit."""
    missed = []
    for i in range(10, 50):
        result = run_in_process(pienv, monkeypatch, f"mkdir -p /opt && echo {i} > /opt/n")
        if result.commit is None:
            missed.append(i)
    assert missed == []
    runs = [c for c in json.loads(pienv("log", "--json").out) if c["kind"] == "run"]
    assert len(runs) == 40
    assert pienv("run", "--", "cat", "/opt/n").out == "49\n"


@pytest.mark.parametrize(
    ("setup", "change", "check", "expect"),
    [
        # deletion only: the layer holds nothing but a whiteout
        ("touch /gone", "rm /gone", "[ -e /gone ] || echo missing", "missing"),
        # same size, same mtime: what `docker diff` misses every time (moby/moby#31805)
        (
            "echo 11 > /n && touch -d '2020-01-01 00:00:00' /n",
            "echo 12 > /n && touch -d '2020-01-01 00:00:00' /n",
            "cat /n",
            "12",
        ),
        # chmod only: no byte of content changes
        ("touch /m && chmod 644 /m", "chmod 600 /m", "stat -c %a /m", "600"),
        # an empty file
        ("true", "touch /empty", "ls /empty", "/empty"),
        # a symlink, then retargeted with the same length within the same second
        ("ln -s /aaa /link", "ln -sfn /bbb /link", "readlink /link", "/bbb"),
        # an empty directory
        ("true", "mkdir /emptydir", "ls -d /emptydir", "/emptydir"),
    ],
    ids=["delete", "same-mtime", "chmod", "empty-file", "symlink", "empty-dir"],
)
def test_every_kind_of_change_is_committed(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch, setup: str, change: str, check: str, expect: str
) -> None:
    run_in_process(pienv, monkeypatch, setup)
    before = pienv.head()
    # Same-second back to back, in-process: the case `docker diff` gets wrong.
    result = run_in_process(pienv, monkeypatch, change)
    assert result.commit is not None, f"{change!r} made no commit"
    assert pienv.head() != before
    assert pienv("run", "--", "sh", "-c", check).out.strip() == expect


def test_noop_runs_add_no_image_after_root_flatten_and_reset(pienv: Pienv) -> None:
    """Mount points Docker creates for pienv's own mounts are not changes, on the first run
    after each commit pienv makes itself."""
    pienv("run", "--", "true")  # creates the root commit
    root = pienv.head()
    assert len(pienv("log").out.splitlines()) == 1, pienv("show").out
    images = store_images(pienv)
    r = pienv("run", "--", "true")
    assert "no commit" in r.err and store_images(pienv) == images and pienv.head() == root

    pienv("run", "--", "touch", "/x")
    pienv("flatten")
    flat = pienv.head()
    images = store_images(pienv)
    assert "no commit" in pienv("run", "--", "true").err
    assert store_images(pienv) == images and pienv.head() == flat

    pienv("reset", "--system")
    fresh = pienv.head()
    images = store_images(pienv)
    assert "no commit" in pienv("run", "--", "true").err
    assert store_images(pienv) == images and pienv.head() == fresh

    pienv("reset", "--all")
    bare = pienv.head()
    images = store_images(pienv)
    assert "no commit" in pienv("run", "--", "true").err
    assert store_images(pienv) == images and pienv.head() == bare


def test_noop_in_linked_worktree_and_with_configured_mount(pienv: Pienv, tmp_path: Path) -> None:
    """Mount points that vary per run (a worktree's common git dir at its host path, a
    configured mount) are not changes either: the first run that needs them gets a "prepare"
    commit holding them, and the run itself (and every later no-op) makes none."""
    pienv("run", "--", "true")
    wt = tmp_path / "wt"
    subprocess.run(
        ["git", "worktree", "add", "-q", "-b", "wtb", str(wt)], cwd=pienv.repo, check=True
    )
    r = pienv("run", "--", "true", cwd=wt)
    assert "no commit" in r.err and "prepare: mount points" in r.err, r.err
    kinds = [c["kind"] for c in json.loads(pienv("log", "--json").out)]
    assert kinds == ["prepare", "root"]
    head, images = pienv.head(), store_images(pienv)
    r = pienv("run", "--", "true", cwd=wt)
    assert "no commit" in r.err and "prepare" not in r.err, r.err
    assert pienv.head() == head and store_images(pienv) == images

    data = tmp_path / "data"
    data.mkdir()
    (pienv.home / "config.toml").write_text(f'[run]\nmounts = ["{data}:/srv/deep/data:ro"]\n')
    pienv("run", "--", "true")
    head, images = pienv.head(), store_images(pienv)
    r = pienv("run", "--", "true")
    assert "no commit" in r.err, r.err
    assert pienv.head() == head and store_images(pienv) == images
    # A real change made beside a varying mount point is still committed.
    pienv("run", "--", "touch", "/real", cwd=wt)
    assert pienv.head() != head
    assert pienv("run", "--", "ls", "/real").out == "/real\n"


@pytest.mark.realistic
def test_realistic_noop_runs_add_no_image(realistic_pienv: Pienv) -> None:
    """On a merged-/usr Debian base Docker's init lands at /usr/sbin/docker-init: the root,
    flatten and reset --system commits hold it, so no-op runs after each add nothing."""
    test_noop_runs_add_no_image_after_root_flatten_and_reset(realistic_pienv)


@pytest.mark.realistic
def test_realistic_back_to_back_rewrites_are_all_committed(
    realistic_pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_back_to_back_same_size_rewrites_are_all_committed(realistic_pienv, monkeypatch)


def test_diff_lists_no_engine_noise_nor_mount_points(pienv: Pienv) -> None:
    """`diff X X` is empty; Docker's per-container files (/.dockerenv, /etc/hosts, ...) and
    the mount points of runs are not listed; a dot-file keeps its name."""
    pienv("run", "--", "true")
    root = pienv.head()
    data = json.loads(pienv("diff", root, root, "--json").out)
    assert (data["added"], data["changed"], data["deleted"]) == ([], [], [])
    pienv("run", "--", "sh", "-c", "touch /.hidden /visible")
    data = json.loads(pienv("diff", root, "--json").out)
    assert data["added"] == ["/.hidden", "/visible"], data
    assert data["changed"] == [] and data["deleted"] == []
    head = pienv.head()
    assert pienv("diff", head, head).out.startswith(f"{head[:12]}..{head[:12]}: 0 added")


def test_show_and_diff_list_a_same_second_same_mtime_rewrite(
    pienv: Pienv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a commit holds, `show` and `diff` list: a same-size rewrite within the second,
    with the old mtime put back, has the same metadata as before (a metadata comparison of
    the two images sees nothing), but it is in the commit's layer, so it is a change."""
    same = "touch -d '2020-01-01 00:00:00' /opt/n"
    run_in_process(pienv, monkeypatch, f"mkdir -p /opt && echo 1 > /opt/n && {same}")
    first = pienv.head()
    result = run_in_process(pienv, monkeypatch, f"echo 2 > /opt/n && {same}")
    assert result.commit is not None
    shown = json.loads(pienv("show", "--json").out)["paths"]
    assert {"kind": "C", "path": "/opt/n"} in shown, shown
    assert "C /opt/n" in pienv("show").out
    data = json.loads(pienv("diff", first, "--json").out)
    assert data["changed"] == ["/opt/n"] and data["added"] == data["deleted"] == [], data
    # Reversed, the same path: the change runs both ways.
    data = json.loads(pienv("diff", "HEAD", first, "--json").out)
    assert data["changed"] == ["/opt/n"] and data["added"] == data["deleted"] == [], data
    # Across both runs (two layers on the older commit): /opt/n is new.
    data = json.loads(pienv("diff", "HEAD~2", "--json").out)
    assert "/opt/n" in data["added"] and "/opt/n" not in data["changed"], data
    assert json.loads(pienv("diff", "HEAD", "HEAD", "--json").out)["changed"] == []


def test_show_lists_a_directory_whose_only_change_is_its_metadata(pienv: Pienv) -> None:
    """A run that creates and removes a file in a directory (apt and /tmp) leaves only the
    directory's new mtime in its layer: a change (the commit holds it), shown as `M` with
    no bytes of file data."""
    pienv("run", "--", "mkdir", "/scratch")
    pienv("run", "--", "sh", "-c", "touch /scratch/x && rm /scratch/x")
    data = json.loads(pienv("show", "--json").out)
    assert data["paths"] == [{"kind": "M", "path": "/scratch"}], data["paths"]
    out = pienv("show").out
    # Docker's size of such a layer is 0 B, Podman's its tar headers (2.2 kB).
    assert re.search(r"\nsize added: +[0-9.]+ k?B \(metadata only\)\n", out), out
    assert "1 path changed: 0 added, 0 changed, 0 deleted, 1 metadata only" in out, out
    assert "\nM /scratch\n" in out, out
    data = json.loads(pienv("diff", "HEAD~1", "--json").out)
    assert data["metadata"] == ["/scratch"] and data["changed"] == [], data
    # A file added under a directory lists the file, not the directory it was made in.
    pienv("run", "--", "touch", "/scratch/y")
    assert json.loads(pienv("show", "--json").out)["paths"] == [{"kind": "A", "path": "/scratch/y"}]


def test_show_reads_a_layer_identical_to_an_earlier_one(pienv: Pienv) -> None:
    """Two runs that leave byte-identical layers (the same directory time set twice): the
    engine's image export writes such a layer once and links the second copy to it; the
    second commit still shows its own change."""
    script = "mkdir -p /d && touch -d '2020-01-01 00:00:00' /d"
    pienv("run", "--", "sh", "-c", script)
    pienv("run", "--", "sh", "-c", script)
    ids = [layer for layer in layers(pienv.head())]
    assert len(ids) == len(set(ids)) + 1  # the same layer twice
    assert json.loads(pienv("show", "--json").out)["paths"] == [{"kind": "M", "path": "/d"}]
