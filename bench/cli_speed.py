#!/usr/bin/env python3
"""Everyday commands over a 1,000-commit store: `status`, `log`, `branch`, `--help`, and one
shell-completion TAB (`pienv log <TAB>`, `pienv lo<TAB>`), as medians of N runs beside
`python3 -c pass` (the interpreter's own start-up on this machine).

Targets (issue 13): status, log, branch <= 0.2 s; one TAB <= 0.15 s. `status` also asks the
engine (version, orphans), so it needs Docker. Usage: python bench/cli_speed.py [N]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import build_store  # noqa: E402  (bench/ is not a package)

TARGETS = {"status": 0.2, "log": 0.2, "branch": 0.2, "TAB": 0.15}


def median(cmd: list[str], env: dict[str, str], cwd: Path, n: int) -> tuple[float, float]:
    """Medians of wall time and of CPU time (user + system of the child). On a loaded machine
    the wall time mostly measures the queue for a core; the CPU time is what pienv costs."""
    walls, cpus = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    src = str(Path(__file__).resolve().parent.parent / "src")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "store"
        build_store(home)
        env = {**os.environ, "PIENV_HOME": str(home), "NO_COLOR": "1", "PYTHONPATH": src}
        pienv = [sys.executable, "-m", "pienv"]
        rows = [("python3 -c pass", [sys.executable, "-c", "pass"], {})]
        rows += [
            (f"pienv {' '.join(a)}", [*pienv, *a], {})
            for a in (["--help"], ["status"], ["log"], ["branch"], ["log", "--graph", "--all"])
        ]
        for words in ("pienv log ", "pienv lo", "pienv reset -b "):
            tab = {"_PIENV_COMPLETE": "complete_bash", "COMP_WORDS": words}
            tab["COMP_CWORD"] = str(len(words.split(" ")) - 1)
            rows.append((f"TAB: {words!r}", pienv, tab))
        print(f"1,000-commit store; medians of {n} runs; load average {os.getloadavg()[0]:.1f}")
        print(f"{'':<34} {'wall':>7}  {'cpu':>7}")
        for name, cmd, extra in rows:
            wall, cpu = median(cmd, {**env, **extra}, Path(tmp), n)
            key = "TAB" if name.startswith("TAB") else name.removeprefix("pienv ")
            target = TARGETS.get(key)
            verdict = "" if target is None else ("ok" if wall <= target else f"OVER {target} s")
            print(f"{name:<34} {wall:.3f} s  {cpu:.3f} s  {verdict}")


if __name__ == "__main__":
    main()
