"""Layers read from overlay directories equal what a layer tarball says (whiteouts,
opaque directories), so a diff walks only the layers above the shared base."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pienv.ops import fsdiff, overlay


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are device nodes: root makes them")
def test_overlay_layers_give_the_changes_a_tarball_gives(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for d in (lower / "a", lower / "dir", upper / "a", upper / "dir"):
        d.mkdir(parents=True)
    (lower / "a" / "x").write_text("1")
    (lower / "a" / "y").write_text("2")
    (lower / "dir" / "z").write_text("3")
    (lower / "big").mkdir()
    (lower / "big" / "inside").write_text("4")
    (upper / "a" / "x").write_text("11")
    os.mknod(upper / "a" / "y", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    os.mknod(upper / "big", 0o600 | 0o020000, os.makedev(0, 0))  # a whole tree deleted
    os.setxattr(upper / "dir", "trusted.overlay.opaque", b"y")
    (upper / "dir" / "new").write_text("5")
    layers = overlay.read([str(lower), str(upper)], 1)
    assert layers is not None
    ch = fsdiff.layer_changes(layers, 1)
    assert ch.added == ["/dir/new"]
    assert ch.changed == ["/a/x"]
    assert ch.deleted == ["/a/y", "/big", "/big/inside", "/dir/z"]


def test_unreadable_layer_directories_mean_no_fast_path(tmp_path: Path) -> None:
    assert overlay.read([str(tmp_path / "gone"), str(tmp_path)], 1) is None
