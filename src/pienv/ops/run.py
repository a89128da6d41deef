"""`pienv run` / `pienv shell`: the command family's entry; the run itself is the run
loop's (runloop.session: its steps; runloop.plan: what the container gets)."""

from pienv.runloop.finish import RunResult
from pienv.runloop.plan import RunRequest
from pienv.runloop.session import Report, commits_in_background, run

__all__ = ["Report", "RunRequest", "RunResult", "commits_in_background", "run"]
