"""No input ends in a traceback (exit 3): huge numbers, long names, store files of the wrong
type or kind, binary config, terminal escapes, a reader gone. In-process on a store made by
hand, with an engine that is not there (each answer must come without one), plus a fuzz test
that drives names, revisions and store files and checks exit 0, 1 or 2 and nothing lost."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pienv import entry
from pienv.model import Commit
from pienv.store import Store

A, B, C = "a" * 64, "b" * 64, "c" * 64


def make_store(home: Path) -> Store:
    s = Store(home)
    s.init()
    with s.transaction("run") as txn:
        for cid, parents in ((A, ()), (B, (A,)), (C, (B,))):
            txn.add_commit(
                Commit(cid, parents, "main", "m \x1b[31mred\x07", "2020-01-01T00:00:00Z")
            )
        txn.move_branch("main", None, C)
        txn.set_tag("v1", A)
    return s


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "store"
    make_store(home)
    monkeypatch.setenv("PIENV_HOME", str(home))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent-pienv-test/no-engine.sock")
    monkeypatch.delenv("PIENV_CONFIG", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return home


def pienv(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            entry.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("show", "HEAD~" + "1" * 5000), "a number larger than"),
        (("log", "main@{" + "9" * 5000 + "}"), "a number larger than"),
        (("branch", "x" * 300), "longer than 200 bytes"),
        (("tag", "y" * 300), "longer than 200 bytes"),
        (("log", "-n", "-1"), "-n takes a number"),
        (("run", "--wait", "-1", "--", "true"), "--wait takes a number"),
        (("run", "--wait", "nan", "--", "true"), "--wait takes a number"),
        (("run", "--wait", "inf", "--", "true"), "--wait takes a number"),
    ],
)
def test_bad_numbers_and_names_get_one_line(home: Path, argv: tuple[str, ...], said: str) -> None:
    code, _, err = pienv(*argv)
    assert code in (1, 2) and said in err and "Traceback" not in err


@pytest.mark.parametrize(
    "refs",
    [
        {"branches": []},
        {"branches": {"main": 12345}},
        {"head": "main"},
        {"store_id": 7},
        {"tags": {"v1": None}},
    ],
)
def test_refs_json_of_the_wrong_types_is_named_not_fatal(
    home: Path, refs: dict[str, object]
) -> None:
    data = json.loads((home / "refs.json").read_text())
    data.update(refs)
    (home / "refs.json").write_text(json.dumps(data))
    for argv in (("log",), ("branch",), ("status",), ("reset", "HEAD~1")):
        code, _, err = pienv(*argv)
        assert code in (0, 1), (argv, err)
        assert "refs.json is corrupt" in err and "fsck --repair" in err


def test_wrong_typed_index_and_reflog_lines_are_skipped(home: Path) -> None:
    with open(home / "commits.jsonl", "a") as fh:
        fh.write('{"id": 5, "parents": [], "branch": "main", "message": "m", "created": "t"}\n')
        fh.write('{"id": "d", "parents": 3, "branch": 1, "message": [], "created": {}}\n')
    with open(home / "reflog.jsonl", "a") as fh:
        fh.write('{"ref": 1, "old": 2, "new": 3, "time": 4, "who": 5, "what": 6}\n')
    for argv in (("log",), ("reflog",), ("log", "--all"), ("log", "main@{0}")):
        code, _, err = pienv(*argv)
        assert code == 0, (argv, err)


def test_a_directory_in_place_of_a_store_file_is_one_line(home: Path) -> None:
    (home / "refs.lock").unlink(missing_ok=True)
    (home / "refs.lock").mkdir()
    code, _, err = pienv("branch", "x")
    assert code == 1 and "cannot lock the store" in err
    (home / "refs.lock").rmdir()
    (home / "refs.json").unlink()
    (home / "refs.json").mkdir()
    code, _, err = pienv("log")
    assert code == 1 and "refs.json is corrupt" in err


def test_binary_config_is_one_line(home: Path) -> None:
    (home / "config.toml").write_bytes(b"\xff\xfe\x00garbage\x80")
    proc = subprocess.run(
        [sys.executable, "-m", "pienv", "run", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and "cannot read config" in proc.stderr, proc.stderr


def test_terminal_escapes_in_messages_are_shown_escaped(home: Path) -> None:
    code, out, _ = pienv("log")
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mred\\x07" in out


def test_log_into_a_closed_pipe_exits_0(home: Path) -> None:
    s = Store(home)
    with s.transaction("run") as txn:
        parent = C
        for n in range(3000):  # enough output to fill the pipe
            cid = f"{n:064x}"
            txn.add_commit(Commit(cid, (parent,), "main", "m", "2020-01-01T00:00:00Z"))
            parent = cid
        txn.move_branch("main", C, parent)
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m pienv log | true"],
        env={**os.environ},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_worktree_add_in_proc_is_one_line(home: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (
        ["init", "-q"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "i"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    os.chdir(repo)
    code, _, err = pienv("worktree", "add", "/proc/x")
    assert code == 1 and "cannot add worktree /proc/x" in err
    assert "proc" not in json.dumps(json.loads((Store(home).refs_path).read_text()))


# -- fuzz ----------------------------------------------------------------------------------

NAMES = st.text(min_size=0, max_size=300) | st.from_regex(r"[a-z./@{}~^:-]{1,40}", fullmatch=True)
REVS = st.text(max_size=50) | st.from_regex(
    r"(HEAD|main|v1|[0-9a-f]{4,12}|@)(~[0-9]{0,30}|\^[0-9]{0,3}|@\{[0-9]{0,30}\})*", fullmatch=True
)
COMMANDS = st.sampled_from(
    [
        ("branch", "{}"),
        ("tag", "{}"),
        ("checkout", "-b", "{}"),
        ("branch", "-m", "main", "{}"),
        ("log", "{}"),
        ("show", "{}"),
        ("reset", "{}"),
        ("diff", "{}"),
        ("reflog", "{}"),
        ("branch", "-d", "{}"),
        ("tag", "-d", "{}"),
    ]
)
FILES = st.sampled_from(["refs.json", "commits.jsonl", "reflog.jsonl", "config.toml"])
JUNK = st.binary(max_size=200) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
).map(lambda v: json.dumps(v).encode())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(command=COMMANDS, text=NAMES | REVS)
def test_fuzz_names_and_revisions(home: Path, command: tuple[str, ...], text: str) -> None:
    """Any name or revision: exit 0, 1 or 2, never 3; the history is all still there."""
    argv = [a.replace("{}", text) for a in command]
    code, _, err = pienv(*argv)
    assert code in (0, 1, 2), (argv, err)
    s = Store(home)
    assert {A, B, C} <= set(s.commits())
    assert C in s.load_refs().branches.values() or any(e.new == C for e in s.reflog())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=FILES,
    junk=JUNK,
    command=st.sampled_from(
        [("log",), ("branch",), ("status",), ("tag", "t"), ("reflog",), ("show", "HEAD")]
    ),
)
def test_fuzz_store_files(home: Path, name: str, junk: bytes, command: tuple[str, ...]) -> None:
    """Any content in a store file: exit 0, 1 or 2, never 3."""
    path = home / name
    before = path.read_bytes() if path.exists() else None
    path.write_bytes(junk)
    try:
        code, _, err = pienv(*command)
        assert code in (0, 1, 2), (name, junk, command, err)
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)


def test_a_read_only_store_still_answers_read_only_commands(home: Path) -> None:
    """A read-only store (a read-only mount): 10 commands ended in tracebacks."""
    if os.getuid() != 0:
        pytest.skip("needs a read-only bind mount (root)")
    subprocess.run(["mount", "--bind", str(home), str(home)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(home)], check=True)
        for argv in (("log",), ("status",), ("branch",), ("reflog",), ("tag",), ("log", "--all")):
            code, _, err = pienv(*argv)
            assert code == 0, (argv, err)
        for argv in (("branch", "x"), ("tag", "t"), ("reset", "HEAD~1")):
            code, _, err = pienv(*argv)
            assert code == 1 and "read-only" in err, (argv, err)
    finally:
        subprocess.run(["umount", str(home)], check=True)
