"""The agent's install: its own container and commit ("install <agent>"), made once per
branch before the first run that needs it (plan.install_spec says what that container is)."""

from __future__ import annotations

from dataclasses import replace

from pienv.config import Agent
from pienv.context import Context
from pienv.errors import PienvError
from pienv.model import Commit
from pienv.runloop.agent import INSTALLED_LABEL
from pienv.runloop.commits import finish
from pienv.runloop.helpers import INSTALL, helper_labels
from pienv.runloop.launch import Sink, create
from pienv.runloop.spec import ContainerSpec
from pienv.store import crashpoint

# What an install's output says went wrong, and what to do (first match wins): a missing
# tool or an unreachable registry is not fixed by another version.
_CAUSES = (
    (
        r"No module named pip|pip: not found|pip3?: command not found",
        "pip is missing in this environment: install it (`pienv shell`, then e.g. "
        "`sudo apt-get install python3-pip`) or use a base image with pip (PIENV_BASE_IMAGE)",
    ),
    (
        r"python3?: not found|python3?: command not found|No such file or directory: .?python",
        "python3 (and pip) are missing in this environment: install them (`pienv shell`) or "
        "use a base image with Python (PIENV_BASE_IMAGE)",
    ),
    (
        r"npm: not found|npm: command not found",
        "npm is missing in this environment: install Node.js and npm (`pienv shell`) or use a "
        "base image with them (PIENV_BASE_IMAGE)",
    ),
    (
        r"EAI_AGAIN|ENOTFOUND|ECONNREFUSED|ETIMEDOUT|ENETUNREACH|getaddrinfo|Temporary failure "
        r"in name resolution|Network is unreachable|Failed to establish a new connection|"
        r"Could not resolve host|connection timed out",
        "the package registry could not be reached (network): check the host's network and "
        "proxy variables, and [run] network in the config",
    ),
)


def failure_cause(output: str) -> str | None:
    """The cause an install's ``output`` names and what to do; None when it names none
    (then the version or the install command is the suspect)."""
    import re

    for pattern, cause in _CAUSES:
        if re.search(pattern, output, re.IGNORECASE):
            return cause
    return None


def install(
    ctx: Context,
    spec: ContainerSpec,
    branch: str | None,
    agent: Agent,
    err: Sink,
    egress: tuple[str, str] = ("", ""),
) -> Commit:
    """Run the agent's install (``spec``, see plan.install_spec) in its own container on
    ``spec.image``; commit it as "install <agent> <version>" and move the branch there. A
    failed install commits nothing. ``egress``: (policy hash, audit id) it runs under."""
    engine = ctx.engine()
    parent = spec.image
    parent_image = engine.inspect_image(parent)
    # Who installs, on the container (its commit overwrites these keys): a kill -9 of pienv
    # leaves it Created or exited, and `pienv orphans` lists it by them.
    mine = helper_labels(ctx.store_id, INSTALL)
    cid = create(engine, replace(spec, extra_labels={**spec.extra_labels, **mine}))
    try:
        crashpoint("installing")  # tests: pienv killed with the install's container made
        err(f"pienv: installing {agent.label}: {agent.install}\n".encode())
        tail = b""  # the end of the install's output: what a failure is read from
        for stdout, stderr in engine.run_streaming(cid, None):
            for data in (stdout, stderr):
                if data:
                    err(data)
                    tail = (tail + data)[-16384:]
        code = int(engine.wait(cid))
        if code != 0:
            cause = failure_cause(tail.decode("utf-8", "replace"))
            key = "[agent] version" if agent.preset and agent.version else "[agent] install"
            raise PienvError(
                f"installing {agent.label} failed (exit {code}): `{agent.install}`; "
                + "nothing was committed: "
                + (cause or f"change {key} in {ctx.store.config_path}")
            )
        # No path list here: `docker diff` misses same-size rewrites that kept their mtime and
        # walks the whole image; the first `pienv show` lists what the commit's layer holds.
        draft = Commit.draft(
            branch,
            f"install {agent.label}",
            "install",
            parents=(parent,),
            command=("sh", "-c", agent.install),
            exit_code=0,
            changes=None,
            egress=egress[0],
            egress_audit=egress[1],
        )
        draft = replace(draft, container=cid)
        labels = draft.labels(ctx.store_id)
        labels[INSTALLED_LABEL] = agent.install
        image_id = engine.commit(cid, parent_image, labels)
        crashpoint("installed")  # tests: killed with the image made, not yet a commit
        commit = finish(ctx, engine, image_id, draft, None, parent_image)
        with ctx.store.transaction(f"install: {agent.label}") as txn:
            txn.move_head(branch, parent, commit.id)
        return commit
    finally:
        engine.remove_container(cid, force=True)
