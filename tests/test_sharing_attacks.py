"""Attacks on push, fetch and clone (issue 24 review): a hostile remote index, credentials
the scan could miss, a push whose view of the remote went stale, a clone killed half-way and
credentials in a remote's URL. Against a real registry (tests/registry.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pienv, _cleanup
from registry import Registry, running

from pienv import registry as regmod
from pienv.ops.remotelayout import escape


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture
def other(tmp_path: Path, repo: Path, base_image: str) -> Iterator[Pienv]:
    p = Pienv(tmp_path / "other", repo, base_image)
    yield p
    _cleanup(p)


def remote(reg: Registry, name: str) -> str:
    return f"{reg.address}/attack/{name}"


def client(reg: Registry, name: str) -> regmod.Client:
    return regmod.Client(regmod.parse_location(remote(reg, name)))


def one_error_line(r: Any) -> None:
    assert r.code == 1, (r.code, r.err, r.log)
    assert r.err.count("\n") == 1 and r.err.startswith("pienv: error: "), r.err
    assert "\x1b" not in r.err


def state(p: Pienv) -> tuple[str, str]:
    return (p.home / "refs.json").read_text(), (p.home / "remotes.json").read_text()


Mutation = Callable[[dict[str, Any], str], str]  # (index body, base image) -> tag to put it at


def _renamed(name: str, kind: str = "branch") -> Mutation:
    def mutate(body: dict[str, Any], _: str) -> str:
        body["annotations"]["dev.pienv.name"] = name
        body["annotations"]["dev.pienv.ref"] = kind
        return ("b-" if kind == "branch" else "t-") + escape(name)

    return mutate


def _commit_id(cid_of: Callable[[str], str]) -> Mutation:
    def mutate(body: dict[str, Any], base: str) -> str:
        cid = cid_of(base)
        body["annotations"]["dev.pienv.head"] = cid
        body["manifests"][0]["annotations"]["dev.pienv.commit"] = cid
        body["annotations"]["dev.pienv.name"] = "odd"
        return "b-odd"

    return mutate


def _cycle(body: dict[str, Any], _: str) -> str:
    ms = body["manifests"]
    ids = [m["annotations"]["dev.pienv.commit"] for m in ms]
    for i, m in enumerate(ms):
        m["annotations"]["dev.pienv.parents"] = ids[(i + 1) % len(ids)]
    ms[-1]["annotations"]["dev.pienv.parents"] = ids[0]
    body["annotations"]["dev.pienv.name"] = "cycle"
    return "b-cycle"


HOSTILE: dict[str, Mutation] = {
    "dotdot-branch": _renamed("../x"),
    "escape-branch": _renamed("evil\x1b[2J\x1b]0;pwned\x07"),
    "commit-id-lookalike-tag": _renamed("deadbeef", "tag"),
    "local-image-as-commit": _commit_id(lambda base: base),
    "non-hex-commit": _commit_id(lambda _: "z" * 64),
}


@pytest.mark.engine
def test_a_hostile_remote_index_is_one_line_and_changes_nothing(
    pienv: Pienv, base_image: str, reg: Registry
) -> None:
    pienv("run", "--", "touch", "/etc/a")
    pienv("run", "--", "touch", "/etc/b")
    pienv("remote", "add", "origin", remote(reg, "hostile"))
    pienv("push")
    pienv("fetch")
    c = client(reg, "hostile")
    got = c.manifest("b-main")
    assert got is not None
    before = state(pienv)
    for what, mutate in {**HOSTILE, "parent-cycle": _cycle}.items():
        body = json.loads(got[2])
        tag = mutate(body, base_image)
        digest = c.put_manifest(tag, json.dumps(body).encode(), regmod.INDEX)
        try:
            r = pienv("fetch", check=False)
            if what == "parent-cycle":
                # Parents come from the images' own labels, not from the index: harmless.
                assert r.code == 0, r.err
                assert json.loads(state(pienv)[1])["tracking"]["origin"]["branches"]["cycle"]
                continue
            one_error_line(r)
            assert state(pienv) == before, what
            r = pienv("pull", check=False)
            one_error_line(r)
        finally:
            c.request("DELETE", f"/manifests/{digest}", ok=(202,))


@pytest.mark.engine
def test_a_hostile_push_record_is_no_traceback_and_no_terminal_escape(
    pienv: Pienv, reg: Registry
) -> None:
    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "record"))
    pienv("push")
    c = client(reg, "record")
    got = c.manifest("b-main")
    assert got is not None
    body = json.loads(got[2])
    body["annotations"].update(
        {
            "dev.pienv.pushed": "not a time",
            "dev.pienv.name": "main\x1b]0;pwned\x07",
            "dev.pienv.by": "mallory\x1b[2J",
        }
    )
    c.put_manifest("p-deadbeef0000-main", json.dumps(body).encode(), regmod.INDEX)
    r = pienv("fetch", check=False)
    assert r.code == 0, (r.err, r.log)
    assert "lost update" in r.err and "\x1b" not in r.out + r.err, r.err


@pytest.mark.engine
def test_a_credential_the_scan_could_miss_stops_the_push(pienv: Pienv, reg: Registry) -> None:
    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "missed"))
    pienv("push")
    pad = "head -c 400000 /dev/zero | tr '\\0' '\\n'"
    cases = {
        # A token after 400 kB of blank lines: past the scan's read limit.
        "padded npmrc": f"({pad}; echo _authToken=npm_0123456789abcdef) > /root/.npmrc",
        "padded env": f"({pad}; echo OPENAI_API_KEY=sk-0123456789abcdef) > /root/.env",
        # ~/.ssh a symlink: the key's path in the layer has no .ssh in it.
        "symlinked ssh dir": "mkdir -p /opt/k && ln -s /opt/k /root/.ssh && "
        "echo '-----BEGIN OPENSSH PRIVATE KEY-----' > /root/.ssh/id_ed25519",
    }
    for what, script in cases.items():
        head = pienv.head()
        pienv("run", "--", "sh", "-c", f"mkdir -p /root && {script}")
        r = pienv("push", check=False)
        assert r.code == 1 and r.err.count("\n") == 1, (what, r.err)
        assert "nothing was pushed" in r.err, (what, r.err)
        pienv("reset", head)


@pytest.mark.engine
@pytest.mark.stress  # the engine retries the failing layer upload for ~45 s before it gives up
def test_a_whiteout_named_key_never_leaves(pienv: Pienv, reg: Registry) -> None:
    # A file named like a deletion marker: the engine's commit takes it for one (the layer
    # holds a marker, not the content) and its push fails; nothing leaves either way.
    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "whiteout"))
    pienv("push")
    pienv("run", "--", "sh", "-c", "mkdir -p /home/u/.ssh && echo KEY > /home/u/.ssh/.wh.id_rsa")
    r = pienv("push", check=False)
    assert r.code == 1 and r.err.count("\n") == 1, r.err


@pytest.mark.engine
def test_a_push_whose_view_went_stale_never_overwrites_the_remote_head(
    pienv: Pienv, other: Pienv, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pienv.context import Context
    from pienv.errors import PienvError
    from pienv.ops import push as pushmod
    from pienv.store import Store

    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "stale"))
    pienv("push")
    other("clone", remote(reg, "stale"))
    other("run", "--", "touch", "/etc/theirs")
    pienv("run", "--", "touch", "/etc/ours")
    theirs = other.head()

    # Their push lands while ours uploads (after ours read the remote); it finished longer ago
    # than a push record's grace time (simulated: a grace of 0).
    real = pushmod._check_secrets

    def meanwhile(*args: Any, **kwargs: Any) -> None:
        other("push")
        real(*args, **kwargs)

    monkeypatch.setattr(pushmod, "_check_secrets", meanwhile)
    monkeypatch.setattr(pushmod, "RECORD_GRACE", 0.0)
    monkeypatch.setenv("PIENV_HOME", str(pienv.home))
    monkeypatch.chdir(pienv.repo)
    with pytest.raises(PienvError):
        pushmod.push(Context(store=Store(pienv.home)), "origin", ["main"])
    got = client(reg, "stale").manifest("b-main")
    assert got is not None
    assert json.loads(got[2])["annotations"]["dev.pienv.head"] == theirs


@pytest.mark.engine
def test_a_tag_set_on_the_remote_meanwhile_is_not_overwritten(
    pienv: Pienv, other: Pienv, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pienv.context import Context
    from pienv.errors import PienvError
    from pienv.ops import push as pushmod
    from pienv.store import Store

    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "tagrace"))
    pienv("push")
    other("clone", remote(reg, "tagrace"))
    other("run", "--", "touch", "/etc/theirs")
    other("tag", "v1")
    pienv("run", "--", "touch", "/etc/ours")
    pienv("tag", "v1")
    real = pushmod._check_secrets

    def meanwhile(*args: Any, **kwargs: Any) -> None:
        other("push", "v1")
        real(*args, **kwargs)

    monkeypatch.setattr(pushmod, "_check_secrets", meanwhile)
    monkeypatch.setenv("PIENV_HOME", str(pienv.home))
    monkeypatch.chdir(pienv.repo)
    with pytest.raises(PienvError):
        pushmod.push(Context(store=Store(pienv.home)), "origin", ["v1"])
    got = client(reg, "tagrace").manifest("t-v1")
    assert got is not None
    assert json.loads(got[2])["annotations"]["dev.pienv.head"] == other.head()


@pytest.mark.engine
def test_another_image_under_a_commits_tag_does_not_stand_in_for_it(
    pienv: Pienv, other: Pienv, base_image: str, reg: Registry
) -> None:
    """A push takes a ``c-<id12>`` tag (a commit an interrupted push sent) as that commit only
    if its config is the commit's: anyone with push access can put another image there."""
    import docker

    pienv("run", "--", "touch", "/etc/a")
    head = pienv.head()
    repository = remote(reg, "tagjack")
    engine = docker.from_env()
    engine.images.get(base_image).tag(repository, f"c-{head[:12]}")
    try:
        engine.images.push(repository, f"c-{head[:12]}")
    finally:
        engine.images.remove(f"{repository}:c-{head[:12]}")
    pienv("remote", "add", "origin", repository)
    pienv("push")
    _cleanup(pienv)  # the clone must pull it: the images of this store are gone from here
    other("clone", repository)
    assert other.head() == head


@pytest.mark.engine
def test_a_clone_killed_half_way_can_be_run_again(
    pienv: Pienv, other: Pienv, reg: Registry
) -> None:
    pienv("run", "--", "touch", "/etc/a")
    pienv("remote", "add", "origin", remote(reg, "killed"))
    pienv("push")
    proc = other.popen("clone", remote(reg, "killed"))
    deadline = time.monotonic() + 60
    while not (other.home / "remotes.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = other("clone", remote(reg, "killed"), check=False)
    assert r.code == 0, r.err
    assert other.head() == pienv.head()


@pytest.mark.parametrize(
    "url",
    [
        "user:s3cret@127.0.0.1:5000/t/x",
        "127.0.0.1:5000@evil/t/x",
        "exa mple.com/t/x",
        "127.0.0.1:99999/t/x",
        "127.0.0.1:5000\x1b[2J/t/x",
        "localhost:/t/x",
    ],
)
def test_a_bad_registry_url_is_one_line_and_nothing_is_stored(tmp_path: Path, url: str) -> None:
    p = Pienv(tmp_path / "store", tmp_path, None)
    r = p("remote", "add", "origin", url, check=False)
    one_error_line(r)
    remotes = p.home / "remotes.json"
    assert not remotes.exists() or "s3cret" not in remotes.read_text()


def test_a_registry_redirect_to_another_host_gets_no_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry (or a proxy in front of it) that redirects a manifest request elsewhere must
    not receive the user's Basic login there: urllib forwards Authorization on redirects."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}/stolen"

    class Hostile(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.headers.get("Authorization"):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="r"')
            else:
                self.send_response(307)
                self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hostile = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    servers = [elsewhere, hostile]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{hostile.server_address[1]}"
        auth = base64.b64encode(b"alice:hunter2").decode()
        (tmp_path / "config.json").write_text(json.dumps({"auths": {address: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        c = regmod.Client(regmod.parse_location(f"{address}/t/x"), timeout=10)
        assert c.manifest("b-main") is None
        assert seen == [None]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_a_registry_tag_list_is_not_trusted() -> None:
    """Distribution validates tag names; another registry (or a proxy) may not: a record tag
    with a terminal escape in its head part is not one pienv wrote."""
    from pienv.ops.remotelayout import parse_record

    assert parse_record("p-0123456789ab-main") == ("0123456789ab", "main", False)
    assert parse_record("p-\x1b]0;pwned\x07x-main") is None
    assert parse_record("p-0123456789ab-ma\x1bin") is None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/srv/app/.env", b"GH_PAT=ghp_0123456789abcdefghijABCDEFGHIJ\n"),
        ("/srv/app/.env", b"export OPENAI='sk-proj-0123456789abcdefghij'\n"),
        ("/srv/app/.env.production", b"AWS_ID=AKIA0123456789ABCDEF\n"),
        ("/root/.kube/config", b"users:\n- name: me\n  user:\n    token: eyJhbGciOi\n"),
        ("/root/.config/gcloud/application_default_credentials.json", None),
        ("/home/me/.azure/msal_token_cache.json", None),
        ("/opt/keys/id_ed25519", None),
        ("/root/.aws/.wh.credentials", None),  # a non-empty file named like a marker
        ("/root/.npmrc", None),  # a token file the scan could not read
    ],
)
def test_credentials_under_other_names_are_found(path: str, body: bytes | None) -> None:
    from pienv.ops.pushscan import classify

    assert classify(path, body) is not None


def test_what_is_no_credential_stays_so() -> None:
    from pienv.ops.pushscan import classify

    assert classify("/srv/app/.env", b"TASK=sk-\nNAME=ghp\n") is None
    assert classify("/root/.kube/config", b"clusters: []\n") is None
    assert classify("/usr/share/doc/id_rsa.txt", None) is None


@pytest.mark.engine
@pytest.mark.parametrize("when", ["c-", "p-"])
def test_a_push_killed_half_way_loses_nothing_and_the_next_one_finishes(
    pienv: Pienv, other: Pienv, reg: Registry, when: str
) -> None:
    """kill -9 once a commit is on the remote (``c-``) or once the push record is written
    (``p-``): this store is untouched, the next push finishes, a clone gets every commit."""
    pienv("run", "--", "touch", "/etc/a")
    pienv("run", "--", "touch", "/etc/b")
    pienv("remote", "add", "origin", remote(reg, f"killpush{when[0]}"))
    before = state(pienv)
    c = client(reg, f"killpush{when[0]}")
    proc = pienv.popen("push")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(t.startswith(when) for t in c.tags()):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (pienv.home / "refs.json").read_text() == before[0]
    r = json.loads(pienv("push", "--json").out)
    assert r["refs"][0]["outcome"] in ("created", "up to date")
    head = pienv.head()
    history = [x["id"] for x in json.loads(pienv("log", "--json").out)]
    _cleanup(pienv)
    other("clone", remote(reg, f"killpush{when[0]}"))
    assert other.head() == head
    assert [x["id"] for x in json.loads(other("log", "--json").out)] == history
    assert "lost update" not in other("fetch").err


@pytest.mark.engine
def test_a_fetch_killed_half_way_loses_nothing(pienv: Pienv, other: Pienv, reg: Registry) -> None:
    pienv("run", "--", "sh", "-c", "head -c 3000000 /dev/urandom > /etc/a")
    pienv("run", "--", "sh", "-c", "head -c 3000000 /dev/urandom > /etc/b")
    pienv("remote", "add", "origin", remote(reg, "killfetch"))
    pienv("push")
    head = pienv.head()
    _cleanup(pienv)
    other("remote", "add", "origin", remote(reg, "killfetch"))
    for delay in (0.4, 0.9, 1.5):
        proc = other.popen("fetch")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert other("fsck", check=False).code in (0, 1)  # a verdict, never a traceback
    other("fetch")
    other("branch", "mine", "origin/main")
    assert other.head("mine") == head
    r = other("fsck", check=False)
    assert r.code == 0, r.out + r.err


@pytest.mark.parametrize(
    "text",
    [
        '{"schema": 1, "remotes": {"ok": "127.0.0.1:5000/t/x"}, "tracking": {"ok": []}}',
        '{"schema": 1, "remotes": ["x"], "tracking": {}}',
        '{"schema": "x"}',
        '{"schema": 1, "remotes": {"ok": 5}, "tracking": {"ok": {"branches": {"m": 5}}}}',
        "[]",
    ],
)
def test_a_corrupt_remotes_file_is_one_line(tmp_path: Path, text: str) -> None:
    p = Pienv(tmp_path / "store", tmp_path, None)
    p.home.mkdir()
    (p.home / "remotes.json").write_text(text)
    for args in (("remote", "list"), ("fetch",)):
        r = p(*args, check=False)
        one_error_line(r)
        assert "corrupt" in r.err, r.err
    assert (p.home / "remotes.json").read_text() == text
