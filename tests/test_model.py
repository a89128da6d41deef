"""Revision grammar, ref-name rules and the label <-> commit mapping (no engine)."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pienv.errors import UsageError
from pienv.model import (
    COMMIT_KEYS,
    LABEL,
    Commit,
    Rev,
    RunInfo,
    check_ref_name,
    parse_age,
    parse_rev,
)


@pytest.mark.parametrize(
    ("text", "rev"),
    [
        ("main", Rev("main")),
        ("HEAD", Rev("HEAD")),
        ("HEAD~3", Rev("HEAD", None, (("~", 3),))),
        ("HEAD^", Rev("HEAD", None, (("^", 1),))),
        ("main^2", Rev("main", None, (("^", 2),))),
        ("a1b2c3~2^", Rev("a1b2c3", None, (("~", 2), ("^", 1)))),
        ("main@{4}", Rev("main", 4)),
        ("main@{1}~1", Rev("main", 1, (("~", 1),))),
        ("@{2}", Rev("HEAD", 2)),
        ("feature/x~", Rev("feature/x", None, (("~", 1),))),
    ],
)
def test_parse_rev(text: str, rev: Rev) -> None:
    assert parse_rev(text) == rev


@pytest.mark.parametrize("bad", ["", " main", "main~x", "main@{x}", "~1", "a@{1}@{2}"])
def test_parse_rev_rejects(bad: str) -> None:
    with pytest.raises(UsageError, match=r"bad revision|unknown"):
        parse_rev(bad)


@given(st.lists(st.tuples(st.sampled_from("~^"), st.integers(0, 50)), max_size=6))
def test_parse_rev_suffix_roundtrip(steps: list[tuple[str, int]]) -> None:
    text = "main" + "".join(f"{op}{n}" for op, n in steps)
    assert parse_rev(text).steps == tuple(steps)


GIT_NAMES = [
    "ok",
    "feat/x",
    "a.b",
    "v1.0",
    "x-y_z",
    "a..b",
    "a b",
    "-x",
    "x.lock",
    "a/.b",
    "a//b",
    "x/",
    "x.",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[",
    "a\\b",
    "x@{1}",
    "feat/ü",
]


@pytest.mark.parametrize("name", GIT_NAMES)
def test_ref_names_follow_git(name: str, tmp_path: object) -> None:
    git_ok = (
        subprocess.run(
            ["git", "check-ref-format", "--branch", name], capture_output=True
        ).returncode
        == 0
    )
    try:
        check_ref_name(name)
        ours = True
    except UsageError:
        ours = False
    assert ours == git_ok, name


def test_ref_names_refuse_hex_lookalikes_and_revision_words() -> None:
    # Deliberately stricter than git: a branch "deadbeef" would shadow id prefixes, and
    # "@" / "HEAD" already mean HEAD in revisions.
    with pytest.raises(UsageError, match="looks like a commit id"):
        check_ref_name("deadbeef")
    for word in ("@", "HEAD"):
        with pytest.raises(UsageError, match="reserved"):
            check_ref_name(word)


def test_labels_roundtrip_and_complete() -> None:
    c = Commit(
        id="ab" * 32,
        parents=("cd" * 32,),
        branch="main",
        message="m: x",
        created="2026-01-01T00:00:00.000000Z",
        command=("sh", "-c", "echo 'a b'"),
        exit_code=3,
        workspace="/w",
        git_head="f" * 40,
        changes=2,
        run_pid=7,
    )
    labels = c.labels("store1")
    assert {k.removeprefix(LABEL) for k in labels} == set(COMMIT_KEYS)
    back = Commit.from_labels("sha256:" + c.id, labels)
    assert back == c


def test_run_labels_are_all_overwritten_by_commit_labels() -> None:
    # Docker merges the run container's labels into the commit: every key a run container
    # carries must be one the commit sets itself, or it would leak into history.
    info = RunInfo("s", "main", "p" * 64, "host", 1, "2", "t", "/w", ("x",), "")
    assert set(info.labels()) <= set(Commit("", (), "", "", "").labels("s"))


def test_parse_age() -> None:
    assert parse_age("90s") == 90
    assert parse_age("2w") == 14 * 86400
    with pytest.raises(UsageError):
        parse_age("soon")
