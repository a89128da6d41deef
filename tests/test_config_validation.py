"""Config errors name the key and the file, and unknown keys or sections are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pienv import config
from pienv.errors import UsageError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[run]\nflatten_at = "x"\n', "[run] flatten_at must be an integer, not 'x'"),
        ("[run]\nflatten_at = true\n", "[run] flatten_at must be an integer, not True"),
        ("[run]\nflatten_at = 500\n", "[run] flatten_at must be between 2 and 120"),
        ("[agent]\npassthrough = [1]\n", "[agent] passthrough must be a list of strings"),
        ("[agent]\ncommand = 3\n", "[agent] command must be a string or a list of strings"),
        ('[run]\nprotect_git = "no"\n', "[run] protect_git must be true or false"),
        ('run = "x"\n', "[run] must be a table"),
        ('[run]\nmemory = "lots"\n', "[run] memory size 'lots'"),
        ("[run]\ncpus = -1\n", "[run] --cpus -1"),
        ("[run]\npids = true\n", "[run] pids must be a number or a string, not True"),
        ('[run]\ngpus = "some"\n', "[run] --gpus 'some'"),
    ],
)
def test_type_errors_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as exc:
        config.load(path)
    assert str(exc.value).startswith(f"bad config {path}: {message}")


def test_unknown_sections_and_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agnet]\ncommand = ["claude"]\n')
    with pytest.raises(UsageError) as exc:
        config.load(path)
    assert str(exc.value).startswith(f"unknown config section [agnet] in {path} (known sections: ")
    assert "[agent]" in str(exc.value) and "[run]" in str(exc.value)
    path.write_text("[run]\nflaten_at = 50\n")
    with pytest.raises(UsageError) as exc:
        config.load(path)
    assert str(exc.value).startswith(f"unknown config key [run] flaten_at in {path} (known keys")
    assert "flatten_at" in str(exc.value)


def test_a_good_config_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[agent]\ncommand = "claude"\ninstall = "npm i -g x"\npassthrough = ["A"]\n'
        '[run]\nenv = ["B"]\nflatten_at = 50\nmounts = []\nnetwork = "none"\n'
        "protect_git = false\n"
    )
    cfg = config.load(path)
    assert (cfg.agent.command, cfg.passthrough, cfg.flatten_at) == (("claude",), ("A", "B"), 50)
    assert (cfg.network, cfg.protect_git) == ("none", False)


def test_run_limits_and_gpus_load_as_written(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[run]\ncpus = 1.5\nmemory = "2g"\npids = 0\ngpus = 1\n')
    cfg = config.load(path)
    assert cfg.limits == {"cpus": 1.5, "memory": "2g", "pids": 0} and cfg.gpus == "1"
