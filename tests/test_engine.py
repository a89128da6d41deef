"""engine.Engine on the real engine, through both transports: pienv's own HTTP on the unix
socket (the default) and docker-py's session (tcp, TLS and ssh endpoints). Each call is
checked against docker-py's own answers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import docker
import pytest

from pienv.engine import Engine
from pienv.errors import EngineError


@pytest.fixture(params=["socket", "sdk"])
def engine(request: pytest.FixtureRequest, base_image: str) -> Iterator[Engine]:
    eng = Engine(sdk=request.param == "sdk")
    assert (eng._socket is None) == (request.param == "sdk")
    yield eng


@pytest.fixture
def label() -> Iterator[str]:
    """A label unique to the test; whatever carries it is removed afterwards."""
    value = f"dev.pienv.test-engine={uuid.uuid4().hex}"
    yield value
    api = docker.from_env().api
    for c in api.containers(all=True, filters={"label": value}):
        api.remove_container(c["Id"], force=True)
    for img in api.images(filters={"label": value}):
        for tag in img.get("RepoTags") or [img["Id"]]:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(tag)


def test_run_loop_calls(engine: Engine, base_image: str, label: str) -> None:
    key, _, value = label.partition("=")
    script = "echo out; echo err >&2; head -c 200000 /dev/zero | tr '\\0' x; touch /made; exit 5"
    cid = engine.create(
        base_image, entrypoint=["sh", "-c", script], labels={key: value}, workdir="/tmp"
    )
    out, err = bytearray(), bytearray()
    for o, e in engine.run_streaming(cid):
        out += o or b""
        err += e or b""
    assert engine.wait(cid) == 5
    assert bytes(out) == b"out\n" + b"x" * 200000  # frames split across reads reassemble
    assert bytes(err) == b"err\n"
    state = engine.inspect_container(cid)
    assert state is not None and (state.id, state.status, state.exit_code) == (cid, "exited", 5)
    assert state.labels[key] == value and state.image_id
    raw = docker.from_env().api.inspect_container(cid)
    assert raw["Config"]["WorkingDir"] == "/tmp"
    assert raw["HostConfig"]["Init"] is True and raw["HostConfig"]["Privileged"] is False
    assert state.name == raw["Name"].lstrip("/")
    assert engine.path_exists(cid, "/made")
    [row] = engine.containers([label])
    assert (row.id, row.state, row.name, row.labels[key]) == (cid, "exited", state.name, value)
    assert row.image_id == state.image_id

    image = engine.inspect_image(base_image)
    assert image is not None and image.depth == len(image.layers) >= 1 and image.size > 0
    assert image.labels["org.example.base"] == "busybox"
    new = engine.commit(cid, image, {key: value})
    made = docker.from_env().api.inspect_image(new)
    assert made["Config"]["Labels"] == {**image.labels, key: value}
    assert made["Config"]["Cmd"] == ["sh"] and not made["Config"]["Entrypoint"]
    engine.tag(new, "pienv-test/engine", new[:12])
    info = engine.inspect_image(new)
    assert info is not None and info.id == new and info.depth == image.depth + 1
    assert f"pienv-test/engine:{new[:12]}" in info.tags
    [listed] = engine.images([label])
    assert (listed.id, listed.labels[key]) == (new, value)
    assert f"pienv-test/engine:{new[:12]}" in listed.tags
    user = engine.create_stopped(new, labels={key: value})
    assert engine.remove_image(new) is False  # 409: a container still uses it
    engine.remove_container(user)
    engine.remove_container(cid, force=True)
    engine.remove_container(cid, force=True)  # already gone: no error
    assert engine.inspect_container(cid) is None
    engine.untag(f"pienv-test/engine:{new[:12]}")
    engine.untag(f"pienv-test/engine:{new[:12]}")  # already gone: no error
    assert engine.inspect_image(new) is None  # its last tag gone, the image went with it
    assert engine.remove_image(new) is True


def test_errors_are_one_line(engine: Engine) -> None:
    assert engine.inspect_image("pienv-test/no-such-image:1") is None
    with pytest.raises(EngineError, match=r"(?i)no such image"):
        engine.create("pienv-test/no-such-image:1", entrypoint=["true"])
    version = engine.version()
    assert version.api_version == docker.from_env().version()["ApiVersion"]
    assert engine.info().driver == docker.from_env().info()["Driver"]


@pytest.mark.parametrize("sdk", [False, True])
def test_engine_not_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory, sdk: bool
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(EngineError, match="Docker is not running") as exc:
        Engine(sdk=sdk).containers([])
    assert f"at unix://{tmp_path}/no.sock" in str(exc.value) and "\n" not in str(exc.value)


# Label values a careless `changes` line would mangle: quotes, `$`, backslashes, edge spaces.
AWKWARD = {
    "dev.pienv.test-quoted": '"quoted"',
    "dev.pienv.test-dollar": "$HOME ${PATH} \\$x",
    "dev.pienv.test-backslash": "C:\\dir\\ \\n",
    "dev.pienv.test-spaces": "  both ends  ",
    "dev.pienv.test-empty": "",
    "dev.pienv.test-json": '["sh", "-c", "echo \\"hi\\""]',
    "dev.pienv.test-equals": "a=b c=d",
}


def _config(image_id: str) -> dict[str, object]:
    conf = docker.from_env().api.inspect_image(image_id)["Config"]
    return {
        "Labels": conf.get("Labels") or {},
        "Env": conf.get("Env") or [],
        "Cmd": conf.get("Cmd") or [],
        "Entrypoint": conf.get("Entrypoint") or [],
        "User": conf.get("User") or "",
        "WorkingDir": conf.get("WorkingDir") or "",
    }


def test_commit_config_is_the_same_on_every_engine(
    engine: Engine, base_image: str, label: str
) -> None:
    """Podman's commit ignores the config body. Whatever the engine, a commit of a
    run container has its parent's config, exactly the labels pienv gives (run-only values
    overridden, awkward values verbatim, a multi-line message kept), no run wrapper as
    Entrypoint and no variable the engine adds to containers (Podman: TERM, container).
    User and WorkingDir empty in the parent take the run's values: that is Docker's own
    commit rule, and Podman now gives the same."""
    key, _, value = label.partition("=")
    base = engine.inspect_image(base_image)
    assert base is not None
    run_labels = {key: value, "dev.pienv.role": "run", "dev.pienv.message": "two\nlines"}
    cid = engine.create(
        base.id,
        entrypoint=["/bin/sh", "-c", "echo hi > /made", "wrapper"],
        user="0:0",
        workdir="/tmp",
        labels=run_labels,
    )
    for _ in engine.run_streaming(cid):
        pass
    labels = {key: value, "dev.pienv.role": "commit", "dev.pienv.message": "two\nlines"}
    labels |= AWKWARD
    new = engine.commit(cid, base, labels)
    engine.remove_container(cid, force=True)
    got = _config(new)
    assert got == {
        "Labels": {**base.labels, **labels},
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "Cmd": ["sh"],
        "Entrypoint": [],
        "User": "0:0",
        "WorkingDir": "/tmp",
    }
    info = engine.inspect_image(new)
    assert info is not None and len(info.content_layers) == len(base.content_layers) + 1

    # A fresh commit (root, flatten, reset --system): a never-started container of an image
    # with no config of its own (as `import` makes) gets the config of ``like`` exactly.
    src = engine.create_stopped(new)
    flat = engine.export_container(src)
    engine.remove_container(src, force=True)
    fresh_labels = {**labels, "dev.pienv.message": "flatten\nof two lines"}
    stopped = engine.create_stopped(flat, labels=fresh_labels)
    again = engine.commit(stopped, info, fresh_labels)
    engine.remove_container(stopped, force=True)
    engine.remove_image(flat)
    assert _config(again) == {**got, "Labels": {**got["Labels"], **fresh_labels}}  # type: ignore[dict-item]
    flat_info = engine.inspect_image(again)
    assert flat_info is not None and len(flat_info.content_layers) == 1
    engine.tag(again, "pienv-test/engine", again[:12])  # removed with the label's images
    engine.untag(f"pienv-test/engine:{again[:12]}")
    engine.remove_image(new)


def test_unchanged_commit_adds_no_content(engine: Engine, base_image: str, label: str) -> None:
    """Docker adds no layer for an unchanged container, Podman an empty one: content_layers
    is equal either way, so "changed" can be decided from the layers on both engines."""
    key, _, value = label.partition("=")
    base = engine.inspect_image(base_image)
    assert base is not None
    cid = engine.create_stopped(base.id, labels={key: value})
    new = engine.commit(cid, base, {key: value})
    engine.remove_container(cid, force=True)
    info = engine.inspect_image(new)
    assert info is not None and info.content_layers == base.content_layers
    engine.remove_image(new)


def test_line_break_that_cannot_travel_is_refused_on_podman(
    engine: Engine, base_image: str, label: str
) -> None:
    key, _, value = label.partition("=")
    base = engine.inspect_image(base_image)
    assert base is not None
    cid = engine.create_stopped(base.id, labels={key: value})
    try:
        if engine.dialect.name == "Podman":
            with pytest.raises(EngineError, match="line break"):
                engine.commit(cid, base, {key: value, "dev.pienv.message": "a\nb"})
        else:
            new = engine.commit(cid, base, {key: value, "dev.pienv.message": "a\nb"})
            assert _config(new)["Labels"]["dev.pienv.message"] == "a\nb"  # type: ignore[index]
            engine.remove_image(new)
    finally:
        engine.remove_container(cid, force=True)


def test_engine_names_itself(engine: Engine) -> None:
    version = engine.version()
    raw = docker.from_env().version()
    names = [c["Name"] for c in raw.get("Components", [])]
    assert version.product == ("Podman" if "Podman Engine" in names else "Docker Engine")
    assert (engine.dialect.name == "Podman") == (version.product == "Podman")
    assert version.version == raw["Version"] and version.api_version == raw["ApiVersion"]
    assert version.arch == raw["Arch"]
    info = engine.info()
    assert info.driver == docker.from_env().info()["Driver"] and info.host


def test_path_exists_sees_a_dangling_symlink(engine: Engine, base_image: str, label: str) -> None:
    """A symlink whose target is missing exists (as lstat says): the prepare step must not
    overwrite a base's `/etc/mtab -> ../proc/self/mounts` (dangling in a stopped container).
    Podman answers 404 for it, with the link's stat in a header."""
    import io
    import tarfile

    key, _, value = label.partition("=")
    cid = engine.create_stopped(base_image, labels={key: value})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            link = tarfile.TarInfo("dangling")
            link.type, link.linkname = tarfile.SYMTYPE, "/proc/self/mounts"
            tar.addfile(link)
        engine.write_archive(cid, "/", buf.getvalue())
        assert engine.path_exists(cid, "/dangling")
        assert not engine.path_exists(cid, "/missing")
    finally:
        engine.remove_container(cid, force=True)


def test_write_archive_lands_content_mode_and_owner(
    engine: Engine, base_image: str, label: str
) -> None:
    """A tar written into a container (over the socket: a raw upload, no docker-py) lands
    with its content and mode, and on Docker its owner; a container that is gone is a 404."""
    import io
    import tarfile

    from pienv.engine import HTTPError

    key, _, value = label.partition("=")
    cid = engine.create_stopped(base_image, labels={key: value})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("opt/given")
            info.size, info.mode, info.uid, info.gid = 5, 0o640, 1234, 4321
            tar.addfile(info, io.BytesIO(b"hello"))
        engine.write_archive(cid, "/", buf.getvalue())
        raw = engine.read_path(cid, "/opt/given")
        assert raw is not None
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            [got] = tar.getmembers()
            data = tar.extractfile(got)
            assert data is not None and data.read() == b"hello"
        assert got.mode & 0o7777 == 0o640
        # Podman 4.3's compat API gives the files the container user's ids (root here),
        # through either transport; Docker keeps the tar's.
        owner = (0, 0) if engine.dialect.name == "Podman" else (1234, 4321)
        assert (got.uid, got.gid) == owner
    finally:
        engine.remove_container(cid, force=True)
    with pytest.raises(HTTPError) as lost:
        engine.write_archive(cid, "/", buf.getvalue())
    assert lost.value.status == 404
