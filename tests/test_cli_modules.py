"""The command line is a package of command families, each loaded only when needed."""

from __future__ import annotations

import subprocess
import sys

import typer

from pienv import cli


def test_every_listed_command_loads_from_its_family_module() -> None:
    for name in cli.COMMANDS:
        command = cli.load(name)
        assert command.name == name


def test_root_group_lists_every_command_in_help_order() -> None:
    root = typer.main.get_command(cli.app)
    assert list(root.commands) == list(cli.COMMANDS)  # type: ignore[attr-defined]


def _loaded_after(code: str) -> list[str]:
    probe = (
        "import sys\n" + code + "\nprint(' '.join(sorted(m for m in sys.modules "
        "if m.startswith('pienv.cli') or m.startswith('pienv.ops'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_one_command_imports_only_its_own_family() -> None:
    loaded = _loaded_after(
        "import contextlib, io\nfrom pienv import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    cli.invoke(['status', '--help'])"
    )
    assert loaded == ["pienv.cli", "pienv.cli.common", "pienv.cli.status"]


def test_plain_run_line_never_imports_the_cli_package() -> None:
    loaded = _loaded_after("from pienv import runargs\nassert runargs.parse(['run', '--', 'true'])")
    assert not [m for m in loaded if m.startswith("pienv.cli")]
