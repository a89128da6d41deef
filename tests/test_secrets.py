"""Secrets kept out of history: values replaced by $NAME, credential-looking files found."""

from __future__ import annotations

from pienv.secrets import Redaction, credential_paths, is_credential_path

HOST = {
    "ANTHROPIC_API_KEY": "sk-ant-planted-123",
    "MY_DB_PASSWORD": "hunter22",
    "GITHUB_TOKEN": "ghp_planted_456",
    "PASSED_VAR": "passed-value",
    "TERM": "xterm-256color",
    "HOME": "/home/someone",
    "SHORT_KEY": "abc",
}


def test_credential_values_and_passed_variables_become_names() -> None:
    r = Redaction.of(HOST, passed=["PASSED_VAR"])
    cmd = r.command(["sh", "-c", "curl -H 'x: sk-ant-planted-123' hunter22 ghp_planted_456"])
    assert cmd == ("sh", "-c", "curl -H 'x: $ANTHROPIC_API_KEY' $MY_DB_PASSWORD $GITHUB_TOKEN")
    assert r.text("echo passed-value") == "echo $PASSED_VAR"
    assert r.hidden == {"ANTHROPIC_API_KEY", "MY_DB_PASSWORD", "GITHUB_TOKEN", "PASSED_VAR"}
    assert r.notice() is not None and "$GITHUB_TOKEN" in r.notice()  # type: ignore[operator]


def test_ordinary_values_short_values_and_home_stay() -> None:
    r = Redaction.of(HOST)
    text = "TERM=xterm-256color ls /home/someone abc passed-value"
    assert r.text(text) == text
    assert r.notice() is None


def test_credential_looking_files_in_a_commits_changes() -> None:
    changes = [
        ("A", "/home/agent/.pi/agent/auth.json"),
        ("C", "/home/agent/.aws/credentials"),
        ("A", "/home/agent/.ssh/id_ed25519"),
        ("D", "/home/agent/.netrc"),  # a deletion hides nothing below it
        ("A", "/home/agent/notes.txt"),
        ("A", "/usr/lib/node_modules/x/keyboard.js"),
    ]
    assert credential_paths(changes) == [
        "/home/agent/.pi/agent/auth.json",
        "/home/agent/.aws/credentials",
        "/home/agent/.ssh/id_ed25519",
    ]
    assert not is_credential_path("/etc/ssl/certs/ca.crt")
