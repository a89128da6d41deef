"""Every `--json` output of the CLI against the key sets docs/json.md documents.

The doc's `shape` lines are parsed here, so the doc and the code cannot drift: a renamed field,
a new key, or a command that gains `--json` without a line in the doc fails this test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import Pienv, _cleanup, on_podman
from registry import Registry, plant_lost_update, running

# Every --json shape once: which engine answered does not change the keys.
pytestmark = pytest.mark.one_engine

DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"

# A parsed shape: ("obj", {key: shape or None}) or ("list", shape).
Shape = tuple[str, Any]


def _tokens(text: str) -> list[str]:
    return re.findall(r"\.\.\.|[{}\[\],:]|[A-Za-z_][A-Za-z0-9_]*", text)


def parse_shape(text: str, named: dict[str, Shape]) -> Shape:
    toks = _tokens(text)
    pos = 0

    def take(expected: str | None = None) -> str:
        nonlocal pos
        tok = toks[pos]
        if expected is not None:
            assert tok == expected, f"{text!r}: expected {expected!r} at {tok!r}"
        pos += 1
        return tok

    def shape() -> Shape:
        tok = take()
        if tok == "[":
            inner = shape()
            take("]")
            return ("list", inner)
        if tok == "{":
            keys: dict[str, Shape | None] = {}
            while toks[pos] != "}":
                if toks[pos] == "...":
                    take()
                    spread = named[take()]
                    assert spread[0] == "obj"
                    keys.update(spread[1])
                else:
                    key = take()
                    keys[key] = None
                    if toks[pos] == ":":
                        take()
                        keys[key] = shape()
                if toks[pos] == ",":
                    take()
            take("}")
            return ("obj", keys)
        return named[tok]

    result = shape()
    assert pos == len(toks), f"{text!r}: trailing {toks[pos:]}"
    return result


def doc_shapes() -> dict[str, Shape]:
    """command ("log", "worktree list", ...) -> its documented shape."""
    text = DOC.read_text()
    named: dict[str, Shape] = {}
    for name, body in re.findall(r"^shape `([A-Z]+)`: `([^`]+)`", text, re.M):
        named[name] = parse_shape(body, named)
    shapes = {}
    for bullet in re.split(r"\n(?=- )", text.split("## Outputs", 1)[1]):
        m = re.match(r"- `([a-z -]+?) --json`", bullet.strip())
        if m:
            body = re.search(r"shape: `([^`]+)`", bullet)
            assert body, f"docs/json.md: `{m.group(1)} --json` has no shape line"
            shapes[m.group(1)] = parse_shape(body.group(1), named)
    return shapes


def cli_json_commands() -> set[str]:
    """Every command of the typer app that takes --json."""
    import typer

    from pienv.cli import app

    found = set()

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))
        if any("--json" in getattr(p, "opts", ()) for p in getattr(cmd, "params", ())):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), ())
    return found


def test_doc_shapes_parse_and_name_every_json_command() -> None:
    shapes = doc_shapes()
    row = shapes["log"][1][1]  # [{...COMMIT, graph}]: the commit keys spread, plus graph
    assert {"short", "id", "refs", "graph"} <= set(row) and row["short"] is None
    assert set(shapes) == cli_json_commands()


def check(value: Any, shape: Shape, where: str, seen: set[str]) -> None:
    """Assert ``value`` has exactly the documented keys; note in ``seen`` each shape path that
    held real data (so an empty list cannot pass for a checked one)."""
    kind, inner = shape
    if kind == "list":
        assert isinstance(value, list), f"{where}: not a list: {value!r}"
        for item in value:
            check(item, inner, where + "[]", seen)
        if not value:
            return  # an empty list is not evidence: its path stays unseen
    else:
        assert isinstance(value, dict), f"{where}: not an object: {value!r}"
        assert set(value) == set(inner), (
            f"{where}: keys differ from docs/json.md: extra {sorted(set(value) - set(inner))}, "
            f"missing {sorted(set(inner) - set(value))}"
        )
        for key, sub in inner.items():
            if sub is not None and value[key] is not None:
                check(value[key], sub, f"{where}.{key}", seen)
    seen.add(where)


def shape_paths(shape: Shape, where: str) -> set[str]:
    kind, inner = shape
    if kind == "list":
        return {where, *shape_paths(inner, where + "[]")}
    out = {where}
    for key, sub in inner.items():
        if sub is not None:
            out |= shape_paths(sub, f"{where}.{key}")
    return out


@pytest.mark.engine
def test_every_json_output_has_the_documented_keys(pienv: Pienv, tmp_path: Path) -> None:
    from pienv import locks
    from pienv.model import RunInfo

    pienv("run", "--", "sh", "-c", "echo 1 > /a")
    root = json.loads(pienv("log", "--json").out)[-1]["id"]
    pienv("run", "-b", "side", "--", "touch", "/side")
    side = pienv.head("side")
    pienv("branch", "-D", "side")
    pienv("tag", "v1")
    pienv("worktree", "add", str(tmp_path / "wt"), "wt")
    # An orphan run container (its pienv gone), made from the now unreachable side commit, so
    # `prune --keep 1` has a commit in use to report.
    client = docker.from_env()
    info = RunInfo(
        store=pienv.refs()["store_id"],
        branch="main",
        parent=root,
        host="nowhere",
        pid=1,
        pid_start="",
        started="2026-01-01T00:00:00.000000Z",
        workspace=str(pienv.repo),
        command=("true",),
        message="",
    )
    client.api.create_container(side, command=["true"], labels=info.labels())
    outputs: dict[str, Any] = {}
    with running(tmp_path / "registry") as reg:
        _remote_outputs(pienv, tmp_path, reg, outputs)
    _egress_outputs(pienv, outputs)
    lock, _ = locks.acquire(pienv.home / "locks", "main", str(pienv.repo))
    try:
        outputs["status"] = json.loads(pienv("status", "--json").out)
    finally:
        lock.release()
    for cmd, args in {
        "log": ("log", "--all", "--graph"),
        "show": ("show", "HEAD"),
        "diff": ("diff", root, "--packages"),
        "branch": ("branch",),
        "tag": ("tag",),
        "reflog": ("reflog",),
        "worktree list": ("worktree", "list"),
        "orphans": ("orphans",),
        "prune": ("prune", "--keep", "1", "--dry-run"),
        "fsck": ("fsck",),
        "doctor": ("doctor",),
    }.items():
        r = pienv(*args, "--json", check=False)
        assert r.out, (cmd, r.code, r.err)
        outputs[cmd] = json.loads(r.out)
    shapes = doc_shapes()
    assert set(outputs) == set(shapes)
    missing = []
    for cmd, shape in shapes.items():
        seen: set[str] = set()
        check(outputs[cmd], shape, cmd, seen)
        missing += sorted(shape_paths(shape, cmd) - seen)
    if on_podman():
        # rootful Podman beside Docker drops the agent's traffic to the proxy (test_egress.py):
        # the run's audit stays empty there, its keys were still checked above
        missing = [m for m in missing if not m.startswith("egress log.attempts")]
    assert not missing, f"no data to check at {missing}: make the test produce some"


def _egress_outputs(pienv: Pienv, outputs: dict[str, Any]) -> None:
    """egress allow/deny/mode/show, a run through the proxy with a refused attempt (busybox
    wget through the HTTP proxy pienv sets), its log and what learn makes of it, then reset."""
    from pienv import egressnet
    from pienv.engine import Engine

    try:
        outputs["egress allow"] = json.loads(pienv("egress", "allow", "example.org", "--json").out)
        outputs["egress deny"] = json.loads(pienv("egress", "deny", "bad.example", "--json").out)
        outputs["egress mode"] = json.loads(pienv("egress", "mode", "allow-list", "--json").out)
        outputs["egress show"] = json.loads(pienv("egress", "show", "--json").out)
        # (busybox wget crashes on a proxy URL with credentials: the request by hand)
        script = (
            'p=${HTTP_PROXY#http://}; a=${p#*@}; auth=$(printf %s "${p%@*}" | base64); '
            "printf 'GET http://refused.example/ HTTP/1.0\\r\\nProxy-Authorization: Basic "
            '%s\\r\\n\\r\\n\' "$auth" | nc -w 10 ${a%:*} ${a#*:}; touch /egressed'
        )
        pienv("run", "--", "sh", "-c", script)
        outputs["egress log"] = json.loads(pienv("egress", "log", "--json").out)
        outputs["egress learn"] = json.loads(pienv("egress", "learn", "--json").out)
        outputs["egress reset"] = json.loads(pienv("egress", "reset", "--json").out)
    finally:
        egressnet.remove(Engine(), pienv.refs()["store_id"])


def _remote_outputs(pienv: Pienv, tmp_path: Path, reg: Registry, outputs: dict[str, Any]) -> None:
    """remote list, push, fetch, pull and clone, each with data in every list it has: a
    lost update planted on the remote, and refs a second store adds between fetches."""
    url = f"{reg.address}/t/json"
    pienv("remote", "add", "origin", url)
    pienv("push", "--all")
    plant_lost_update(reg.address, "t/json")
    outputs["push"] = json.loads(pienv("push", "--all", "--json").out)
    other = Pienv(tmp_path / "clone", pienv.repo, None)
    try:
        outputs["clone"] = json.loads(other("clone", url, "--json").out)
        for tag, branch in (("v2", "moved"), ("v3", "moved-again")):
            other("tag", tag)
            other("branch", branch)
            other("push", "origin", tag, branch)
            cmd = "fetch" if tag == "v2" else "pull"
            outputs[cmd] = json.loads(
                pienv(cmd, *(["origin", "main"] if tag == "v3" else []), "--json").out
            )
    finally:
        _cleanup(other)
    outputs["remote list"] = json.loads(pienv("remote", "list", "--json").out)
