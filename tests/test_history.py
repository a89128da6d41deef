"""History commands against the real engine: branch, checkout, reset, reflog, tag, log --graph,
show, diff (--packages), and their errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import BASE_TAG, Pienv

pytestmark = pytest.mark.engine


def short(p: Pienv, ref: str = "main") -> str:
    return p.head(ref)[:12]


def test_branch_run_checkout_reset_reflog_undo(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/base-tool")
    base = pienv.head()
    assert pienv("branch", "experiment").out.strip() == f"Created branch experiment at {base[:12]}."
    assert pienv("checkout", "experiment").out.startswith("Switched to branch 'experiment'")
    pienv("run", "--", "touch", "/risky")
    risky = pienv.head("experiment")
    assert pienv.head("main") == base  # main untouched
    # back on main the risky install is not there
    pienv("checkout", "main")
    assert pienv("run", "--", "ls", "/risky", check=False).code != 0
    # reset experiment back, then undo the reset through the reflog
    pienv("checkout", "experiment")
    out = pienv("reset", "HEAD~1").out
    assert out.strip() == f"experiment is now at {base[:12]} (was {risky[:12]})."
    assert pienv.head("experiment") == base
    rows = json.loads(pienv("reflog", "--json").out)
    assert [r["selector"] for r in rows[:2]] == ["experiment@{0}", "experiment@{1}"]
    assert rows[0]["what"] == "reset: moving to HEAD~1" and rows[1]["new"] == risky
    pienv("reset", "experiment@{1}")
    assert pienv.head("experiment") == risky
    assert pienv("run", "--", "ls", "/risky").out == "/risky\n"


@pytest.mark.one_engine
def test_log_graph_exact(pienv: Pienv) -> None:
    pienv("run", "-m", "tools", "--", "touch", "/a")
    pienv("branch", "exp")
    pienv("run", "-m", "main work", "--", "touch", "/b")
    pienv("run", "-b", "exp", "-m", "exp work", "--", "touch", "/c")
    pienv("tag", "v1", "exp")
    out = pienv("log", "--graph", "--all").out
    lines = [re.sub(r"\s+\(\d+[smhd] ago\)$", "", line) for line in out.splitlines()]
    root = json.loads(pienv("log", "--json").out)[-1]["id"][:12]
    tools = pienv.head("exp")  # exp's parent
    tools_id = json.loads(pienv("show", "exp~1", "--json").out)["id"][:12]
    assert lines == [
        f"* {short(pienv, 'exp')} (exp, tag: v1) exp work",
        f"| * {short(pienv)} (HEAD -> main) main work",
        "|/",
        f"* {tools_id} tools",
        f"* {root} root: base {BASE_TAG}",
    ]
    assert tools  # exp head exists
    assert "\x1b[" not in out  # NO_COLOR


@pytest.mark.one_engine
def test_log_limits_and_json(pienv: Pienv) -> None:
    for i in range(3):
        pienv("run", "--", "touch", f"/f{i}")
    rows = json.loads(pienv("log", "-n", "2", "--json").out)
    assert len(rows) == 2 and rows[0]["refs"] == ["HEAD -> main"]
    assert rows[0]["parents"] == [rows[1]["id"]]
    assert set(rows[0]) >= {
        "id",
        "short",
        "parents",
        "branch",
        "message",
        "created",
        "command",
        "exit_code",
        "workspace",
        "git_head",
        "changes",
        "size",
        "layers",
    }


def test_show_metadata_and_changes(pienv: Pienv) -> None:
    pienv(
        "run", "--", "sh", "-c", "mkdir -p /opt/t && touch /opt/t/a /opt/t/b && exit 3", check=False
    )
    out = pienv("show").out
    assert out.splitlines()[0].startswith(f"commit {pienv.head()} (HEAD -> main)")
    assert "\nexit code:  3\n" in out and "\ncommand:    sh -c mkdir" in out
    assert "A /opt/t/a" in out and "4 paths changed: 4 added, 0 changed, 0 deleted" in out
    data = json.loads(pienv("show", "HEAD", "--json").out)
    assert {"kind": "A", "path": "/opt/t/b"} in data["paths"]


def test_diff_paths_and_packages(pienv: Pienv) -> None:
    status = "Package: {p}\nStatus: install ok installed\nVersion: {v}\n\n"
    pienv(
        "run",
        "--",
        "sh",
        "-c",
        "mkdir -p /var/lib/dpkg && printf '"
        + status.format(p="curl", v="7.0").replace("\n", "\\n")
        + "' > /var/lib/dpkg/status && touch /old",
    )
    pienv("tag", "before")
    pienv(
        "run",
        "--",
        "sh",
        "-c",
        "printf '"
        + (status.format(p="curl", v="8.0") + status.format(p="jq", v="1.7")).replace("\n", "\\n")
        + "' > /var/lib/dpkg/status; rm /old; "
        "mkdir -p /usr/lib/python3/dist-packages/requests-2.32.0.dist-info && "
        "touch /usr/lib/python3/dist-packages/requests-2.32.0.dist-info/METADATA; "
        "mkdir -p /usr/lib/node_modules/left-pad && "
        'echo \'{"version": "1.3.0"}\' > /usr/lib/node_modules/left-pad/package.json',
    )
    data = json.loads(pienv("diff", "before", "--json").out)
    assert "/old" in data["deleted"]
    assert "/var/lib/dpkg/status" in data["changed"]
    assert "/usr/lib/node_modules/left-pad/package.json" in data["added"]
    assert data["packages"] is None
    data = json.loads(pienv("diff", "before", "--packages", "--json").out)
    assert data["added"] is None  # --packages reads the package databases, not every path
    assert data["packages"]["dpkg"] == {
        "added": ["jq 1.7"],
        "removed": [],
        "upgraded": ["curl 7.0 -> 8.0"],
    }
    assert data["packages"]["pip"]["added"] == ["requests 2.32.0"]
    assert data["packages"]["npm"]["added"] == ["left-pad 1.3.0"]
    text = pienv("diff", "before", "--packages").out
    assert "dpkg  upgraded  curl 7.0 -> 8.0" in text
    # An image never changes: its packages are read once and kept in the store.
    kept = pienv.home / "changes" / f"{data['new']}.packages.json"
    saved = json.loads(kept.read_text())
    assert saved["packages"]["dpkg"] == {"curl": "8.0", "jq": "1.7"}
    saved["packages"]["dpkg"]["kept"] = "1"
    kept.write_text(json.dumps(saved))

    def added() -> list[str]:
        out = json.loads(pienv("diff", "before", "--packages", "--json").out)
        return list(out["packages"]["dpkg"]["added"])

    assert added() == ["jq 1.7", "kept 1"]  # answered from the store
    saved["version"] = 0  # kept by another version of the reader: read again
    kept.write_text(json.dumps(saved))
    assert added() == ["jq 1.7"]


def test_tags(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    pienv("tag", "good")
    assert json.loads(pienv("tag", "--json").out) == [{"name": "good", "commit": pienv.head()}]
    r = pienv("tag", "good", check=False)
    assert r.code == 1 and "already exists" in r.err
    pienv("tag", "-d", "good")
    assert json.loads(pienv("tag", "--json").out) == []


def test_branch_list_delete_rename(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    pienv("branch", "keep")
    pienv("run", "-b", "lonely", "--", "touch", "/only-here")
    rows = {b["name"]: b for b in json.loads(pienv("branch", "--json").out)}
    assert rows["main"]["current"] and rows["lonely"]["commits"] == 3
    r = pienv("branch", "-d", "main", check=False)
    assert r.code == 1 and "it is the current branch" in r.err
    r = pienv("branch", "-d", "lonely", check=False)
    assert r.code == 1 and "branch -D lonely" in r.err
    pienv("branch", "-m", "keep", "kept")
    assert "kept" in {b["name"] for b in json.loads(pienv("branch", "--json").out)}
    assert json.loads(pienv("reflog", "kept", "--json").out)[-1]["what"].startswith(
        "branch: created"
    )
    pienv("branch", "-D", "lonely")
    assert "lonely" not in pienv.refs()["branches"]
    table = pienv("branch").out
    assert re.search(r"\*\s+main\s+" + pienv.head()[:12], table)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nosuch"), "unknown revision 'nosuch'"),
        (("reset", "HEAD~9"), "'HEAD~9': the history goes back only 1 commit from there"),
        (("branch", "bad..name"), "invalid branch name 'bad..name'"),
        (("checkout", "-b", "a b"), "invalid branch name 'a b'"),
        (("reflog", "nope"), "no reflog for 'nope'"),
    ],
)
def test_errors_are_one_line(pienv: Pienv, args: tuple[str, ...], message: str) -> None:
    pienv("run", "--", "touch", "/a")
    r = pienv(*args, check=False)
    assert r.code == 1
    assert r.err.startswith("pienv: error: ") and message in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_ambiguous_prefix_lists_candidates(tmp_path: Path, repo: Path) -> None:
    """Two commits sharing a 4-hex prefix are made up in the index (real ids collide about
    once in 65,536 pairs, so runs would almost never test this): the short prefix is refused
    naming both, a longer one resolves, an unknown one is an unknown revision."""
    from pienv.model import Commit
    from pienv.store import Store

    store = Store(tmp_path / "store")
    store.init()
    a, b = "abcd" + "1" * 60, "abcd" + "2" * 60
    for cid in (a, b):
        store.add_commit(Commit(cid, (), "main", f"commit {cid[:5]}", "2026-01-01T00:00:00Z"))
    with store.transaction("test") as txn:
        txn.move_branch("main", None, b)
    p = Pienv(store.home, repo, None)  # show answers from the index: no engine call
    r = p("show", "abcd", check=False)
    assert r.code == 1 and "ambiguous revision 'abcd'" in r.err
    assert a[:12] in r.err and b[:12] in r.err
    assert json.loads(p("show", "abcd1", "--json").out)["id"] == a
    r = p("show", "ffff", check=False)
    assert r.code == 1 and "unknown revision 'ffff'" in r.err


def test_checkout_detached_and_run_advances_it(pienv: Pienv) -> None:
    pienv("run", "--", "touch", "/a")
    first = pienv.head()
    pienv("run", "--", "touch", "/b")
    r = pienv("checkout", first[:8])
    assert "detached" in r.out and "runs will advance a detached HEAD" in r.err
    pienv("run", "--", "touch", "/c")
    refs = pienv.refs()
    assert refs["head"]["detached"] != first and "branch" not in refs["head"]
    assert "HEAD is detached" in pienv("status").err
    # One spelling of "detached" (docs/architecture.md): null in every --json output.
    status = json.loads(pienv("status", "--json").out)
    assert status["branch"] is None and status["detached"] is True
    assert json.loads(pienv("log", "-n", "1", "--json").out)[0]["branch"] is None


def test_checkout_away_from_a_detached_head_warns_of_commits_left_behind(pienv: Pienv) -> None:
    # git warns "you are leaving 1 commit behind"; the commit then lives only in the reflog
    # (prune takes it when the entry expires), so the user must hear it and how to keep it.
    pienv("run", "--", "touch", "/a")
    first = pienv.head()
    pienv("checkout", first[:8])
    pienv("run", "--", "touch", "/c")
    made = pienv.refs()["head"]["detached"]
    r = pienv("checkout", "main")
    assert f"leaving commit {made[:12]} behind" in r.err
    assert f"pienv branch NAME {made[:12]}" in r.err
    # Leaving a detached HEAD that a branch still reaches says nothing.
    pienv("checkout", first[:8])
    assert "behind" not in pienv("checkout", "main").err


def test_log_secrets_finds_a_deleted_credential_file_and_reset_prune_removes_it(
    pienv: Pienv,
) -> None:
    """A file deleted in a later run is still in the older commit's layer: `log --secrets`
    names it, `show` warns of it, and the documented way (reset before it, prune with the
    reflog expired) takes it out of history."""
    pienv("run", "--", "sh", "-c", "echo 'machine x password p' > /home/agent/.netrc")
    planted = pienv.head()
    pienv("run", "--", "rm", "/home/agent/.netrc")
    r = pienv("log", "--secrets")
    assert f"{planted[:12]}" in r.out and "/home/agent/.netrc" in r.out
    assert "docs/agents.md" in r.err  # how to remove it
    assert "/home/agent/.netrc" in pienv("show", planted[:12]).err
    pienv("reset", "HEAD~2")
    pienv("prune", "--older-than", "0s")
    assert pienv("log", "--secrets").out == ""
    assert "no credential-looking files" in pienv("log", "--secrets").err


def test_status_names_the_base_truthfully_before_the_first_commit(pienv: Pienv) -> None:
    pienv("worktree", "add", str(pienv.repo.parent / "wt"))  # a store, no commit yet
    line = next(x for x in pienv("status").out.splitlines() if x.startswith("base"))
    assert "None" not in line and BASE_TAG in line and "none yet" in line
    assert json.loads(pienv("status", "--json").out)["base"] is None


def test_status_size_is_the_heads_real_size_after_prune(pienv: Pienv) -> None:
    for i in range(3):
        pienv("run", "--", "sh", "-c", f"head -c 200000 /dev/urandom > /f{i}")
    pienv("prune", "--keep", "1")
    size = json.loads(pienv("status", "--json").out)["size"]
    real = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", pienv.head()], capture_output=True, check=True
        ).stdout
    )[0]["Size"]
    assert size == real


def test_log_hides_prepare_commits_unless_all_kinds(pienv: Pienv) -> None:
    pienv("run", "--", "true")
    wt = pienv.repo.parent / "wt"
    pienv("worktree", "add", str(wt))
    pienv("run", "--", "touch", "/made", cwd=wt)
    kinds = [c["kind"] for c in json.loads(pienv("log", "--all-kinds", "--json", cwd=wt).out)]
    assert "prepare" in kinds  # the worktree's first run prepared its mount points
    text = pienv("log", cwd=wt).out
    assert "prepare" not in text and "touch /made" in text
    assert len(text.splitlines()) == len(kinds) - 1
    graph = pienv("log", "--graph", "--all", cwd=wt).out
    assert "prepare" not in graph and "touch /made" in graph


def test_prune_dry_run_reports_what_the_real_prune_frees(pienv: Pienv) -> None:
    for i in range(3):
        pienv("run", "--", "sh", "-c", f"head -c 300000 /dev/urandom > /f{i}")
    pienv("branch", "side")
    pienv("checkout", "side")
    pienv("run", "--", "sh", "-c", "head -c 300000 /dev/urandom > /side")
    pienv("checkout", "main")
    pienv("branch", "-D", "side")  # its own commit is unreachable but for the reflog
    for args in (("--keep", "1"), ("--older-than", "0s")):
        dry = json.loads(pienv("prune", *args, "--dry-run", "--json").out)
        real = json.loads(pienv("prune", *args, "--json").out)
        assert dry["bytes_freed"] == real["bytes_freed"], args
        assert sorted(dry["removed"]) == sorted(real["removed"]), args
