"""Shared fixtures. Engine tests need a real Docker engine: in CI (CI or PIENV_REQUIRE_ENGINE
set) a missing engine fails them; elsewhere they are skipped with the reason.

Every test gets its own store (PIENV_HOME under tmp_path), so tests never touch the user's
store and stores never see each other's commits (docs/rules.md, rule 8). A test that forgets
to choose one fails: the default store location raises (`no_default_store`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_TAG = "pienv-test/busybox-git:2"  # :2 has /etc/group (Podman adds one for a run user)
# Podman's commit of an unchanged container adds this empty layer (see engine.EMPTY_LAYER).
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def on_podman() -> bool:
    """Whether DOCKER_HOST is Podman's compatible API (the podman tier of .ci/run)."""
    import docker

    names = [c.get("Name", "") for c in docker.from_env().version().get("Components", [])]
    return "Podman Engine" in names


def engine_socket() -> str:
    """The unix socket of the engine under test (DOCKER_HOST in the podman tier), for tests
    that put a proxy in front of it: never Docker's own socket behind another engine's back."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert host.startswith("unix://"), f"the tests need a local engine socket, not {host}"
    return host.removeprefix("unix://")


def content_layers(image: dict) -> list[str]:  # type: ignore[type-arg]
    """An image's layers that hold files (as engine.ImageInfo.content_layers)."""
    return [layer for layer in image["RootFS"]["Layers"] if layer != EMPTY_LAYER]


REALISTIC_BUILD = Path(__file__).parent / "realistic" / "build.sh"
NONROOT_SETUP = Path(__file__).parent / "nonroot" / "setup.sh"
NONROOT_USER = "pienvtest"
NONROOT_UID = 4321
REQUIRE_ENGINE = bool(os.environ.get("CI") or os.environ.get("PIENV_REQUIRE_ENGINE"))


def _busybox() -> str:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    raise RuntimeError("busybox-static is not installed (apt-get install busybox-static)")


class YouForgotToChooseAStore(AssertionError):
    """Raised by the default store location in tests: pass a Store, or set PIENV_HOME."""


# Where a subprocess without PIENV_HOME would put its store: under a regular file, so that
# creating it fails even for root, and nothing is written to the real user data directory.
NO_STORE = "/dev/null/tests-must-set-PIENV_HOME"


@pytest.fixture(autouse=True)
def no_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches a real user's store (pre-commit's `dont_write_to_home_directory`):
    in this process the default location raises unless the test set PIENV_HOME itself, and
    in subprocesses (which get our environment) it points nowhere writable."""
    from pienv import store
    from pienv.store import home

    monkeypatch.delenv("PIENV_HOME", raising=False)  # one exported by the developer's shell
    monkeypatch.setenv("XDG_DATA_HOME", NO_STORE)  # platformdirs' user data directory
    chosen = store.default_home

    def default_home() -> Path:
        if not os.environ.get("PIENV_HOME"):
            raise YouForgotToChooseAStore("a test used the default store location")
        return chosen()

    monkeypatch.setattr(store, "default_home", default_home)
    monkeypatch.setattr(home, "default_home", default_home)  # what Store() and crash call


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs an engine (any fixture built on `engine_available`, however
    indirectly) gets the `engine` marker, so `-m "not engine"` is the fast suite that runs
    without dockerd, whatever a test file remembers to mark."""
    sampled: set[tuple[str, str]] = set()
    for item in items:
        if "engine_available" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.engine)
        # A `sampled` test's later cases exercise the same engine calls as its first (they
        # differ in a kill point, a signal, a refused path): the second engine's tier (-m
        # "not one_engine") runs the first alone, the docker tier all of them.
        if item.get_closest_marker("sampled") and os.environ.get("PIENV_ALL_CASES") != "1":
            key = (str(item.path), getattr(item, "originalname", item.name))
            if key in sampled:
                item.add_marker(pytest.mark.one_engine)
            sampled.add(key)
        if item.get_closest_marker("presets"):
            item.add_marker(pytest.mark.timeout(3600))  # downloads an agent, twice


def package_registries(require: bool | None = None) -> dict[str, tuple[str, ...]]:
    """The npm and pip registries this machine's own tools are configured for (read at run time,
    never named in the repo). Without them the egress tests cannot reach the outside world: in
    CI that is a failure (a skip there once hid the whole boundary), elsewhere a skip."""
    from pienv import egress

    regs = egress.registry_hosts()
    if "npm" in regs and "pip" in regs:
        return regs
    reason = f"npm and pip registries not configured here (npm/pip config): {regs}"
    if REQUIRE_ENGINE if require is None else require:
        pytest.fail(f"egress tests need the package registries in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine_available() -> None:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        if REQUIRE_ENGINE:
            pytest.fail(f"Docker engine required in CI but unreachable: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def base_image(engine_available: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny FROM-scratch base holding busybox (no registry exists here)."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(BASE_TAG)
        return BASE_TAG
    except docker.errors.ImageNotFound:
        pass
    ctx = tmp_path_factory.mktemp("base")
    shutil.copy(_busybox(), ctx / "busybox")
    # git (plus the shared libraries ldd names) so git can be tested inside the container.
    copies = ["COPY busybox /bin/busybox"]
    files = {shutil.which("git") or "/usr/bin/git"}
    ldd = subprocess.run(["ldd", *files], capture_output=True, text=True, check=True).stdout
    files |= {w for w in ldd.split() if w.startswith("/")}
    for i, src in enumerate(sorted(files)):
        real = os.path.realpath(src)
        shutil.copy(real, ctx / f"f{i}")
        copies.append(f"COPY f{i} {src}")
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n" + "\n".join(copies) + "\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        'RUN ["/bin/sh", "-c", "mkdir -p /tmp /home/agent /etc /usr/bin && chmod 1777 /tmp'
        " /home/agent && echo root:x:0:0:root:/root:/bin/sh > /etc/passwd"
        ' && echo root:x:0: > /etc/group"]\n'
        "ENV PATH=/usr/local/bin:/usr/bin:/bin\n"
        "LABEL org.example.base=busybox\n"
        'CMD ["sh"]\n'
    )
    client.images.build(path=str(ctx), tag=BASE_TAG, rm=True)
    return BASE_TAG


@pytest.fixture(scope="session")
def realistic_image(engine_available: None) -> str:
    """Debian bookworm + Node 22 + npm, built by tests/realistic/build.sh (no registry needed)
    or reused: its tag is keyed by the recipe, and the rootfs is cached so that a wiped
    engine re-imports it in seconds. A stock image: no agent user, no /home/agent. Mark the
    tests that use it `realistic`. In CI a failed build fails the tests, never skips them."""
    proc = subprocess.run(
        ["bash", str(REALISTIC_BUILD)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = f"realistic base image not built:\n{proc.stderr[-4000:]}"
        if REQUIRE_ENGINE:
            pytest.fail(reason)
        pytest.skip(reason)
    return proc.stdout.strip().splitlines()[-1]


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Result:
    code: int
    out: str
    err: str
    log: str = ""  # on exit 3: the traceback pienv wrote to the store's pienv.log


class Pienv:
    """Drives the real CLI in a subprocess, in one store and one workspace."""

    def __init__(self, home: Path, repo: Path, base: str | None) -> None:
        self.home = home
        self.repo = repo
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIENV_")}
        self.env.update(
            {"PIENV_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "120", "TERM": "xterm"}
        )
        if base:
            self.env["PIENV_BASE_IMAGE"] = base
        self.command = [sys.executable, "-m", "pienv"]

    def __call__(
        self,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        check: bool = True,
        input: str | None = None,
    ) -> Result:
        proc = subprocess.run(
            [*self.command, *args],
            cwd=cwd or self.repo,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if proc.returncode == 3:  # an internal error: its traceback is only in the log
            result.log = self.last_log_entry()
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pienv {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
                + (f"\n--- {self.home / 'pienv.log'} ---\n{result.log}" if result.log else "")
            )
        return result

    def last_log_entry(self) -> str:
        """The newest entry of the store's pienv.log (each starts with a `--- ` header)."""
        try:
            text = (self.home / "pienv.log").read_text(errors="replace")
        except OSError:
            return ""
        return "--- " + text.rsplit("\n--- ", 1)[-1].removeprefix("--- ")

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command, *args],
            cwd=cwd or self.repo,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def in_terminal(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """pienv ARGS under a pseudo-terminal (`script`), so it takes the docker CLI's
        interactive path; the terminal's output (stdout and stderr) is the result's stdout."""
        import shlex

        return subprocess.run(
            ["script", "-qec", shlex.join([*self.command, *args]), "/dev/null"],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def refs(self) -> dict:  # type: ignore[type-arg]
        import json

        return json.loads((self.home / "refs.json").read_text())

    def head(self, branch: str = "main") -> str:
        return str(self.refs()["branches"][branch])


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README").write_text("hello\n")
    git(path, "add", "README")
    git(path, "commit", "-q", "-m", "init")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def pienv(tmp_path: Path, repo: Path, base_image: str) -> Iterator[Pienv]:
    p = Pienv(tmp_path / "store", repo, base_image)
    yield p
    _cleanup(p)


class NonrootPienv(Pienv):
    """The real console script, run as the non-root user `pienvtest` (uid 4321, in the docker
    group) from a venv of Debian's python3, on this checkout's code (PYTHONPATH=src)."""

    def __init__(self, home: Path, repo: Path, base: str | None, venv: Path) -> None:
        super().__init__(home, repo, base)
        self.uid = NONROOT_UID
        self.venv = venv
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # not on the user's PATH
        self.command = [runuser, "-u", NONROOT_USER, "--", str(venv / "bin" / "pienv")]
        # Only what a login of that user would have, plus the test settings: nothing of
        # root's environment (HOME=/root, pyenv) leaks into the run.
        # XDG_DATA_HOME: the no_default_store guard's, so a forgotten PIENV_HOME fails here too.
        keep = ("DOCKER_HOST", "XDG_DATA_HOME")
        self.env = {k: v for k, v in self.env.items() if k.startswith("PIENV_") or k in keep}
        self.env.update(
            {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": f"/home/{NONROOT_USER}",
                "USER": NONROOT_USER,
                "LOGNAME": NONROOT_USER,
                "LANG": "C.UTF-8",
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"),
                "PYTHONDONTWRITEBYTECODE": "1",
                "NO_COLOR": "1",
                "COLUMNS": "120",
                "TERM": "xterm",
            }
        )


@pytest.fixture(scope="session")
def nonroot_venv(engine_available: None) -> Path:
    """User pienvtest and its venv, made (idempotently) by tests/nonroot/setup.sh."""
    if os.geteuid() != 0:
        proc = None
        reason = "the non-root tests need root to create and switch to their user"
    else:
        proc = subprocess.run(
            ["bash", str(NONROOT_SETUP)], capture_output=True, text=True, timeout=900
        )
        reason = f"non-root test user not set up:\n{proc.stderr[-4000:]}"
    if proc is None or proc.returncode != 0:
        if REQUIRE_ENGINE:
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def nonroot_driver(base: str, venv: Path) -> Iterator[NonrootPienv]:
    """A NonrootPienv with its own store and a git repo it owns, in a directory that user can
    reach (pytest's tmp_path is root's, mode 0700); removed afterwards with its images."""
    top = Path(tempfile.mkdtemp(prefix="pienv-nonroot-", dir="/tmp"))
    make_repo(top / "repo")
    subprocess.run(["chown", "-R", f"{NONROOT_UID}:{NONROOT_UID}", str(top)], check=True)
    p = NonrootPienv(top / "store", top / "repo", base, venv)
    try:
        yield p
    finally:
        _cleanup(p)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def nonroot(base_image: str, nonroot_venv: Path) -> Iterator[NonrootPienv]:
    """pienv run by a real non-root user on the busybox base. Mark the test `nonroot`."""
    with nonroot_driver(base_image, nonroot_venv) as p:
        yield p


@pytest.fixture
def nonroot_realistic(realistic_image: str, nonroot_venv: Path) -> Iterator[NonrootPienv]:
    """pienv run by a real non-root user on the realistic base. Mark it `realistic` too."""
    with nonroot_driver(realistic_image, nonroot_venv) as p:
        yield p


@pytest.fixture
def realistic_pienv(tmp_path: Path, repo: Path, realistic_image: str) -> Iterator[Pienv]:
    """`pienv` on the realistic base (mark the test `realistic`)."""
    p = Pienv(tmp_path / "store", repo, realistic_image)
    yield p
    _cleanup(p)


def _await_background_commits(home: Path, timeout: float = 30) -> None:
    """Let a finalizer still committing a run (a background commit) finish first: it removes
    the run's container itself, and must not meet a half-removed store."""
    import fcntl
    import time

    end = time.monotonic() + timeout
    for path in (home / "locks").glob("*.lock"):
        if b'"committing"' not in path.read_bytes():
            continue  # free, or a run (a test that leaves one running has it killed)
        fd = os.open(path, os.O_RDWR)
        try:
            while time.monotonic() < end:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    time.sleep(0.1)
        finally:
            os.close(fd)


def _cleanup(p: Pienv) -> None:
    """Remove this store's containers and images, so the engine does not fill up."""
    import json

    import docker

    client = docker.from_env()
    try:
        store_id = json.loads((p.home / "refs.json").read_text())["store_id"]
    except (OSError, ValueError, KeyError):
        return
    _await_background_commits(p.home)
    for c in client.api.containers(all=True, filters={"label": f"dev.pienv.store={store_id}"}):
        with contextlib.suppress(docker.errors.NotFound):  # a finalizer removed it meanwhile
            client.api.remove_container(c["Id"], force=True)
    # The store's volumes (agent state, package caches): every run makes them. Left behind
    # they pile up by thousands, and Podman refuses new ones once its locks run out.
    prefix = f"pienv-{store_id}-"
    for vol in client.api.volumes(filters={"name": prefix}).get("Volumes") or []:
        if vol["Name"].startswith(prefix):
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_volume(vol["Name"], force=True)
    # Untag everything: an image whose last tag goes is deleted with its untagged parents
    # once no child needs it, so whole chains go whatever the order (removing by id fails on
    # a parent whose child is still there, and commits made in one second tie on Created).
    # Commits fetched from a remote keep the labels of the store that made them: this store
    # only tagged them (pienv/<store id>:<short>).
    # Of those, only this store's tags go: the store that made them (a clone's source on the
    # same engine) keeps its own, or Podman deletes its commits with their last tag.
    own = f"pienv/{store_id}:"
    fetched = client.api.images(filters={"reference": f"{own}*"})
    for img in client.api.images(filters={"label": f"dev.pienv.store={store_id}"}):
        for ref in img.get("RepoTags") or [img["Id"]]:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_image(ref)
    for img in fetched:
        for ref in [t for t in img.get("RepoTags") or [] if t.startswith(own)]:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_image(ref)
