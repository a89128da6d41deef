"""Remote engines (issue 14), reached on this machine so the engine's own config is untouched:
tcp with TLS (certificates made here, socat terminating TLS in front of the local engine's
socket) and ssh (Debian's sshd on 127.0.0.1 with keys made here; docker-py runs
`docker system dial-stdio` on the far side). pienv goes through docker-py's session: run,
commit, show, log, status and recover work, and piped stdin that cannot be forwarded is said
in one line."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REQUIRE_ENGINE, Pienv
from test_recovery import run_containers

Env = dict[str, str]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as docker-py reads
    them from DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
             "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", *ext, cwd=d)  # fmt: skip
    shutil.copy(d / "client.pem", d / "cert.pem")
    shutil.copy(d / "client-key.pem", d / "key.pem")


@pytest.fixture
def tls_engine(tmp_path: Path, engine_available: None) -> Iterator[Env]:
    if not shutil.which("socat") or not shutil.which("openssl"):
        if REQUIRE_ENGINE:
            pytest.fail("socat and openssl are needed for the tcp+TLS test (apt-get install socat)")
        pytest.skip("socat or openssl missing")
    local = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not local.startswith("unix://"):
        pytest.skip("the TLS proxy fronts a local unix socket")
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = subprocess.Popen(
        [
            "socat",
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={certs}/server.pem,"
            f"key={certs}/server-key.pem,cafile={certs}/ca.pem,verify=1",
            f"UNIX-CONNECT:{local.removeprefix('unix://')}",
        ],
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield {
        "DOCKER_HOST": f"tcp://127.0.0.1:{port}",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(certs),
    }
    proxy.terminate()
    proxy.wait(10)


def test_tcp_tls_run_commit_log_recover(pienv: Pienv, tls_engine: Env) -> None:
    pienv.env.update(tls_engine)
    r = pienv("run", "--", "sh", "-c", "echo tls > /over-tls")
    assert "committed" in r.err
    assert "/over-tls" in pienv("show", "HEAD").out
    assert len(pienv("log", "--json").out) > 2
    status = pienv("status").out
    assert f"at {tls_engine['DOCKER_HOST']}" in status
    assert "Docker Engine" in status or "Podman" in status
    # Piped stdin is not forwarded over tcp: said in one line, the command reads nothing.
    r = pienv("run", "--", "sh", "-c", "cat; echo end", input="piped\n")
    assert r.out == "end\n"
    assert "piped stdin is not forwarded" in r.err

    # An orphan (pienv and its finalizer killed) is recovered over the same connection.
    proc = pienv.popen("run", "--", "sh", "-c", "echo x > /orphaned; echo up; sleep 2")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    for pid in [*map(int, children.stdout.split()), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    cid = str(run_containers(pienv)[0]["Id"])
    time.sleep(3)
    assert "committed as" in pienv("recover", cid[:12]).out
    assert pienv("run", "--", "cat", "/orphaned").out == "x\n"


@pytest.fixture
def ssh_engine(tmp_path: Path, engine_available: None) -> Iterator[Env]:
    """sshd on 127.0.0.1 (Debian's openssh-server) with a host key and a user key made here;
    HOME points at a directory whose ~/.ssh names both (docker-py reads it via paramiko)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    paramiko = importlib.util.find_spec("paramiko") is not None
    if not os.path.exists(sshd) or not paramiko or os.getuid() != 0:
        if REQUIRE_ENGINE:
            pytest.fail("the ssh test needs root, openssh-server and paramiko (pienv[ssh])")
        pytest.skip("no sshd, paramiko or root")
    local = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not local.startswith("unix://"):
        pytest.skip("the ssh test reaches the local engine's default socket")
    d = tmp_path / "ssh"
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    d.mkdir()
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True
        )
    shutil.copy(d / "user.pub", d / "authorized_keys")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n"
        # the remote side runs `docker system dial-stdio`, which needs the engine's socket
        f"SetEnv DOCKER_HOST={local}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "log")])
    host_key = " ".join((d / "host.pub").read_text().split()[:2])
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {d}/user\n")
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield {"DOCKER_HOST": f"ssh://root@127.0.0.1:{port}", "HOME": str(home)}
    proc.terminate()
    proc.wait(10)


def test_ssh_run_commit_log_recover(pienv: Pienv, ssh_engine: Env) -> None:
    pienv.env.update(ssh_engine)
    r = pienv("run", "--", "sh", "-c", "echo ssh > /over-ssh")
    assert "committed" in r.err
    assert "/over-ssh" in pienv("show", "HEAD").out
    assert f"at {ssh_engine['DOCKER_HOST']}" in pienv("status").out
    r = pienv("run", "--", "sh", "-c", "cat; echo end", input="piped\n")
    assert r.out == "end\n" and "piped stdin is not forwarded" in r.err
    proc = pienv.popen("run", "--", "sh", "-c", "echo x > /orphaned; echo up; sleep 2")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    for pid in [*map(int, children.stdout.split()), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    cid = str(run_containers(pienv)[0]["Id"])
    time.sleep(3)
    assert "committed as" in pienv("recover", cid[:12]).out
    assert pienv("run", "--", "cat", "/orphaned").out == "x\n"
