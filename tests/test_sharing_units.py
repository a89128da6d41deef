"""The pure parts of remotes: ref names as OCI tags, the remote's index objects, push
records, remote locations, the engine's logins, and what the push scan calls a credential."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pienv import registry
from pienv.errors import UsageError
from pienv.model import check_ref_name
from pienv.ops.pushscan import classify, legacy
from pienv.ops.remotelayout import (
    Descriptor,
    RemoteRef,
    build_index,
    parse_index,
    parse_record,
    record_tag,
    ref_tag,
)

names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=200
)


@given(names, names)
def test_every_branch_name_becomes_a_valid_distinct_tag(a: str, b: str) -> None:
    for name in (a, b):
        try:
            check_ref_name(name)
        except UsageError:
            return
    assert registry.valid_tag(ref_tag("branch", a))
    assert registry.valid_tag(record_tag("ab" * 32, a))
    if a != b:
        assert registry.escape(a) != registry.escape(b)


def test_escape_keeps_readable_names_readable() -> None:
    assert registry.escape("main") == "main"
    assert registry.escape("feature/x_y") == "feature_2fx_5fy"
    assert ref_tag("tag", "v1.0") == "t-v1.0"


def test_index_round_trip_carries_the_dag_and_the_real_name() -> None:
    a, b = "a" * 64, "b" * 64
    commits = {
        b: Descriptor(b, "sha256:" + "2" * 64, "application/x", 10, (a,)),
        a: Descriptor(a, "sha256:" + "1" * 64, "application/x", 20, ()),
    }
    ref = RemoteRef("branch", "feature/ü", b, commits, by="me@host")
    body = build_index(ref, [b, a])
    data = json.loads(body)
    assert data["mediaType"] == registry.INDEX and len(data["manifests"]) == 2
    back = parse_index(body, "sha256:x")
    assert back is not None
    assert (back.name, back.head, back.by) == ("feature/ü", b, "me@host")
    assert back.commits[b].parents == (a,) and back.commits[a].size == 20
    assert parse_index(b'{"manifests": []}', "d") is None  # not ours: left alone
    assert parse_index(b"not json", "d") is None


def test_push_records_parse_back() -> None:
    head = "c" * 64
    assert parse_record(record_tag(head, "feature/x")) == ("c" * 12, "feature_2fx", False)
    assert parse_record(record_tag(head, "m", withdrawn=True)) == ("c" * 12, "m", True)
    assert parse_record("b-main") is None and parse_record("c-" + "c" * 12) is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("127.0.0.1:5000/team/env", ("127.0.0.1:5000", "team/env")),
        ("ghcr.io/me/env", ("ghcr.io", "me/env")),
        ("localhost/x", ("localhost", "x")),
    ],
)
def test_locations(text: str, where: tuple[str, str]) -> None:
    loc = registry.parse_location(text)
    assert (loc.registry, loc.repository) == where
    assert loc.insecure == (not text.startswith("ghcr"))


@pytest.mark.parametrize("text", ["me/env", "ghcr.io", "ghcr.io/Me/env", "ghcr.io/me/env:tag"])
def test_bad_locations_are_one_line(text: str) -> None:
    with pytest.raises(UsageError, match="bad re"):
        registry.parse_location(text)


def test_logins_come_from_the_engines_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.login_for("r.example:5000") is None
    auth = base64.b64encode(b"alice:pw").decode()
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"auths": {"r.example:5000": {"auth": auth}, "t.example": {"identitytoken": "T"}}}
        )
    )
    assert registry.login_for("r.example:5000") == registry.Login("alice", "pw")
    assert registry.login_for("t.example") == registry.Login(identity_token="T")
    header = json.loads(base64.urlsafe_b64decode(registry.Login("a", "b").engine_header("r")))
    assert header == {"serveraddress": "r", "username": "a", "password": "b"}
    # Podman's auth file, when docker's has no entry.
    podman = tmp_path / "run" / "containers"
    podman.mkdir(parents=True)
    (podman / "auth.json").write_text(json.dumps({"auths": {"p.example": {"auth": auth}}}))
    assert registry.login_for("p.example") == registry.Login("alice", "pw")


@pytest.mark.parametrize(
    ("path", "body", "flagged"),
    [
        ("/root/.ssh/id_ed25519", None, True),
        ("/home/me/.ssh/id_rsa.pub", None, False),
        ("/home/me/.ssh/known_hosts", None, False),
        ("/home/agent/.pi/agent/auth.json", None, True),
        ("/root/.claude/.credentials.json", None, True),
        ("/home/agent/.claude.json", None, True),
        ("/root/.aws/credentials", None, True),
        ("/root/.netrc", None, True),
        ("/srv/app/.env", b"OPENAI_API_KEY=sk-abcdefghijklmnopqrstuv\n", True),
        ("/srv/app/.env.local", b"export GITHUB_TOKEN='ghp_abcdefghijklmnop'\n", True),
        ("/srv/app/.env", b"API_KEY=changeme\nDEBUG=1\n", False),
        ("/srv/app/.env", b"SECRET_KEY=${SECRET_KEY}\n", False),
        ("/root/.docker/config.json", b'{"auths": {"x": {"auth": "YWI6Yw=="}}}', True),
        ("/root/.docker/config.json", b'{"credsStore": "pass"}', False),
        ("/root/.npmrc", b"//registry.npmjs.org/:_authToken=npm_abc\n", True),
        ("/etc/ssl/certs/ca.pem", None, False),
        ("/usr/lib/node_modules/x/auth.json", None, False),
    ],
)
def test_what_the_push_scan_calls_a_credential(
    path: str, body: bytes | None, flagged: bool
) -> None:
    assert (classify(path, body) is not None) == flagged


def test_commits_from_before_logins_moved_out_are_legacy() -> None:
    from pienv.model import Commit

    old = Commit.draft("main", "m", "run")
    old = Commit(**{**old.__dict__, "id": "a" * 64, "created": "2026-11-20T00:00:00Z"})
    new = Commit(**{**old.__dict__, "id": "b" * 64, "created": "2026-12-01T00:00:00Z"})
    assert legacy([old, new]) == [old]


def test_remote_names_complete_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pienv.ops.names import remote_names

    monkeypatch.setenv("PIENV_HOME", str(tmp_path))
    assert remote_names() == []
    (tmp_path / "remotes.json").write_text(
        json.dumps({"schema": 1, "remotes": {"origin": "a.example/x", "backup": "b.example/y"}})
    )
    assert remote_names() == ["backup", "origin"]


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first two requests of each method, then 200."""

    seen: ClassVar[dict[str, int]] = {}

    def _answer(self) -> None:
        n = self.seen[self.command] = self.seen.get(self.command, 0) + 1
        self.send_response(500 if n <= 2 else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_reads_are_retried_through_a_registrys_passing_server_error_but_writes_are_not() -> None:
    # Distribution answers 500 to a GET that races another client's PUT of the same tag.
    _Flaky.seen = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        client = registry.Client(registry.parse_location(f"127.0.0.1:{port}/t/env"))
        assert client.request("GET", "/manifests/b-main").status == 200
        assert _Flaky.seen["GET"] == 3
        with pytest.raises(registry.RegistryError, match="answered 500 to PUT"):
            client.request("PUT", "/manifests/b-main", body=b"{}")
        assert _Flaky.seen["PUT"] == 1
    finally:
        server.shutdown()
        server.server_close()
