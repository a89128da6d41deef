"""docs/commands.md is generated from the CLI (tools/commands_md.py): it must match."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "commands_md.py"


def test_docs_commands_md_is_what_the_cli_says() -> None:
    spec = importlib.util.spec_from_file_location("commands_md", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.render()
    assert "## pienv reset\n" in text and "`--branch, -b BRANCH`" in text
    assert mod.DOC.read_text() == text, "docs/commands.md is stale: python3 tools/commands_md.py"
