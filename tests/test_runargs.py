"""The run loop's fast argv path (runargs) against the typer CLI it stands in for."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from pienv import cli, entry, runargs

SAME = [
    ["run"],
    ["run", "--", "npm", "test"],
    ["run", "npm", "test", "--watch"],  # options after the command belong to the command
    ["run", "-b", "exp", "--", "true"],
    ["run", "-bexp", "true"],
    ["run", "--branch=exp", "-w", "/tmp", "-m", "a message", "--no-commit", "--", "ls", "-l"],
    ["run", "--branch", "a", "--branch", "b", "true"],  # the last one wins, as in click
    ["run", "-e", "ANTHROPIC_API_KEY", "--env=FOO", "-e", "BAR", "true"],
    ["run", "--wait", "2.5", "true"],
    ["run", "--agent", "claude"],
    ["run", "--agent=codex", "--", "codex", "--version"],
    ["run", "--wait=0", "--", "--help"],  # after --, even --help is the command's
    ["run", "-", "x"],
    ["shell"],
    ["shell", "-b", "exp", "--no-commit", "--workdir", "/tmp"],
]
TO_TYPER = [
    ["run", "--help"],
    ["run", "-h"],
    ["run", "--frobnicate"],
    ["run", "-b"],  # missing value
    ["run", "-b", "--", "true"],  # option-like value
    ["run", "--branch="],  # empty value
    ["run", "--wait", "soon"],  # not a number
    ["run", "--no-commit=yes"],
    ["shell", "extra"],
    ["shell", "-m", "message"],  # run-only option
    ["status"],
    [],
]


def typer_request(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    seen: list[Any] = []

    def capture(req: Any) -> int:
        seen.append(req)
        return 0

    monkeypatch.setattr(runargs, "run_command", capture)
    assert cli.invoke(args) == 0
    return seen[0]


@pytest.mark.parametrize("args", SAME, ids=" ".join)
def test_fast_path_builds_what_typer_builds(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = runargs.parse(args)
    assert fast is not None
    assert fast == typer_request(args, monkeypatch)


@pytest.mark.parametrize("args", TO_TYPER, ids=" ".join)
def test_anything_unusual_goes_to_typer(args: list[str]) -> None:
    assert runargs.parse(args) is None


@pytest.mark.parametrize("name", ["run", "shell"])
def test_option_table_matches_typer(name: str) -> None:
    command = typer.main.get_command(cli.app).commands[name]  # type: ignore[attr-defined]
    declared = {o for p in command.params if p.param_type_name == "option" for o in p.opts}
    declared -= {"-h", "--help"}
    assert declared == set(runargs.VALUED[name]) | set(runargs.FLAGS[name])


def test_bad_option_reaches_typer_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        entry.main(["run", "--frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "pienv: error: no such option: --frobnicate (see `pienv run --help`)\n"
