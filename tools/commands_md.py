"""Write docs/commands.md from the CLI itself, so the reference cannot drift from the code.

python3 tools/commands_md.py          # rewrite docs/commands.md
python3 tools/commands_md.py --check  # exit 1 if it differs (tests/test_commands_doc.py)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"

HEADER = """\
# Command reference

<!-- Generated from the CLI by `python3 tools/commands_md.py`; tests/test_commands_doc.py
fails when this file differs from what the CLI says. Edit the help texts in
src/pienv/cli/ (a module per command family), then regenerate. -->

Every command, its arguments and options, as `pienv COMMAND --help` prints them.

**The current branch.** Every command that defaults to "the current branch" (and what `HEAD`
means in a revision) follows one rule: `--branch`/`-b` where the command has it, else
`PIENV_PROFILE`, else the env branch bound to the worktree you are in (`pienv worktree add`),
else the store's HEAD. When the rule is not plain HEAD, the command says on stderr which rule
chose the branch; `pienv status` always says it.

**Revisions.** A branch or tag, `HEAD`, a full id or a unique prefix (4+ hex), `REV~N`,
`REV^`, `REV^N`, `BRANCH@{N}` (the reflog).

**Exit codes.** `run`/`shell`: the command's own. Otherwise 0 ok; 1 an error, printed as one
line `pienv: error: ...` that says what to do next; 2 a usage error (unknown option or command,
a missing or extra argument, a bad value), also one line, ending with the `--help` to read
(click's and argparse's code: git's 129 is its own); 3 an internal error (one line on screen,
the traceback in `$PIENV_HOME/pienv.log`); 130 Ctrl-C.

**Output.** Tables fit the terminal by cutting the widest column first; ids, names, ages and
sizes are never cut or wrapped, a path loses its start (`…/agent-one`), and piped output is
never cut. `NO_COLOR` turns every escape off.
`--json` output is described in docs/json.md.
"""


def _commands() -> list[tuple[str, Any, Any]]:
    import typer

    from pienv.cli import app

    root = typer.main.get_command(app)
    out: list[tuple[str, Any, Any]] = []

    def walk(name: str, cmd: Any, parent: Any) -> None:
        ctx = typer.Context(cmd, info_name=name, parent=parent)
        subs = getattr(cmd, "commands", None)
        if subs:
            out.append((ctx.command_path, cmd, ctx))
            for sub_name in subs:  # registration order, as `--help` lists them
                walk(sub_name, subs[sub_name], ctx)
        else:
            out.append((ctx.command_path, cmd, ctx))

    walk("pienv", root, None)
    return out


def _spelling(param: Any, ctx: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{param.make_metavar(ctx).strip('{}')}`"
    names = ", ".join([*param.opts, *param.secondary_opts])
    if param.is_flag:
        return f"`{names}`"
    return f"`{names} {param.make_metavar(ctx)}`"


def render() -> str:
    parts = [HEADER]
    for path, cmd, ctx in _commands():
        parts.append(f"\n## {path}\n")
        if getattr(cmd, "commands", None):
            parts.append(f"\n{inspect.cleandoc(cmd.help or '')}\n")
            names = ", ".join(f"`{path} {n}`" for n in cmd.commands)
            parts.append(f"\nCommands: {names}.\n")
            rows = [p for p in cmd.params if not getattr(p, "hidden", False)]
            parts.extend(_table(rows, ctx))
            continue
        usage = " ".join(cmd.collect_usage_pieces(ctx)).replace("{", "").replace("}", "")
        parts.append(f"\n```\n{path} {usage}\n```\n")
        parts.append(f"\n{inspect.cleandoc(cmd.help or '')}\n")
        rows = [p for p in cmd.params if not getattr(p, "hidden", False)]
        parts.extend(_table(rows, ctx))
    return "".join(parts)


def _table(params: list[Any], ctx: Any) -> list[str]:
    if not params:
        return []
    out = ["\n| argument / option | meaning |\n|---|---|\n"]
    for p in params:
        text = (p.help or "").replace("|", "\\|")
        out.append(f"| {_spelling(p, ctx)} | {text} |\n")
    return out


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python3 tools/commands_md.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
