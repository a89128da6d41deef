"""Remote engines, reached on this machine so the engine's own config is untouched:
plain tcp and tcp with TLS (socat in front of the local engine's socket; certificates made
here) and ssh (Debian's sshd on 127.0.0.1 with keys made here; docker-py runs
`docker system dial-stdio` on the far side). pienv goes through docker-py's session there:
run, commit, show, log, status and recover work, piped stdin is forwarded on every transport
(the bytes and the EOF), and a workspace the engine cannot see is refused before a start."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import REQUIRE_ENGINE, Pienv, engine_socket
from test_recovery import run_containers

Env = dict[str, str]
# ssh is pienv's own transport (docker's dial-stdio through ssh) whatever engine answers at the
# far end: the podman tier does not run it again (tcp and TLS in front of Podman it does).
SSH = pytest.param("ssh", marks=pytest.mark.one_engine, id="ssh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _need(*tools: str) -> None:
    if all(shutil.which(t) for t in tools):
        return
    if REQUIRE_ENGINE:
        pytest.fail(f"{', '.join(tools)} are needed for the remote tests (apt-get install socat)")
    pytest.skip(f"one of {tools} is missing")


@contextlib.contextmanager
def _socat(listen: str, port: int) -> Iterator[None]:
    """socat serving ``listen`` (its address text) in front of the local engine's socket.
    -t: after one direction's EOF keep the other open (socat's default is 0.5 s), as an
    engine's own listener does."""
    proxy = subprocess.Popen(
        ["socat", "-t", "600", listen, f"UNIX-CONNECT:{engine_socket()}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield
    finally:
        proxy.terminate()
        proxy.wait(10)


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
def tcp_engine(engine_available: None) -> Iterator[Env]:
    """Plain tcp (no TLS): what `dockerd -H tcp://...` serves."""
    _need("socat")
    port = _free_port()
    with _socat(f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", port):
        yield {"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}


@pytest.fixture
def tls_engine(tmp_path: Path, engine_available: None) -> Iterator[Env]:
    _need("socat", "openssl")
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    port = _free_port()
    listen = (
        f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={certs}/server.pem,"
        f"key={certs}/server-key.pem,cafile={certs}/ca.pem,verify=1"
    )
    with _socat(listen, port):
        yield {
            "DOCKER_HOST": f"tcp://127.0.0.1:{port}",
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(certs),
        }


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
    local = engine_socket()
    d = tmp_path / "ssh"
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    d.mkdir()
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True
        )
    shutil.copy(d / "user.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n"
        # the remote side runs `docker system dial-stdio`, which needs the engine's socket
        f"SetEnv DOCKER_HOST=unix://{local}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "log")])
    host_key = " ".join((d / "host.pub").read_text().split()[:2])
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {d}/user\n")
    _wait_port(port)
    yield {"DOCKER_HOST": f"ssh://root@127.0.0.1:{port}", "HOME": str(home)}
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["unix", "tcp", "tls", SSH])
def transport(request: pytest.FixtureRequest, pienv: Pienv) -> Env:
    """pienv's store reached over each transport (unix: the local engine itself)."""
    env: Env = {} if request.param == "unix" else request.getfixturevalue(f"{request.param}_engine")
    pienv.env.update(env)
    return env


@pytest.mark.parametrize("which", ["tls", SSH])
def test_remote_run_commit_log_status_recover(
    pienv: Pienv, which: str, request: pytest.FixtureRequest
) -> None:
    remote: Env = request.getfixturevalue(f"{which}_engine")
    local_env = dict(pienv.env)
    pienv.env.update(remote)
    r = pienv("run", "--", "sh", "-c", f"echo {which} > /over-{which}")
    assert "committed" in r.err
    assert "is not on this machine: its mounts are not verified" in r.err  # said, not skipped
    assert f"/over-{which}" in pienv("show", "HEAD").out
    assert len(pienv("log", "--json").out) > 2
    # The same engine seen through the proxy: the same product, version, API version,
    # storage driver and rootless mode as on its own socket; only the endpoint differs.
    line = next(x for x in pienv("status").out.splitlines() if x.startswith("engine"))
    remote_env, pienv.env = pienv.env, local_env
    local = pienv("status").out
    pienv.env = remote_env
    want = next(x for x in local.splitlines() if x.startswith("engine"))
    assert line == want.rsplit(" at ", 1)[0] + f" at {remote['DOCKER_HOST']}"
    # doctor: the same engine line, the engine's needs tried for real over the connection,
    # and no number read off this machine's disk for the remote engine's.
    doctor = pienv("doctor", check=False).out
    product, driver, mode, _ = want.split(None, 1)[1].split(", ")
    assert f"ok   engine: {product}, {mode}, at {remote['DOCKER_HOST']}\n" in doctor, doctor
    assert f"ok   storage driver: {driver}\n" in doctor, doctor
    for check in ("init binary", "commit labels", "archive API"):
        assert f"ok   {check}: works" in doctor, doctor
    disk = next(x for x in doctor.splitlines() if "free disk" in x)
    assert "GB free" not in disk and "remote engine" in disk, disk

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


def _run_bytes(pienv: Pienv, data: bytes, *command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*pienv.command, "run", "--", *command],
        cwd=pienv.repo,
        env=pienv.env,
        input=data,
        capture_output=True,
        timeout=180,
        check=False,
    )


def test_piped_stdin_is_forwarded_on_every_transport(pienv: Pienv, transport: Env) -> None:
    """The bytes arrive whole and the EOF reaches the command, over every transport; the
    output keeps coming after stdin closed."""
    r = _run_bytes(pienv, b"a\nb\n", "wc", "-l")
    assert (r.returncode, r.stdout.strip()) == (0, b"2") and b"stdin" not in r.stderr
    # 5 MB of random bytes (so also Docker's detach keys, ctrl-p ctrl-q, which a non-TTY
    # attach must not act on), then output after stdin closed and after socat's usual
    # 0.5 s half-close window.
    data = os.urandom(5 << 20) + b"\x10\x11"
    r = _run_bytes(pienv, data, "sh", "-c", "sha256sum; sleep 1; echo after")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == [hashlib.sha256(data).hexdigest(), "-", "after"]
    # Nothing piped (stdin is /dev/null): the command reads EOF at once.
    assert pienv("run", "--", "sh", "-c", "cat; echo end").out == "end\n"


def test_open_stdin_does_not_hold_a_command_that_ignores_it_remote(
    pienv: Pienv, transport: Env
) -> None:
    proc = subprocess.Popen(
        [*pienv.command, "run", "--", "echo", "hi"],
        cwd=pienv.repo,
        env=pienv.env,
        stdin=subprocess.PIPE,  # kept open for the whole run
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.wait(timeout=120) == 0
        assert proc.stdout is not None and proc.stdout.read() == b"hi\n"
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("which", ["tcp", SSH])
def test_workspace_the_remote_engine_cannot_see_is_refused(
    pienv: Pienv, which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """pienv on another machine than the engine: here, pienv in a private mount namespace
    whose workspace and store live on a tmpfs the engine (in the host's namespace) cannot
    see. The run is refused in one line before any container starts; nothing is left."""
    if os.getuid() != 0 or not shutil.which("unshare"):
        if REQUIRE_ENGINE:
            pytest.fail("this test needs root and unshare (util-linux)")
        pytest.skip("needs root and unshare")
    pienv.env.update(request.getfixturevalue(f"{which}_engine"))
    private = tmp_path / "private"
    private.mkdir()
    pienv.env["PIENV_HOME"] = str(private / "store")
    pienv.command = [
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        'mount -t tmpfs tmpfs "$0" && mkdir "$0/ws" && cd "$0/ws" && exec "$@"',
        str(private), *pienv.command,
    ]  # fmt: skip
    r = pienv("run", "--", "sh", "-c", "echo ran; touch /ran", check=False)
    assert r.code == 1 and r.out == ""
    line = r.err.strip().splitlines()[-1]
    # Docker refuses the create; rootful Podman makes the missing paths on its machine and
    # fails to start (the run's container could not start: ...).
    assert line.startswith("pienv: error: ")
    assert f"the engine at {pienv.env['DOCKER_HOST']} cannot see " in line
    assert "the workspace must be on the engine's machine" in line
    assert f" {private}/" in line
    label = f"dev.pienv.workspace={private}/ws"
    assert docker.from_env().api.containers(all=True, filters={"label": [label]}) == []
