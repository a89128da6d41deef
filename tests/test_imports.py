"""The module graph: every `import` in src/pienv, module-level and inside functions.

Data flows one way (docs/architecture.md): the command line (entry, runargs, cli/, ui) calls
ops/ (command families), which calls runloop/ (the run: its plan, session, finalizer, commits,
sandbox), which uses the core modules (store, engine, gitrepo, dag, model, config, locks,
errors, report, context). ops may import runloop; runloop never imports ops.
No import may go up a layer, and none may close a circle, even one hidden inside a function
(a circle there still couples the two modules: neither can be understood or tested alone).

docs/architecture.md shows the graph this test computes; after changing imports, rewrite it
with `python3 tests/test_imports.py --write`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "pienv"
DOC = SRC.parent / "docs" / "architecture.md"

TOP = {"__main__", "entry", "runargs", "cli", "ui"}
CORE = {
    "store",
    "engine",
    "gitrepo",
    "dag",
    "model",
    "config",
    "locks",
    "errors",
    "registry",
    "report",
    "secrets",
    "limits",
    # the network boundary (issue 23): policy, audit, the proxy and its engine side
    "egress",
    "egressaudit",
    "egressnet",
    "netproxy",
    "netproxy.image",
    "netproxy.proxy",
    "context",
    "tracking",
}
# The HTTP transport stands alone: it speaks HTTP on a socket without docker-py, so that the
# run loop's JSON calls import nothing of it.
ENGINE_HTTP = "engine.http"
# Only these libraries, and only in these modules (design: "only the engine package knows
# Docker"; its HTTP transport imports none of docker-py).
PRIVATE_LIBRARIES = {
    "docker": lambda name: name.startswith("engine.") and name != ENGINE_HTTP,
    "requests": lambda name: name.startswith("engine.") and name != ENGINE_HTTP,
    "dulwich": lambda name: name == "gitrepo",
}


def modules() -> dict[str, Path]:
    """Dotted names relative to the package ("cli", "ops.run") -> file."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) or "__init__"] = path
    return out


def layer(name: str) -> int:
    """3 = the command line, 2 = ops, 1 = runloop, 0 = core."""
    if name in TOP or name.startswith("cli."):
        return 3
    if name == "ops" or name.startswith("ops."):
        return 2
    if name == "runloop" or name.startswith("runloop."):
        return 1
    if name.split(".")[0] in CORE or name == "__init__":
        return 0
    raise AssertionError(f"pienv.{name} belongs to no layer: add it to tests/test_imports.py")


def imports_of(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(pienv modules, third-party top-level packages) that ``path`` imports anywhere."""
    ours: set[str] = set()
    libs: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            for a in node.names:
                # `from pienv.ops import guard` imports the module pienv.ops.guard;
                # `from pienv.errors import UsageError` the module pienv.errors.
                sub = f"{base}.{a.name}"
                names.append(sub if sub.removeprefix("pienv.") in known else base)
        for name in names:
            if name == "pienv" or name.startswith("pienv."):
                rel = name.removeprefix("pienv").removeprefix(".")
                if rel:
                    ours.add(rel)
            else:
                libs.add(name.split(".")[0])
    return ours, libs


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    out = {}
    for name, path in mods.items():
        ours, _ = imports_of(path, known)
        out[name] = {m for m in ours if m in known and m != name}
    return out


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def render(g: dict[str, set[str]]) -> str:
    """The graph as docs/architecture.md shows it: one line per module, layers top down."""
    width = max(len(n) for n in g) + 1
    lines = []
    for lay in (3, 2, 1, 0):
        for name in sorted(n for n in g if layer(n) == lay and n != "__init__"):
            deps = ", ".join(sorted(g[name], key=lambda m: (-layer(m), m))) or "-"
            lines.append(f"{name:<{width}}-> {deps}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


BEGIN, END = "<!-- import-graph:begin -->\n```\n", "```\n<!-- import-graph:end -->"


def test_no_import_goes_up_a_layer() -> None:
    g = graph()
    upward = [f"{a} -> {b}" for a, deps in g.items() for b in deps if layer(b) > layer(a)]
    assert not upward, f"imports against the layers (cli -> ops -> runloop -> core): {upward}"


def test_ops_and_runloop_never_print() -> None:
    g = graph()
    assert not [n for n in g if n.startswith(("ops", "runloop")) and "ui" in g[n]], "import ui"


def test_the_run_plan_is_pure() -> None:
    """runloop/plan.py and spec.py decide the container without an engine: they import no
    engine, store, lock or session module (tests/test_plan.py runs them with none)."""
    g = graph()
    for name in ("runloop.plan", "runloop.spec"):
        impure = g[name] & {"engine", "enginehttp", "store", "locks", "runloop.session"}
        assert not impure, f"{name} imports {impure}"


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_docker_and_dulwich_stay_in_their_modules() -> None:
    mods = modules()
    for name, path in mods.items():
        _, libs = imports_of(path, set(mods))
        for lib, allowed in PRIVATE_LIBRARIES.items():
            assert lib not in libs or allowed(name), f"pienv.{name} imports {lib}"


def test_engine_http_transport_stands_alone() -> None:
    """engine.http imports no other engine module (nor docker-py: see above)."""
    ours, _ = imports_of(modules()[ENGINE_HTTP], set(modules()))
    assert ours <= {"errors"}, f"pienv.engine.http imports {sorted(ours)}"


def test_only_dialects_ask_which_engine() -> None:
    """What differs between engines is a dialect's (engine/dialects/): no module outside
    them asks which engine it talks to."""
    asking = [
        str(path.relative_to(SRC))
        for name, path in modules().items()
        if not name.startswith("engine.dialects") and "is_podman" in path.read_text()
    ]
    assert not asking, f"modules outside engine/dialects ask is_podman: {asking}"


def test_the_checker_sees_function_level_imports_and_cycles() -> None:
    g = graph()
    # The cli modules import ops modules only inside their commands.
    assert "ops.history" in g["cli.history"] and "ops.maint" in g["cli.maint"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_architecture_doc_shows_this_graph() -> None:
    text = DOC.read_text()
    m = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END), text, re.S)
    assert m, f"{DOC} has no import-graph block"
    assert m.group(1) == render(graph()), (
        "docs/architecture.md's module graph is stale: python3 tests/test_imports.py --write"
    )


def write_doc() -> None:
    text = DOC.read_text()
    block = BEGIN + render(graph()) + END
    new, n = re.subn(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    assert n == 1, f"{DOC} has no import-graph block"
    DOC.write_text(new)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_doc()
    else:
        sys.stdout.write(render(graph()))
