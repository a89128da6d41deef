"""A real OCI registry for the tests: Debian's `docker-registry` (Docker Distribution 2.8.2),
started on 127.0.0.1 with its storage under a test directory (Docker and Podman allow plain
HTTP to 127.0.0.0/8 without configuration). `apt-get install docker-registry` provides it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

BINARY = "docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, root: Path, htpasswd: str | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = root / "config.yml"
        root.mkdir(parents=True, exist_ok=True)
        auth = ""
        if htpasswd:
            (root / "htpasswd").write_text(htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n  secret: pienv-tests\n{auth}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115  # lives with the process
        self.proc = subprocess.Popen(
            [BINARY, "serve", str(self.config)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and wants a login
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"registry did not start: {(self.root / 'registry.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
            self.proc = None

    def garbage_collect(self, *args: str) -> str:
        """`registry garbage-collect` on the stopped registry's storage (its documented use)."""
        self.stop()
        proc = subprocess.run(
            [BINARY, "garbage-collect", *args, str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        self.start()
        return proc.stdout


@contextlib.contextmanager
def running(root: Path, htpasswd: str | None = None):  # type: ignore[no-untyped-def]
    if shutil.which(BINARY) is None:
        message = "docker-registry is not installed (apt-get install docker-registry)"
        if os.environ.get("CI") or os.environ.get("PIENV_REQUIRE_ENGINE"):
            pytest.fail(message)
        pytest.skip(message)
    reg = Registry(root, htpasswd).start()
    try:
        yield reg
    finally:
        reg.stop()


def plant_lost_update(address: str, repository: str, branch: str = "main") -> str:
    """A push record whose head is not on ``branch`` and is past its grace time: what a push
    that another one overwrote unnoticed leaves behind. Its head id (12 hex) is made up; the
    record lists the branch's head manifest (a registry checks that an index's manifests
    exist). Returns that 12-hex head."""
    import json as _json

    from pienv import registry as reg
    from pienv.ops.remotelayout import Descriptor, escape, parse_index, record_body

    client = reg.Client(reg.parse_location(f"{address}/{repository}"))
    got = client.manifest("b-" + escape(branch))
    ref = parse_index(got[2], got[0]) if got else None
    assert ref is not None, f"no branch {branch} on {address}/{repository}"
    head = ref.commits[ref.head]
    fake = "dead" + head.id[4:12]
    body = _json.loads(
        record_body(
            Descriptor(fake * 5 + fake[:4], head.digest, head.media_type, head.size),
            branch,
            ref.head,
            "someone@else",
            "x",
        )
    )
    body["annotations"]["dev.pienv.pushed"] = "2026-01-01T00:00:00Z"
    client.put_manifest(f"p-{fake}-{escape(branch)}", _json.dumps(body).encode(), reg.INDEX)
    return fake
