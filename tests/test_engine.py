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
    assert state is not None and state["Config"]["WorkingDir"] == "/tmp"
    assert state["HostConfig"]["Init"] is True and state["HostConfig"]["Privileged"] is False
    assert ("A", "/made") in engine.diff(cid)
    assert [c["Id"] for c in engine.containers([label])] == [cid]

    image = engine.inspect_image(base_image)
    assert image is not None
    conf = dict(image["Config"], Labels={key: value}, Entrypoint=[])
    new = engine.commit(cid, conf)
    assert docker.from_env().api.inspect_image(new)["Config"]["Labels"][key] == value
    engine.tag(new, "pienv-test/engine", new[:12])
    assert f"pienv-test/engine:{new[:12]}" in (engine.inspect_image(new) or {})["RepoTags"]
    assert [i["Id"] for i in engine.images([label])] == [f"sha256:{new}"]
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
    assert engine.version()["ApiVersion"]


@pytest.mark.parametrize("sdk", [False, True])
def test_engine_not_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory, sdk: bool
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    with pytest.raises(EngineError, match="Docker is not running") as exc:
        Engine(sdk=sdk).containers([])
    assert f"at unix://{tmp_path}/no.sock" in str(exc.value) and "\n" not in str(exc.value)
