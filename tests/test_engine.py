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
    assert ("A", "/made") in engine.diff(cid)
    [row] = engine.containers([label])
    assert (row.id, row.state, row.name, row.labels[key]) == (cid, "exited", state.name, value)
    assert row.image_id == state.image_id

    image = engine.inspect_image(base_image)
    assert image is not None and image.depth == len(image.layers) >= 1 and image.size > 0
    assert image.labels["org.example.base"] == "busybox"
    new = engine.commit(cid, image, {key: value})
    made = docker.from_env().api.inspect_image(new)
    assert made["Config"]["Labels"] == {"org.example.base": "busybox", key: value}
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
    with pytest.raises(EngineError, match="No such image"):
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
